"""Per-cell live/dead from a crop model in the daemon ([models.cell_live_dead]).

The model is made in the test with the project's own chain (simulate a calibration plate, `dataset
cells --dead-stain`, `train --arch tiny`, `export`), then served by the daemon on a plate of another
seed: every frame's `cell_counts` must be the model's calls on that frame's segmented cells, the
well aggregates their sums, and the per-cell live fraction must follow the simulator's truth.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pytest

from wellwatch.daemon.backend import OnnxBackend
from wellwatch.daemon.cell_calls import live_dead_cells
from wellwatch.daemon.config import load_config
from wellwatch.daemon.errors import ConfigError, StartupError
from wellwatch.daemon.reader import read_frame
from wellwatch.daemon.segment import classical_cells
from wellwatch.daemon.segment_classical import ClassicalParams
from wellwatch.simulator import SimulationSpec, write_plate
from wellwatch.training import cli as training_cli

from .test_daemon_segmentation import SIMULATED_BF, CropStdClassifier, last_well_messages, plate

CLASSICAL = [x for k, v in SIMULATED_BF.items() if k != "min_area" for x in ("--classical", f"{k}={v}")]


def _run(argv):
    parser = argparse.ArgumentParser(prog="wellwatch")
    sub = parser.add_subparsers()
    training_cli.register(sub)
    from wellwatch.export.cli import register as register_export

    register_export(sub)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def crop_model(tmp_path_factory):
    """A small per-cell live/dead model trained on a simulated calibration plate (seed 3)."""
    root = tmp_path_factory.mktemp("cell-ld-model")
    # 12 wells of one field: enough well groups for grouped validation and test splits
    spec = SimulationSpec(fields=1, timepoints=1, size=256, cells_per_field=25, channels=("BF", "PI"),
                          treatment="dose_series", seed=3)
    write_plate(spec, root / "cal")
    assert _run(["dataset", "cells", str(root / "cal"), "--out", str(root / "ds"), "--label-free", "BF",
                 "--dead-stain", "PI", "--segment-on", "BF", "--crop", "48", "--mask-radius", "16",
                 "--min-area", "60", "--max-area", "2000"] + CLASSICAL) == 0
    # few cells and epochs: a higher learning rate than tiny's default, so the probabilities leave 0.5
    assert _run(["train", str(root / "ds"), "--out", str(root / "run"), "--arch", "tiny", "--epochs", "6",
                 "--batch-size", "16", "--lr", "0.005", "--group-by", "well", "--seed", "0", "--quiet"]) == 0
    assert _run(["export", str(root / "run" / "best.pt"), "--out", str(root / "cell-ld.onnx"),
                 "--no-real-images"]) == 0
    return root / "cell-ld.onnx"


def test_daemon_publishes_the_crop_models_per_cell_calls(crop_model, run_daemon, recorder_for, tmp_path):
    spec = plate(seed=15, cells_per_field=20)
    config, _ = run_daemon(spec, **{"segmentation.method": "classical", "segmentation.workers": 2,
                                    "models.cell_live_dead.path": str(crop_model),
                                    **{f"segmentation.classical.{k}": v for k, v in SIMULATED_BF.items()}})
    rec = recorder_for(config)
    write_plate(spec, tmp_path / "acquisition")
    frames = rec.wait_frames(len(spec.wells) * spec.fields * spec.timepoints, timeout=120)
    time.sleep(0.3)

    model = OnnxBackend(crop_model, "cpu", warmup=False)
    c = model.contract
    assert c.task == "live_dead" and c.crop is not None
    data = tmp_path / "acquisition" / "data"
    for m in frames:
        cells, crops, keep = classical_cells(read_frame(str(data / m["path"])), ClassicalParams(**SIMULATED_BF), c.crop)
        p_dead = model.infer(crops)[:, c.positive_index] if len(crops) else np.zeros(0)
        live, dead = live_dead_cells(p_dead, c.decision_threshold)
        assert m["cells"] == len(cells)
        assert m["cell_counts"] == {"live": live, "dead": dead}, m["path"]
        assert m["models"][c.name] == model.sha256
        assert m["unit"] == "tile" and m["counts"]["live"] + m["counts"]["dead"] > 0  # tiles still counted
    truth = {(w["well"], w["timepoint"]): w
             for w in json.loads((tmp_path / "acquisition" / "ground_truth.json").read_text())["wells"]}
    errors = []
    for key, msg in last_well_messages(rec).items():
        mine = [m for m in frames if (m["well"], m["timepoint"]) == key]
        assert msg["cell_counts"] == {k: sum(m["cell_counts"][k] for m in mine) for k in ("live", "dead")}
        errors.append(msg["cell_live_fraction"] - truth[key]["live_fraction"])
    # a tiny network after a few epochs, on 6 well-timepoints of ~40 cells: near the truth, not exact
    assert np.abs(errors).mean() < 0.08, errors
    assert sum(sum(m["cell_counts"].values()) for m in frames) > 100


def test_slots_refuse_the_wrong_kind_of_live_dead_model(crop_model, tmp_path):
    from wellwatch.daemon.service import load_backend, load_cell_live_dead_backend
    from wellwatch.daemon.metrics import DaemonMetrics
    from prometheus_client import CollectorRegistry

    metrics = DaemonMetrics(CollectorRegistry())
    seg = {"segmentation.method": "classical", "inference.device": "cpu", "inference.warmup": False}
    with pytest.raises(StartupError, match=r"models\.live_dead\.path .*per-cell .*\[models\.cell_live_dead\]"):
        load_backend(load_config(None, {"models.live_dead.path": str(crop_model), **seg}), metrics)
    from wellwatch.daemon.service import bundled_demo_model

    with pytest.raises(StartupError, match=r"models\.cell_live_dead\.path .*without a crop section"):
        load_cell_live_dead_backend(load_config(None, {"models.cell_live_dead.path": str(bundled_demo_model()),
                                                       **seg}), metrics)
    with pytest.raises(ConfigError, match=r"models\.cell_live_dead\.path.*segmentation\.method"):
        load_config(None, {"models.cell_live_dead.path": str(crop_model)})


def test_a_cell_type_model_must_share_the_crop_geometry(crop_model, run_daemon):
    spec = plate(seed=16)
    with pytest.raises(StartupError, match=r"crop section"):
        run_daemon(spec, cell_type_backend=CropStdClassifier(size=32), **{
            "segmentation.method": "classical", "models.cell_live_dead.path": str(crop_model),
            **{f"segmentation.classical.{k}": v for k, v in SIMULATED_BF.items()}})


class CropMeanLiveDead(CropStdClassifier):
    """A stand-in per-cell live/dead model on the same crops as CropStdClassifier: P(dead) from the
    crop's brightness (the simulator's dead cells are smoother and rounder; any fixed function will do)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        from dataclasses import replace

        self.path, self.sha256 = "crop-mean", "2" * 64
        self.contract = replace(self.contract, name="crop-mean", task="live_dead", classes=("live", "dead"),
                                positive_class="dead")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        p = 1 / (1 + np.exp(-(np.abs(batch - 1).mean(axis=(1, 2, 3)) - 0.6) * 8))
        return np.stack([1 - p, p], axis=1).astype(np.float32)


def test_cell_types_and_per_cell_live_dead_share_pooled_crop_batches(run_daemon, recorder_for, tmp_path):
    from wellwatch.daemon.cell_calls import type_counts

    spec = plate(seed=17, cell_types=("lmpp", "prob"), type_mix="series")
    types, live_dead = CropStdClassifier(), CropMeanLiveDead()
    config, _ = run_daemon(spec, cell_type_backend=types, cell_live_dead_backend=live_dead, **{
        "segmentation.method": "classical", "segmentation.workers": 2,
        "batching.max_delay_ms": 2000.0,  # crops wait for other frames' crops: pooling is certain
        **{f"segmentation.classical.{k}": v for k, v in SIMULATED_BF.items()}})
    rec = recorder_for(config)
    write_plate(spec, tmp_path / "acquisition")
    frames = rec.wait_frames(len(spec.wells) * spec.fields * spec.timepoints, timeout=120)
    time.sleep(0.3)
    type_batches, live_dead_batches = list(types.batches), list(live_dead.batches)

    data = tmp_path / "acquisition" / "data"
    c, k = types.contract, live_dead.contract
    for m in frames:
        cells, crops, keep = classical_cells(read_frame(str(data / m["path"])), ClassicalParams(**SIMULATED_BF), c.crop)
        assert m["cell_types"] == type_counts(types.infer(crops), c.classes, c.positive_index, c.decision_threshold)
        live, dead = live_dead_cells(live_dead.infer(crops)[:, 1], k.decision_threshold)
        assert m["cell_counts"] == {"live": live, "dead": dead}
        assert m["models"]["crop-std"] == types.sha256 and m["models"]["crop-mean"] == live_dead.sha256
    called = [m["cell_counts"]["live"] + m["cell_counts"]["dead"] for m in frames]
    assert sum(called) > 50
    assert 0 < sum(m["cell_counts"]["dead"] for m in frames) < sum(called)  # the stand-in calls both classes
    # the same crops went to both models (batch boundaries may differ: each lane flushes on its own),
    # in batches holding several frames' cells
    assert sum(type_batches) == sum(live_dead_batches) == sum(called)
    assert max(live_dead_batches) > max(called) and max(type_batches) > max(called)
