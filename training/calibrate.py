"""`wellwatch calibrate`: from a stained calibration plate to a served model whose per-well numbers
come with intervals that the plate measured.

Steps (each reuses the tools the separate commands use):
1. dataset: tiles (`dataset live-dead`) or, with --segment-on, single cells (`dataset cells
   --dead-stain`), labelled from the dead stain by the robust mixture (refused when degenerate);
   or a dataset already built (--dataset, e.g. `dataset voc` boxes);
2. leave one experiment (by default the well) out: every experiment scored by a model trained on the
   others (training/loeo.py); with --init, every fold fine-tunes the previous model, and the previous
   model itself is scored on the new plate first ("before");
3. the calibration from those scores (training/calibration.py): figures with CIs, the per-well
   estimator, conformal half-widths, the verdict;
4. the final model on every experiment, exported with the calibration in its contract;
5. CAL/report.html, CAL/config.toml, CAL/calibration.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from wellwatch.core.errors import WellwatchError
from wellwatch.training.cli import register

from .calibration import calibrate_scores
from .dataset import Dataset, load_dataset
from .checkpoint import history_dict, load_checkpoint, save_checkpoint
from .evaluate import check_compatible
from .classifier_loop import predict_proba, seed_defaults, train_classifier
from .loeo import leave_one_group_out
from .training_run import make_contract
from .calibrate_report import write_config_snippet, write_report
from .checkpoint_export import export_checkpoint

log = logging.getLogger(__name__)


MAX_LEAVE_ONE_OUT = 20  # experiments; more (e.g. single images as groups) get 10 folds of whole experiments


class CalibrateError(WellwatchError, ValueError):
    """The calibration cannot run as asked (the message names the option or file)."""


@dataclasses.dataclass(frozen=True)
class CalibrateOptions:
    folders: tuple[str, ...]
    out: Path
    label_free: str = "BF"
    dead_stain: str = "PI"
    segment_on: str | None = None
    dataset: str | None = None  # a built dataset folder instead of FOLDER...
    naming: str = "scanr"
    tile: int = 64
    stride: int = 32
    arch: str = "tiny"
    epochs: int = 4
    group_by: str = "well"
    init: str | None = None  # a previous calibration's model (CAL/ folder, run/best.pt)
    name: str = ""
    threshold: float = 0.5
    n_boot: int = 500
    folds: int = 0  # 0: leave one experiment out (10 folds of whole experiments above MAX_LEAVE_ONE_OUT)
    dataset_args: tuple[str, ...] = ()  # extra `dataset live-dead`/`dataset cells` options


def build_dataset(o: CalibrateOptions, progress: Callable[[str], None]) -> tuple[Dataset, Path, str]:
    """(dataset, its folder, unit): built by the `dataset` subcommands themselves, so the labels and
    their refusals are exactly theirs."""
    if o.dataset:
        ds_dir = Path(o.dataset)
        if not (ds_dir / "dataset.npz").is_file():
            raise CalibrateError(f"--dataset {ds_dir}: no dataset.npz there; build one with `wellwatch dataset ...`")
    else:
        ds_dir = o.out / "dataset"
        if o.segment_on:
            argv = ["dataset", "cells", *o.folders, "--naming", o.naming, "--label-free", o.label_free,
                    "--dead-stain", o.dead_stain, "--segment-on", o.segment_on, "--out", str(ds_dir)]
        else:
            argv = ["dataset", "live-dead", *o.folders, "--naming", o.naming, "--label-free", o.label_free,
                    "--fluorescence", o.dead_stain, "--tile", str(o.tile), "--stride", str(o.stride),
                    "--out", str(ds_dir)]
        parser = argparse.ArgumentParser(prog="wellwatch")
        register(parser.add_subparsers(dest="command"))
        args = parser.parse_args([*argv, *o.dataset_args])
        progress(f"building the dataset: wellwatch {' '.join(argv[:2])} ... -> {ds_dir}")
        if args.func(args) != 0:
            raise CalibrateError(f"the stain could not label the calibration plate (see {ds_dir}): "
                                 "nothing to calibrate on")
    ds = load_dataset(ds_dir)
    if ds.meta.get("task", "live_dead") != "live_dead" or set(ds.classes) != {"live", "dead"}:
        raise CalibrateError(f"dataset {ds_dir}: classes {list(ds.classes)}; calibrate needs live and dead")
    unit = "cell" if ds.cell_crop is not None else "tile"
    return ds, ds_dir, unit


def load_init(path: str, ds: Dataset) -> tuple[Any, str]:
    """(model, arch) of a previous model: a CAL/ folder, a run folder or best.pt."""
    p = Path(path)
    for candidate in (p, p / "run" / "best.pt", p / "best.pt"):
        if candidate.is_file():
            break
    else:
        raise CalibrateError(f"--init {path}: no checkpoint there (give a calibration folder, a run folder or best.pt)")
    try:
        model, arch, contract, _ = load_checkpoint(candidate)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CalibrateError(f"--init {candidate}: not a wellwatch classifier checkpoint ({e})") from None
    try:
        check_compatible(contract, ds)
    except ValueError as e:
        raise CalibrateError(f"--init {candidate}: {e}") from None
    return model, arch


def score_with(model, x: np.ndarray, pos: int) -> np.ndarray:
    return predict_proba(model, x)[:, pos]


def calibrate(o: CalibrateOptions, progress: Callable[[str], None] = print) -> dict[str, Any]:
    t0 = time.perf_counter()
    o.out.mkdir(parents=True, exist_ok=True)
    ds, ds_dir, unit = build_dataset(o, progress)
    groups = ds.groups(o.group_by)
    names = sorted(set(groups.tolist()))
    if len(names) < 3:
        raise CalibrateError(f"{len(names)} {o.group_by} group(s) in {ds_dir}: leave-one-out needs at least 3 "
                             f"experiments (give more folders, or --group-by source for single images)")
    pos = ds.classes.index("dead")
    y = ds.y == pos
    progress(f"{len(ds)} labelled {ds.meta.get('kind', unit + 's')} ({int(y.sum())} dead) in {len(names)} "
             f"{o.group_by} groups")
    arch, init_state, before = o.arch, None, None
    if o.init:
        init_model, arch = load_init(o.init, ds)
        init_state = {k: v.clone() for k, v in init_model.state_dict().items()}
        progress(f"--init {o.init}: scoring the new plate with the previous model ({arch}) before fine-tuning")
        before = calibrate_scores(y, score_with(init_model, ds.x, pos), groups, o.threshold, unit, o.n_boot)
    cfg = seed_defaults(arch, epochs=o.epochs, patience=0)
    k = o.folds or (10 if len(names) > MAX_LEAVE_ONE_OUT else 0)
    oof, folds = leave_one_group_out(ds, groups, cfg, progress=progress, init_state=init_state, k=k)
    result = calibrate_scores(y, oof, groups, o.threshold, unit, o.n_boot)
    progress(f"verdict: {result.calibration.verdict} ({'; '.join(result.reasons)})")
    progress(f"training the final model on all {len(names)} {o.group_by} groups")
    model, history = train_classifier(ds.x, ds.y, ds.x[:0], ds.y[:0], dataclasses.replace(cfg, seed=cfg.seed + 1000),
                                      classes=len(ds.classes), init_state=init_state)
    trained_on = {"dataset": {k: ds.meta.get(k) for k in ("kind", "provenance", "label_counts", "thresholds",
                                                          "separation", "cell_crop", "segmentation")
                              if ds.meta.get(k) is not None},
                  "arch": arch, "epochs_run": len(history.train_loss), "group_by": o.group_by,
                  "init": o.init, "tool": "wellwatch calibrate"}
    metrics = {"leave_experiment_out": {**result.aucs, "estimator_mae": result.mae,
                                        "no_model_mae": result.no_model_mae}}
    name = o.name or f"calibrated-{unit}-{arch}"
    contract = dataclasses.replace(make_contract(ds, arch, name, o.threshold, trained_on, metrics),
                                   calibration=result.calibration)
    ckpt = save_checkpoint(o.out / "run" / "best.pt", model, arch, contract, history_dict(history))
    model_path = export_model(ckpt, o.out / "model.onnx", ds)
    np.savez_compressed(o.out / "loeo_scores.npz", ids=ds.ids, y=ds.y, score=oof, group=groups)
    summary = {"model": str(model_path), "unit": unit, "arch": arch, "epochs": cfg.epochs, "group_by": o.group_by,
               "folds_k": k or len(names),
               "n": int(len(ds)), "groups": names, "folds": folds, **result.to_dict(),
               "before": before.to_dict() if before is not None else None, "dataset": str(ds_dir),
               "seconds": round(time.perf_counter() - t0, 1)}
    (o.out / "calibration.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")

    write_config_snippet(o, contract, model_path, unit)
    write_report(o.out / "report.html", summary, result, before, ds_dir)
    progress(f"wrote {model_path}, {o.out / 'report.html'}, {o.out / 'config.toml'} "
             f"({summary['seconds']:.0f} s)")
    return summary


def export_model(checkpoint: Path, out: Path, ds: Dataset) -> Path:
    """The served file, through the one export path (parity checked on the dataset's own patches)."""
    rng = np.random.default_rng(0)
    sample = ds.x[rng.choice(len(ds), min(64, len(ds)), replace=False)]
    export_checkpoint(checkpoint, out, real_inputs=sample, parity_images=[])
    return out

