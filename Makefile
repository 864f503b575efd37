# Set-up is part of each target: on a fresh machine `make demo` or `make test` is all it takes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test test-all bench promtool demo-model

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(PIP) install -e ".[train,test]"
	touch $@

# promtool (Debian's prometheus package) lints the daemon's /metrics in the tests.
promtool:
	@command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

demo: $(VENV)/.runtime
	$(VENV)/bin/wellwatch demo

test: $(VENV)/.dev promtool
	$(PY) -m pytest

test-all: $(VENV)/.dev promtool
	$(PY) -m pytest -m "slow or not slow"

bench: $(VENV)/.runtime
	$(VENV)/bin/wellwatch bench

# Re-make the bundled demo model with this project's own training and export code.
demo-model: $(VENV)/.dev
	$(PY) -m wellwatch.training.demo_model --out wellwatch/models/demo-live-dead.onnx
