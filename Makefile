# Set-up is part of each target: on a fresh machine `make demo` or `make test` is all it takes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test test-all docs docs-serve docs-figures wheel-smoke bench bench-segment promtool chromium demo-model segmentation-model ldc-model segmentation-logo adcc-model adcc-calibrate ldc-calibrate

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(PIP) install -e ".[train,test,dashboard,results,docs,bioimageio]"
	touch $@

# promtool (Debian's prometheus package) lints the daemon's /metrics in the tests.
promtool:
	@command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

# Debian's chromium: the dashboard's browser tests drive it through Playwright (which cannot download
# browsers here); with WELLWATCH_REQUIRE_BROWSER=1 a missing browser fails those tests instead of skipping them.
chromium:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: $(VENV)/.runtime
	$(VENV)/bin/wellwatch demo

test: $(VENV)/.dev promtool chromium docs
	WELLWATCH_REQUIRE_BROWSER=1 $(PY) -m pytest

# The documentation site (MkDocs Material) into site/; --strict: a broken link or anchor fails the build.
docs: $(VENV)/.dev
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

docs-serve: $(VENV)/.dev
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

# The documentation's figures, made from simulated plates so they never go stale: the dashboard mid-plate,
# the package import graph (from the sources), and an evaluation report of the demo model on a simulated stained plate (the commands docs/models/evaluation.md shows).
FIGURE_WORK = build/docs-figures
docs-figures: $(VENV)/.dev chromium
	$(PY) docs/dashboard_screenshot.py --out docs/dashboard.png
	$(PY) docs/import_graph.py --out docs/figures/import-graph.png
	rm -rf $(FIGURE_WORK) && mkdir -p $(FIGURE_WORK) docs/figures
	$(VENV)/bin/wellwatch simulate $(FIGURE_WORK)/sim --wells 12 --fields 2 --timepoints 3 --interval-s 0 \
		--channels BF,PI --treatment dose_series --seed 11 >/dev/null
	$(VENV)/bin/wellwatch dataset live-dead $(FIGURE_WORK)/sim/data --naming scanr --label-free BF --fluorescence PI \
		--tile 64 --stride 64 --out $(FIGURE_WORK)/ds >/dev/null
	$(VENV)/bin/wellwatch evaluate wellwatch/models/demo-live-dead.onnx $(FIGURE_WORK)/ds --out $(FIGURE_WORK)/report >/dev/null
	cp $(FIGURE_WORK)/report/per_well.png docs/figures/report-per-well.png
	cp $(FIGURE_WORK)/report/fluorescence.png docs/figures/report-fluorescence.png

# A built wheel in a fresh virtualenv outside the checkout: bundled models found, a short demo.
wheel-smoke:
	PYTHON=$(PYTHON) .ci/wheel_smoke.sh

test-all: $(VENV)/.dev promtool chromium docs
	WELLWATCH_REQUIRE_BROWSER=1 $(PY) -m pytest -m "slow or not slow"

bench: $(VENV)/.runtime
	$(VENV)/bin/wellwatch bench

# Segmentation quality and speed per method on Usiigaci sets 25-30 (../shared/data; the bundled
# model trained on 25-29: `--sets 24,30` are the frames it never trained on).
bench-segment: $(VENV)/.runtime
	$(VENV)/bin/wellwatch bench segment

# Re-make the bundled demo model with this project's own training and export code.
demo-model: $(VENV)/.dev
	$(PY) -m wellwatch.training.demo_model --out wellwatch/models/demo-live-dead.onnx

# Re-make the bundled phase-contrast segmentation model from the shared Usiigaci sets: train on 27
# sets of all three wells, choose weights and the watershed on sets 24 (well A) and 16 (well B),
# score set 30 (well B) once (about 35 minutes on a 2-core CPU); then stamp into its contract the
# training pixel size (0.8708 um/px, the frames' NIS dCalibration), each set's acquisition group and
# the recipe's leave-group-out scores (segmentation-logo, if run). The "microscope" augmentation
# scored lower on set 30 at 2000 steps (docs/results: segmentation, leave one well out).
SEG_TRAIN_SETS = set1-15,set17-23,set25-29
SEG_DATA ?= ../shared/data/usiigaci-phase
segmentation-model: $(VENV)/.dev
	$(VENV)/bin/wellwatch dataset masks $(SEG_DATA) --out runs/ds-usiigaci
	$(VENV)/bin/wellwatch train runs/ds-usiigaci --task segmentation --train-images $(SEG_TRAIN_SETS) \
		--val-images set24,set16 --test-images set30 --steps 2400 --eval-every 400 \
		--augment basic --name phase-segmentation --threads 1 --out runs/seg-unet16
	$(PY) -m wellwatch.training.seg_restamp runs/seg-unet16/best.pt --out runs/seg-unet16/stamped.pt \
		--pixel-size 0.8708 --groups-from $(SEG_DATA) \
		$$(test -f runs/logo-basic/leave_group_out.json && echo --leave-group-out runs/logo-basic/leave_group_out.json)
	$(VENV)/bin/wellwatch export runs/seg-unet16/stamped.pt --out wellwatch/models/phase-segmentation.onnx

# Leave-group-out scores of the segmentation recipe: one model per held-out well (A, B, C; see
# training/seg_groups.py), 8 wide and 400 steps each (the bundled model is 16 wide, 1200 steps).
# SEG_AUGMENT=scale|microscope compares other recipes. About 10-25 minutes per well on 2 cores.
SEG_AUGMENT ?= basic
segmentation-logo: $(VENV)/.dev
	$(PY) benchmarks/seg_leave_group_out.py --out runs/logo-$(SEG_AUGMENT) --val set21,set24 -- \
		--steps 400 --eval-every 100 --width 8 --augment $(SEG_AUGMENT) --threads 1

# Re-make the bundled bright-field live/dead crop model from the shared LDC images (../shared/data):
# 5-fold cross-validation by image group (the figures its contract carries), then the final model
# on every image. The defaults of `dataset voc` and `train` are the model's recipe (docs/models/training.md).
LDC_DATA ?= ../shared/data/ldc-live-dead/images
LDC_FITS ?= Bright-field cells in a counting chamber (LDC images, about 220 px square, 8-bit; living cells bright-centred, dead cells dark)
ldc-model: $(VENV)/.dev
	$(VENV)/bin/wellwatch dataset voc $(LDC_DATA) --describe "$(LDC_FITS)" --out runs/ds-ldc
	$(VENV)/bin/wellwatch train runs/ds-ldc --folds 5 --split 100/0/0 --name ldc-live-dead --out runs/ldc-live-dead
	$(VENV)/bin/wellwatch export runs/ldc-live-dead/best.pt --out wellwatch/models/ldc-live-dead.onnx

# A live/dead tile model for the real adcc-paired acquisition (../shared/data; GPL-3.0 data, so the model is
# made here, not bundled): labels from its dead stain with `dataset live-dead`'s defaults at 64 px, nine folds
# leaving one experiment (well) out -- their scores go into the contract -- then the model on all nine.
ADCC_DATA ?= ../shared/data/adcc-paired/data
adcc-model: $(VENV)/.dev
	$(VENV)/bin/wellwatch dataset live-dead $(ADCC_DATA) --label-free BF --fluorescence PI --tile 64 --stride 32 --out runs/ds-adcc
	$(VENV)/bin/wellwatch train runs/ds-adcc --arch tiny --epochs 8 --patience 0 --folds 9 --group-by well --split 100/0/0 \
		--name adcc-live-dead --out runs/adcc-live-dead
	$(VENV)/bin/wellwatch export runs/adcc-live-dead/best.pt --out runs/adcc-live-dead.onnx

# `wellwatch calibrate` on the same plate: leave-one-experiment-out figures, per-well intervals, the verdict,
# the served model (runs/cal-adcc/model.onnx), report.html and the config snippet; on the LDC boxes
# (hand-labelled, no stain: each image is an experiment, 10 folds of images).
adcc-calibrate: $(VENV)/.dev
	nice -n 10 $(VENV)/bin/wellwatch calibrate $(ADCC_DATA) --label-free BF --dead-stain PI --out runs/cal-adcc
ldc-calibrate: $(VENV)/.dev
	$(VENV)/bin/wellwatch dataset voc $(LDC_DATA) --describe "$(LDC_FITS)" --out runs/ds-ldc
	nice -n 10 $(VENV)/bin/wellwatch calibrate --dataset runs/ds-ldc --group-by source --out runs/cal-ldc
