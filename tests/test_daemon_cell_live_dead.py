"""Per-cell live/dead from a crop model in the daemon ([models.cell_live_dead]).

Models are made in the test from a simulated calibration plate labelled by `dataset cells
--dead-stain`: in the default run, a one-feature logistic model fitted on the crops and written as a
tiny ONNX graph with its contract; in the slow run, the project's whole chain (`train`, `export`).
The daemon serves each on a plate of another seed: every frame's `cell_counts` must be the model's
calls on that frame's segmented cells, the well aggregates their sums, and the per-cell live
fraction must follow the simulator's truth.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import pytest

from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.core.cell_calls import live_dead_cells
from wellwatch.core.config import load_config
from wellwatch.core.errors import ConfigError, StartupError
from wellwatch.core.files.tiff import read_frame
from wellwatch.core.segmentation.segmenters import classical_cells
from wellwatch.core.segmentation.classical import ClassicalParams
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
def calibration(tmp_path_factory):
    """`dataset cells --dead-stain` on a simulated calibration plate (seed 3, 12 wells of one field:
    enough well groups for grouped validation and test splits)."""
    root = tmp_path_factory.mktemp("cell-ld-model")
    spec = SimulationSpec(fields=1, timepoints=1, size=256, cells_per_field=25, channels=("BF", "PI"),
                          treatment="dose_series", seed=3)
    write_plate(spec, root / "cal")
    assert _run(["dataset", "cells", str(root / "cal"), "--out", str(root / "ds"), "--label-free", "BF",
                 "--dead-stain", "PI", "--segment-on", "BF", "--crop", "48", "--mask-radius", "16",
                 "--min-area", "60", "--max-area", "2000"] + CLASSICAL) == 0
    return root


def crop_feature(crops: np.ndarray) -> np.ndarray:
    """Mean |crop - 1| (crops are scaled to mean 1 inside the mask): simulated dead cells are flatter
    and rounder in bright field, which moves it."""
    return np.abs(crops - 1.0).mean(axis=(1, 2, 3))


def write_feature_model(path, ds, feature_threshold: float, slope: float) -> None:
    """A tiny ONNX graph computing logit(dead) = slope * (crop_feature - threshold), with the crop
    contract of the dataset it was fitted on."""
    import onnx
    from onnx import TensorProto, helper

    from wellwatch.export.metadata import set_metadata
    from wellwatch.training.training_run import make_contract

    size = ds.x.shape[-1]
    const = lambda name, v: helper.make_node("Constant", [], [name], value=helper.make_tensor(  # noqa: E731
        name, TensorProto.FLOAT, [], [float(v)]))
    nodes = [const("one", 1.0), const("thr", feature_threshold), const("slope", slope), const("zero", 0.0),
             helper.make_node("Sub", ["input", "one"], ["dev"]), helper.make_node("Abs", ["dev"], ["absdev"]),
             helper.make_node("ReduceMean", ["absdev"], ["mean4"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Flatten", ["mean4"], ["feature"], axis=1),
             helper.make_node("Sub", ["feature", "thr"], ["centred"]),
             helper.make_node("Mul", ["centred", "slope"], ["dead_logit"]),
             helper.make_node("Mul", ["dead_logit", "zero"], ["live_logit"]),
             helper.make_node("Concat", ["live_logit", "dead_logit"], ["scores"], axis=1)]
    graph = helper.make_graph(nodes, "crop-feature-live-dead",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, size, size])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    contract = make_contract(ds, "feature-logistic", "crop-feature-live-dead", 0.5, {"cells": len(ds)}, {})
    set_metadata(model, dataclasses.replace(contract, output="logits"))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def feature_model(calibration):
    """A one-feature logistic model fitted on the calibration cells' crops and labels."""
    from wellwatch.training.dataset import load_dataset

    ds = load_dataset(calibration / "ds")
    f = crop_feature(ds.x)
    live, dead = np.median(f[ds.y == 0]), np.median(f[ds.y == 1])
    assert dead > live  # the direction the model assumes
    path = calibration / "feature-live-dead.onnx"
    write_feature_model(path, ds, (live + dead) / 2, 8.0 / (dead - live))
    return path


@pytest.fixture(scope="module")
def crop_model(calibration):
    """The project's chain: `train` (the crop default, the ogawa CNN) and `export`."""
    root = calibration
    assert _run(["train", str(root / "ds"), "--out", str(root / "run"), "--group-by", "well", "--seed", "0",
                 "--quiet"]) == 0
    assert _run(["export", str(root / "run" / "best.pt"), "--out", str(root / "cell-ld.onnx"),
                 "--no-real-images"]) == 0
    return root / "cell-ld.onnx"


@pytest.mark.integration
def test_daemon_publishes_a_crop_models_per_cell_calls(feature_model, run_daemon, recorder_for, tmp_path):
    serve_and_check(feature_model, run_daemon, recorder_for, tmp_path, max_mae=0.05)


@pytest.mark.integration
@pytest.mark.slow
def test_daemon_serves_a_crop_model_trained_and_exported_by_the_chain(crop_model, run_daemon, recorder_for,
                                                                     tmp_path):
    serve_and_check(crop_model, run_daemon, recorder_for, tmp_path, max_mae=0.03)


def serve_and_check(model_path, run_daemon, recorder_for, tmp_path, max_mae: float) -> None:
    crop_model = model_path
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
    assert np.abs(errors).mean() < max_mae, errors
    assert sum(sum(m["cell_counts"].values()) for m in frames) > 100


@pytest.mark.unit
def test_slots_refuse_the_wrong_kind_of_live_dead_model(feature_model, tmp_path):
    crop_model = feature_model
    from wellwatch.daemon.service import load_backend, load_cell_live_dead_backend
    from wellwatch.daemon.metrics import DaemonMetrics
    from prometheus_client import CollectorRegistry

    metrics = DaemonMetrics(CollectorRegistry())
    seg = {"segmentation.method": "classical", "inference.device": "cpu", "inference.warmup": False}
    with pytest.raises(StartupError, match=r"models\.live_dead\.path .*per-cell .*\[models\.cell_live_dead\]"):
        load_backend(load_config(None, {"models.live_dead.path": str(crop_model), **seg}), metrics)
    from wellwatch.core.bundled_models import bundled_demo_model

    with pytest.raises(StartupError, match=r"models\.cell_live_dead\.path .*without a crop section"):
        load_cell_live_dead_backend(load_config(None, {"models.cell_live_dead.path": str(bundled_demo_model()),
                                                       **seg}), metrics)
    with pytest.raises(ConfigError, match=r"models\.cell_live_dead\.path.*segmentation\.method"):
        load_config(None, {"models.cell_live_dead.path": str(crop_model)})
    # a crop model's channels are checked by the same rule, in the same words, as the tile model's
    with pytest.raises(StartupError, match=r"channels\.label_free \['BF', 'PH'\] gives 2 channel\(s\) but the "
                                           r"cell_live_dead model .* expects 1 "):
        load_cell_live_dead_backend(load_config(None, {"models.cell_live_dead.path": str(crop_model),
                                                       "channels.label_free": ["BF", "PH"], **seg}), metrics)


@pytest.mark.integration
def test_a_cell_type_model_must_share_the_crop_geometry(feature_model, run_daemon):
    crop_model = feature_model
    spec = plate(seed=16)
    with pytest.raises(StartupError, match=r"crop section"):
        run_daemon(spec, cell_type_backend=CropStdClassifier(size=32), **{
            "segmentation.method": "classical", "models.cell_live_dead.path": str(crop_model),
            **{f"segmentation.classical.{k}": v for k, v in SIMULATED_BF.items()}})


@pytest.mark.integration
def test_a_crop_model_given_in_code_needs_segmented_cells_as_a_configured_one_does(run_daemon):
    with pytest.raises(ConfigError, match=r"models\.cell_type\.path.*cell types need segmented cells: set "
                                          r"segmentation\.method"):
        run_daemon(plate(seed=17), cell_type_backend=CropStdClassifier(size=32))


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


@pytest.mark.integration
def test_cell_types_and_per_cell_live_dead_share_pooled_crop_batches(run_daemon, recorder_for, tmp_path):
    from wellwatch.core.cell_calls import type_counts

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
