"""`wellwatch train`: a dataset folder -> RUN/ (best.pt, history plot, split, metrics).

Splits are by group (source image by default; well or plate for cross-validation by dish or
plate), so patches of one group never sit on both sides of a split.

RUN/best.pt        the checkpoint (training/checkpoint.py): weights + the full model contract
RUN/history.png    training and validation loss (and validation AUC) per epoch
RUN/split.json     the groups of each split and the per-split counts
RUN/train.json     configuration, timing, test metrics (and cross-validation folds)

On a cell-crop dataset that stores each cell's area (`dataset cells`), the cell-type study's
baseline, an RBF SVM on cell size, is fitted on the same training groups and scored on the same
test groups as the network: metrics["cv"]["baseline_cell_size_svm"] (pooled out-of-fold) and
metrics["test"]["baseline_cell_size_svm"].
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from wellwatch.core.contract import CellCrop, ModelContract

from .checkpoint import history_dict, save_checkpoint
from .cells import SVM_DESCRIPTION, cell_size_svm_scores
from .dataset import Dataset, load_dataset
from .evaluate import bootstrap_ci
from .progress import Progress
from .scores import balanced_accuracy, roc_auc
from .splits import grouped_kfold, grouped_split
from .classifier_loop import History, TrainConfig, predict_proba, seed_defaults, train_classifier

log = logging.getLogger(__name__)

DEFAULT_ARCH = {"tiles": "resnet18", "crops": "ogawa", "box_crops": "cropnet8"}


class SplitError(ValueError):
    """The requested split cannot train the requested way."""


def default_arch(ds: Dataset) -> str:
    """The seed study's network for this kind of data: tiles -> ResNet-18 (live/dead study),
    single-cell crops -> the Ogawa CNN (the cell-crop study); crops from hand-drawn boxes (`dataset
    voc`) -> cropnet8, chosen by cross-validation on the LDC images (docs/models/training.md)."""
    kind = ds.meta.get("kind", "tiles")
    if kind == "crops" and ds.meta.get("provenance", {}).get("source") == "Pascal VOC boxes":
        kind = "box_crops"
    return DEFAULT_ARCH.get(kind, "resnet18")


def make_contract(ds: Dataset, arch: str, name: str, threshold: float, trained_on: dict[str, Any],
                  metrics: dict[str, Any]) -> ModelContract:
    size = int(ds.x.shape[-1])
    crop = ds.meta.get("cell_crop")
    return ModelContract(
        name=name, task=ds.meta.get("task", "live_dead"), classes=tuple(ds.classes),
        positive_class=ds.positive_class, output="probabilities", input_name="input",
        channels=tuple(ds.meta.get("channels", ["brightfield"])), layout="NCHW", height=size, width=size,
        normalisation=ds.normalisation, tiling=ds.tiling, empty_filter=ds.empty_filter,
        decision_threshold=float(threshold), trained_on=trained_on, metrics=metrics,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), tool="wellwatch train",
        crop=CellCrop(**crop) if crop else None)


def _metrics(y_pos: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, Any]:
    return {"n": int(len(y_pos)), "auc": round(roc_auc(y_pos, score), 4),
            "balanced_accuracy": round(balanced_accuracy(y_pos.astype(int), (score >= threshold).astype(int)), 4)}


def train_val_split(groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """90/10 by group, with at least one validation group whenever there are two or more groups: with
    fewer than 5 groups the 10% rounds to none, and early stopping on an empty validation set would
    keep the first epoch's weights."""
    train, val = grouped_split(groups, (0.9, 0.1), seed)
    names = sorted(set(groups[train].tolist()))
    if not val.any() and len(names) >= 2:
        one = names[int(np.random.default_rng(seed).integers(len(names)))]
        val = groups == one
        train = train & ~val
        log.warning("only %d groups to train on: validating on one of them (%s)", len(set(groups.tolist())), one)
    return train, val


def fit_split(ds: Dataset, train: np.ndarray, val: np.ndarray, cfg: TrainConfig):
    return train_classifier(ds.x[train], ds.y[train], ds.x[val], ds.y[val], cfg, classes=len(ds.classes))


def choose_threshold(y_pos: np.ndarray, score: np.ndarray, how: str) -> float:
    """'0.5' (the weighted sampler trains on balanced classes, so 0.5 is the balanced boundary) or
    'val' (the threshold that maximises balanced accuracy on the validation split)."""
    if how != "val" or len(np.unique(y_pos)) < 2:
        return 0.5
    candidates = np.unique(np.round(score, 4))
    best = max(candidates, key=lambda t: balanced_accuracy(y_pos.astype(int), (score >= t).astype(int)))
    return float(best)


def train_run(dataset: str | Path, out: str | Path, arch: str | None = None, epochs: int | None = None,
              batch_size: int | None = None, lr: float | None = None, patience: int | None = None,
              seed: int = 0, pretrained: str | None = None, group_by: str = "source",
              fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), folds: int = 0,
              threshold: str = "0.5", device: str = "auto", name: str | None = None,
              progress: bool = True, label_smoothing: float | None = None, photometric: bool | None = None,
              schedule: str | None = None, weight_decay: float | None = None) -> dict[str, Any]:
    ds = load_dataset(dataset)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arch = arch or default_arch(ds)
    cfg = seed_defaults(arch, epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed,
                        pretrained=pretrained, device=device, progress=progress, label_smoothing=label_smoothing,
                        photometric=photometric, schedule=schedule, weight_decay=weight_decay)
    groups = ds.groups(group_by)
    pos = ds.classes.index(ds.positive_class)
    summary: dict[str, Any] = {"dataset": str(dataset), "fingerprint": ds.meta.get("fingerprint"),
                               "arch": arch, "config": asdict(cfg), "group_by": group_by}
    every_group = fractions[1] == 0 and fractions[2] == 0  # e.g. --split 100/0/0: the final model sees all
    if every_group and cfg.patience:
        raise SplitError(f"split {'/'.join(f'{f:g}' for f in fractions)} leaves no validation groups, and early "
                         f"stopping (patience {cfg.patience}) needs them: give --patience 0 to train a fixed "
                         f"number of epochs, or keep a validation share")
    t0 = time.perf_counter()
    if every_group:
        train, val, test = np.ones(len(ds), bool), np.zeros(len(ds), bool), np.zeros(len(ds), bool)
        if folds:
            summary["cv"] = cross_validate(ds, groups, folds, cfg, pos, threshold, out)
    elif folds:
        summary["cv"] = cross_validate(ds, groups, folds, cfg, pos, threshold, out)
        train, val = train_val_split(groups, seed)
        test = np.zeros(len(ds), bool)
    else:
        train, val, test = grouped_split(groups, fractions, seed)
    _log(progress, f"training {arch} on {int(train.sum())} patches ({len(set(groups[train]))} {group_by} groups), "
                   f"validating on {int(val.sum())}, testing on {int(test.sum())}; input "
                   f"{ds.x.shape[1]}x{ds.x.shape[2]}x{ds.x.shape[3]}")
    model, history = fit_split(ds, train, val, cfg)
    p_val = predict_proba(model, ds.x[val])[:, pos]
    thr = choose_threshold(ds.y[val] == pos, p_val, threshold)
    metrics: dict[str, Any] = {"val": _metrics(ds.y[val] == pos, p_val, thr)} if val.any() else {}
    if test.any():
        p_test = predict_proba(model, ds.x[test])[:, pos]
        metrics["test"] = _metrics(ds.y[test] == pos, p_test, thr)
        metrics["test"]["split"] = f"held-out {group_by} groups"
        if ds.area is not None:
            fit = train | val
            s = cell_size_svm_scores(ds.area[fit], ds.y[fit] == pos, ds.area[test], seed)
            metrics["test"]["baseline_cell_size_svm"] = _metrics(ds.y[test] == pos, s, 0.0)
    if folds:
        metrics["cv"] = dict(summary["cv"]["pooled"], k=folds, group_by=group_by)
        if "pooled_one_view" in summary["cv"]:
            metrics["cv"]["one_view"] = summary["cv"]["pooled_one_view"]
        if "baseline_cell_size_svm" in summary["cv"]:
            metrics["cv"]["baseline_cell_size_svm"] = summary["cv"]["baseline_cell_size_svm"]["pooled"]
    split = {"group_by": group_by, "seed": seed,
             "fractions": list(fractions) if not folds or every_group else [0.9, 0.1],
             "train_groups": sorted(set(groups[train].tolist())), "val_groups": sorted(set(groups[val].tolist())),
             "test_groups": sorted(set(groups[test].tolist())),
             "counts": {k: {c: int((ds.y[m] == i).sum()) for i, c in enumerate(ds.classes)}
                        for k, m in (("train", train), ("val", val), ("test", test))}}
    (out / "split.json").write_text(json.dumps(split, indent=1) + "\n")
    trained_on = {"dataset": {k: ds.meta.get(k) for k in ("kind", "provenance", "counts", "n", "groups",
                                                          "thresholds", "crop", "duplicates", "fingerprint",
                                                          "cell_crop", "segmentation", "marker", "label_counts")
                              if ds.meta.get(k) is not None},
                  **({"fits": ds.meta["fits"]} if ds.meta.get("fits") else {}),
                  "arch": arch, "pretrained": pretrained, "epochs_run": len(history.train_loss),
                  "best_epoch": history.best_epoch + 1, "seconds": round(history.seconds, 1),
                  "device": history.device, "hyperparameters": {k: v for k, v in asdict(cfg).items()
                                                                if k not in ("progress", "device")},
                  "split": {"group_by": group_by, "seed": seed, "test_groups": split["test_groups"],
                            "counts": split["counts"]},
                  "threshold_rule": threshold}
    contract = make_contract(ds, arch, name or f"{ds.meta.get('task', 'model')}-{arch}", thr, trained_on, metrics)
    save_checkpoint(out / "best.pt", model, arch, contract, history_dict(history))
    plot_history(history, out / "history.png", f"{arch} on {Path(dataset).name}")
    summary.update(metrics=metrics, threshold=thr, seconds=round(time.perf_counter() - t0, 1),
                   train_seconds=round(history.seconds, 1), epochs_run=len(history.train_loss),
                   best_epoch=history.best_epoch + 1, device=history.device)
    (out / "train.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    _log(progress, f"wrote {out / 'best.pt'}: {json.dumps(metrics)} (training {history.seconds:.0f} s)")
    if folds:
        cv = metrics["cv"]
        _log(progress, f"cross-validated by {group_by} ({folds} folds, pooled out-of-fold, 95% CIs resampling "
                       f"groups): AUC {cv['auc']:.4f} ({cv['auc_ci95'][0]:.4f}-{cv['auc_ci95'][1]:.4f}), balanced "
                       f"accuracy {cv['balanced_accuracy']:.4f} ({cv['balanced_accuracy_ci95'][0]:.4f}-"
                       f"{cv['balanced_accuracy_ci95'][1]:.4f})")
    if folds and "baseline_cell_size_svm" in metrics["cv"]:
        _log(progress, f"cross-validated AUC by {group_by} ({folds} folds, pooled out-of-fold): {arch} "
                       f"{metrics['cv']['auc']:.4f}, cell-size SVM {metrics['cv']['baseline_cell_size_svm']['auc']:.4f}")
    return summary


def cross_validate(ds: Dataset, groups: np.ndarray, k: int, cfg: TrainConfig, pos: int, threshold: str,
                   out: Path) -> dict[str, Any]:
    """k folds by group: each fold's groups are the test set once; 10% of the other groups validate.
    A model that averages 8 rotated/flipped views (cropnet8) is also scored on one view
    ("pooled_one_view"): the same weights, so the difference is the view averaging alone."""
    oof, one_view = np.full(len(ds), np.nan), np.full(len(ds), np.nan)
    svm = np.full(len(ds), np.nan) if ds.area is not None else None
    folds = []
    for i, test in enumerate(grouped_kfold(groups, k, cfg.seed)):
        rest = np.nonzero(~test)[0]
        tr, va = train_val_split(groups[rest], cfg.seed + i)
        train, val = np.zeros(len(ds), bool), np.zeros(len(ds), bool)
        train[rest[tr]], val[rest[va]] = True, True
        _log(cfg.progress, f"fold {i + 1}/{k}: test groups {sorted(set(groups[test].tolist()))[:6]}...")
        model, history = fit_split(ds, train, val, replace(cfg, seed=cfg.seed + i))
        thr = choose_threshold(ds.y[val] == pos, predict_proba(model, ds.x[val])[:, pos], threshold)
        oof[test] = predict_proba(model, ds.x[test])[:, pos]
        if getattr(model, "dihedral", False):  # the same weights on one view: what the 8-view mean adds
            model.dihedral = False
            one_view[test] = predict_proba(model, ds.x[test])[:, pos]
            model.dihedral = True
        m = _metrics(ds.y[test] == pos, oof[test], thr)
        m.update(fold=i + 1, test_groups=sorted(set(groups[test].tolist())), epochs_run=len(history.train_loss),
                 threshold=thr)
        if svm is not None:
            # the baseline sees the same training groups (train + validation: it needs no early stopping)
            svm[test] = cell_size_svm_scores(ds.area[~test], ds.y[~test] == pos, ds.area[test], cfg.seed + i)
            m["baseline_cell_size_svm"] = _metrics(ds.y[test] == pos, svm[test], 0.0)
        folds.append(m)
    with open(out / "cv_scores.csv", "w") as f:
        f.write("id,label,score,fold" + (",svm_cell_size" if svm is not None else "") + "\n")
        fold_of = np.zeros(len(ds), int)
        for i, t in enumerate(grouped_kfold(groups, k, cfg.seed)):
            fold_of[t] = i + 1
        for j in range(len(ds)):
            extra = f",{svm[j]:.6f}" if svm is not None else ""
            f.write(f"{ds.ids[j]},{int(ds.y[j] == pos)},{oof[j]:.6f},{fold_of[j]}{extra}\n")
    aucs = [f["auc"] for f in folds]
    pooled = _metrics(ds.y == pos, oof, 0.5)
    pooled.update(bootstrap_ci(ds.y == pos, oof, oof >= 0.5, groups))
    out_cv = {"k": k, "folds": folds, "pooled": pooled,
              "auc_mean": round(float(np.nanmean(aucs)), 4), "auc_sd": round(float(np.nanstd(aucs)), 4)}
    if np.isfinite(one_view).all():
        out_cv["pooled_one_view"] = _metrics(ds.y == pos, one_view, 0.5)
        out_cv["pooled_one_view"].update(bootstrap_ci(ds.y == pos, one_view, one_view >= 0.5, groups))
    if svm is not None:
        svm_aucs = [f["baseline_cell_size_svm"]["auc"] for f in folds]
        out_cv["baseline_cell_size_svm"] = {
            "model": SVM_DESCRIPTION, "feature": "cell area (full-resolution px)", "same_folds": True,
            "pooled": _metrics(ds.y == pos, svm, 0.0), "auc_mean": round(float(np.nanmean(svm_aucs)), 4),
            "auc_sd": round(float(np.nanstd(svm_aucs)), 4)}
    return out_cv


def plot_history(h: History, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(h.train_loss) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(epochs, h.train_loss, "o-", label="train loss")
    ax.plot(epochs, h.val_loss, "s-", label="validation loss")
    if h.best_epoch >= 0:
        ax.axvline(h.best_epoch + 1, color="grey", ls="--", lw=1, label=f"best epoch {h.best_epoch + 1}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    if h.val_auc:
        ax2 = ax.twinx()
        ax2.plot(epochs, h.val_auc, "^:", color="tab:green", label="validation AUC")
        ax2.set_ylabel("validation AUC")
        ax2.set_ylim(0.4, 1.0)
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _log(progress: bool, msg: str) -> None:
    Progress("train", progress).line(msg)
