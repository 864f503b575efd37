"""`wellwatch evaluate RUN_OR_ONNX DATASET --out REPORT`: metrics, plots and a one-page report.

The model is either a training run (RUN/ or RUN/best.pt: the PyTorch checkpoint) or an exported
ONNX file (run with ONNX Runtime, as the daemon runs it): the model the daemon serves is the model
evaluated. Its contract must match the dataset's preprocessing (normalisation, input size).

Which patches: with --split auto (default), when the dataset is the one the model was trained on
(same fingerprint), only its held-out test groups; otherwise every patch. --split all forces all.

REPORT/metrics.json  auc (+ bootstrap 95% CI), balanced_accuracy (+ balanced_accuracy_ci95),
                     n, positive_class, confusion_matrix (rows = true class, columns = predicted,
                     in `classes` order), sensitivity, specificity, pearson_r with fluorescence
REPORT/scores.csv    id,label,score: label 1 = the positive class, score = its probability
REPORT/*.png         roc, confusion, fluorescence (paired data), tsne and gradcam (checkpoints only)
REPORT/report.md     one page that shows them
On a cell-crop dataset that stores cell areas (`dataset cells`), the cell-type study's baseline, an
RBF SVM on cell size, is reported beside the network (metrics.json "baseline_cell_size_svm", a row
in report.md, a second curve in roc.png) on the same evaluated cells: when they are the run's
held-out test split, the SVM is fitted on the dataset's other groups (those the run trained and
validated on); otherwise its scores are out-of-fold from 5-fold cross-validation by group on the
evaluated cells. The AUC difference (network - SVM) gets a paired group-bootstrap 95% CI.
The bootstrap resamples whole groups (source images), not patches: patches of one image are not
independent, and a CI that ignored that would be too narrow.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wellwatch.core.contract import ModelContract, contract_from_metadata

from .dataset import Dataset, load_dataset
from .fractions import group_fractions, plot_group_fractions, pooled_auc_parts
from .scores import balanced_accuracy, roc_auc
from .splits import grouped_kfold
from .classifier_loop import predict_proba
from .checkpoint import load_checkpoint
from .cells import SVM_DESCRIPTION, cell_size_svm_scores
from .models import cam_layer, penultimate

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    kind: str                  # "checkpoint" | "onnx"
    path: Path
    contract: ModelContract
    torch_model: Any = None    # nn.Module for checkpoints
    session: Any = None        # onnxruntime.InferenceSession for ONNX files
    arch: str = ""

    def predict(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        """(N, classes) probabilities."""
        if self.torch_model is not None:
            return predict_proba(self.torch_model, x, batch)
        out = []
        for i in range(0, len(x), batch):
            y = self.session.run(None, {self.contract.input_name: np.ascontiguousarray(x[i:i + batch], np.float32)})[0]
            if self.contract.output == "logits":
                y = np.exp(y - y.max(axis=1, keepdims=True))
                y /= y.sum(axis=1, keepdims=True)
            out.append(y)
        return np.concatenate(out) if out else np.zeros((0, len(self.contract.classes)), np.float32)


def load_model(path: str | Path) -> LoadedModel:
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        contract = contract_from_metadata(session.get_modelmeta().custom_metadata_map, str(path))
        return LoadedModel("onnx", path, contract, session=session)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint or ONNX file")

    model, arch, contract, _ = load_checkpoint(path)
    return LoadedModel("checkpoint", path, contract, torch_model=model, arch=arch)


def check_compatible(contract: ModelContract, ds: Dataset) -> None:
    problems = []
    if (contract.height, contract.width) != tuple(ds.x.shape[-2:]):
        problems.append(f"input {contract.height}x{contract.width} vs patches {ds.x.shape[-2]}x{ds.x.shape[-1]}")
    if len(contract.channels) != ds.x.shape[1]:
        problems.append(f"{len(contract.channels)} channels vs {ds.x.shape[1]}")
    if contract.normalisation.method != ds.normalisation.method or contract.normalisation.params != ds.normalisation.params:
        problems.append(f"normalisation {contract.normalisation} vs the dataset's {ds.normalisation}")
    crop = ds.cell_crop
    if (contract.crop is None) != (crop is None) or (crop and (crop.size, crop.mask_radius) !=
                                                     (contract.crop.size, contract.crop.mask_radius)):
        problems.append(f"crop {contract.crop} vs the dataset's {crop}")
    if set(contract.classes) != set(ds.classes):
        problems.append(f"classes {list(contract.classes)} vs {list(ds.classes)}")
    if problems:
        raise ValueError("the model does not fit this dataset: " + "; ".join(problems))


def select_patches(contract: ModelContract, ds: Dataset, split: str) -> tuple[np.ndarray, str]:
    if split == "all":
        return np.ones(len(ds), bool), "all patches"
    info = contract.trained_on.get("split", {})
    same = contract.trained_on.get("dataset", {}).get("fingerprint") == ds.meta.get("fingerprint")
    if same and info.get("test_groups"):
        groups = ds.groups(info.get("group_by", "source"))
        mask = np.isin(groups, info["test_groups"])
        return mask, f"the run's held-out test split ({len(info['test_groups'])} {info.get('group_by', 'source')} groups)"
    if split == "test":
        raise ValueError("--split test: this dataset is not the one the model was trained on (fingerprints differ), "
                         "or the model holds no test split")
    if same:
        log.warning("the model was trained on this dataset and holds no test split: evaluating on all patches")
        return np.ones(len(ds), bool), "all patches (WARNING: includes the training data)"
    return np.ones(len(ds), bool), "all patches (a dataset the model was not trained on)"


def bootstrap_ci(y: np.ndarray, score: np.ndarray, pred: np.ndarray, groups: np.ndarray, n_boot: int = 2000,
                 seed: int = 0) -> dict[str, list[float]]:
    """95% percentile intervals of balanced accuracy and AUC, resampling whole groups."""
    rng = np.random.default_rng(seed)
    _, gi = np.unique(groups.astype(str), return_inverse=True)
    g = gi.max() + 1 if len(gi) else 0
    stats = np.zeros((g, 4))  # tp, fn, tn, fp per group
    np.add.at(stats, (gi, 0), y & pred)
    np.add.at(stats, (gi, 1), y & ~pred)
    np.add.at(stats, (gi, 2), ~y & ~pred)
    np.add.at(stats, (gi, 3), ~y & pred)
    draws = np.stack([np.bincount(rng.integers(0, g, g), minlength=g) for _ in range(n_boot)])
    c = draws @ stats
    with np.errstate(invalid="ignore", divide="ignore"):
        ba = 0.5 * (c[:, 0] / (c[:, 0] + c[:, 1]) + c[:, 2] / (c[:, 2] + c[:, 3]))
    members = [np.nonzero(gi == k)[0] for k in range(g)]
    aucs = []
    for d in draws[: min(n_boot, 1000)]:
        idx = np.concatenate([np.repeat(members[k], d[k]) for k in np.nonzero(d)[0]])
        aucs.append(roc_auc(y[idx], score[idx]))
    q = lambda a: [round(float(np.nanpercentile(a, 2.5)), 4), round(float(np.nanpercentile(a, 97.5)), 4)]
    return {"balanced_accuracy_ci95": q(ba), "auc_ci95": q(np.array(aucs)), "bootstrap": f"{n_boot} resamples of "
            f"{g} groups (AUC: {len(aucs)})"}


def cell_size_baseline(ds: Dataset, mask: np.ndarray, positive: str, group_by: str,
                       seed: int = 0) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Scores of the study's cell-size SVM for the evaluated cells (ds.subset(mask)), and how they were
    made: fitted on the dataset's other cells when the evaluated cells are a held-out split, else
    out-of-fold from 5-fold cross-validation by group on the evaluated cells."""
    y = np.asarray(ds.classes)[ds.y] == positive
    info: dict[str, Any] = {"model": SVM_DESCRIPTION, "feature": "cell area (full-resolution px)"}
    if not mask.all():
        if len(np.unique(y[~mask])) < 2:
            info["how"] = "not fitted: the cells outside the evaluated split hold one class only"
            return None, info
        info["how"] = ("fitted on the dataset's cells outside the evaluated split (the run's training and "
                       "validation groups), scored on the same held-out cells as the network")
        return cell_size_svm_scores(ds.area[~mask], y[~mask], ds.area[mask], seed), info
    groups = ds.groups(group_by)
    n_groups = len(np.unique(groups.astype(str)))
    if n_groups < 2:
        info["how"] = f"not fitted: the evaluated cells hold one {group_by} group (cross-validation needs two)"
        return None, info
    k = min(5, n_groups)
    scores = np.full(len(ds), np.nan)
    for i, test in enumerate(grouped_kfold(groups, k, seed)):
        scores[test] = cell_size_svm_scores(ds.area[~test], y[~test], ds.area[test], seed + i)
    info["how"] = (f"out-of-fold scores from {k}-fold cross-validation by {group_by} on the evaluated cells "
                   "(the SVM never scored a cell it was fitted on)")
    return scores, info


def size_baseline_metrics(y: np.ndarray, score: np.ndarray, svm: np.ndarray, groups: np.ndarray,
                          n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The baseline's AUC, balanced accuracy (decision function >= 0) and group-bootstrap CIs, and the
    AUC difference network - SVM with a paired group-bootstrap CI (the same resamples for both)."""
    y = np.asarray(y).astype(bool)
    ok = np.isfinite(svm)
    pred = svm >= 0
    m: dict[str, Any] = {"n": int(ok.sum()), "auc": round(roc_auc(y[ok], svm[ok]), 4),
                         "balanced_accuracy": round(balanced_accuracy(y[ok].astype(int), pred[ok].astype(int)), 4)}
    ci = bootstrap_ci(y[ok], svm[ok], pred[ok], groups[ok], n_boot, seed)
    m.update(auc_ci95=ci["auc_ci95"], balanced_accuracy_ci95=ci["balanced_accuracy_ci95"])
    rng = np.random.default_rng(seed + 1)
    _, gi = np.unique(groups[ok].astype(str), return_inverse=True)
    members = [np.nonzero(gi == k)[0] for k in range(gi.max() + 1)] if len(gi) else []
    ys, s_net, s_svm = y[ok], np.asarray(score)[ok], svm[ok]
    diffs = []
    for _ in range(min(n_boot, 1000)):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
        diffs.append(roc_auc(ys[idx], s_net[idx]) - roc_auc(ys[idx], s_svm[idx]))
    d = np.array(diffs)
    m["auc_difference"] = {"value": round(roc_auc(ys, s_net) - roc_auc(ys, s_svm), 4),
                           "ci95": [round(float(np.nanpercentile(d, 2.5)), 4), round(float(np.nanpercentile(d, 97.5)), 4)],
                           "of": "network AUC - SVM AUC on the same cells",
                           "bootstrap": f"{len(d)} paired resamples of {len(members)} groups"}
    return m


def compute_metrics(y: np.ndarray, score: np.ndarray, threshold: float, groups: np.ndarray, classes: tuple[str, ...],
                    positive: str, fluorescence: np.ndarray | None = None, n_boot: int = 2000) -> dict[str, Any]:
    y = np.asarray(y).astype(bool)
    pred = np.asarray(score) >= threshold
    neg = [c for c in classes if c != positive][0] if len(classes) == 2 else "rest"
    tn, fp = int((~y & ~pred).sum()), int((~y & pred).sum())
    fn, tp = int((y & ~pred).sum()), int((y & pred).sum())
    m: dict[str, Any] = {
        "n": int(len(y)), "n_positive": int(y.sum()), "n_groups": int(len(np.unique(groups.astype(str)))),
        "positive_class": positive, "classes": [neg, positive], "decision_threshold": float(threshold),
        "auc": round(roc_auc(y, score), 4), "balanced_accuracy": round(balanced_accuracy(y.astype(int), pred.astype(int)), 4),
        "sensitivity": round(tp / max(tp + fn, 1), 4), "specificity": round(tn / max(tn + fp, 1), 4),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }
    m.update(bootstrap_ci(y, np.asarray(score, np.float64), pred, groups, n_boot))
    if fluorescence is not None and len(y) > 2 and np.std(score) > 0:
        m["pearson_r_score_fluorescence"] = round(float(np.corrcoef(score, fluorescence)[0, 1]), 4)
    return m


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-score, kind="mergesort")
    ys, ss = y[order].astype(bool), score[order]
    distinct = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]
    tps, fps = np.cumsum(ys)[distinct], np.cumsum(~ys)[distinct]
    return np.r_[0, fps / max(fps[-1], 1)], np.r_[0, tps / max(tps[-1], 1)]


def plot_roc(y, score, m, path: Path, baseline: np.ndarray | None = None) -> None:
    plt = _plt()
    fpr, tpr = roc_curve(np.asarray(y).astype(bool), np.asarray(score))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, lw=2, label=f"AUC {m['auc']:.3f} [{m['auc_ci95'][0]:.3f}, {m['auc_ci95'][1]:.3f}]")
    if baseline is not None and "baseline_cell_size_svm" in m:
        b = m["baseline_cell_size_svm"]
        ok = np.isfinite(baseline)
        bf, bt = roc_curve(np.asarray(y).astype(bool)[ok], np.asarray(baseline)[ok])
        ax.plot(bf, bt, lw=1.5, ls="--", color="tab:grey",
                label=f"cell-size SVM AUC {b['auc']:.3f} [{b['auc_ci95'][0]:.3f}, {b['auc_ci95'][1]:.3f}]")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.plot(1 - m["specificity"], m["sensitivity"], "o", color="tab:red", label=f"threshold {m['decision_threshold']:.2f}")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel(f"true positive rate ({m['positive_class']})")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"ROC, n={m['n']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(m, path: Path) -> None:
    plt = _plt()
    cm = np.array(m["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(cm / np.maximum(cm.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{cm[i, j]}\n({cm[i, j] / max(cm[i].sum(), 1):.0%})", ha="center", va="center", fontsize=9)
    ax.set_xticks([0, 1], m["classes"])
    ax.set_yticks([0, 1], m["classes"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"balanced accuracy {m['balanced_accuracy']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fluorescence(score, fluo, y, m, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for val, colour, name in ((False, "tab:green", m["classes"][0]), (True, "tab:red", m["classes"][1])):
        sel = y == val
        ax.scatter(fluo[sel], score[sel], s=6, alpha=0.5, color=colour, label=f"label {name}")
    ax.set_xlabel("mean fluorescence of the patch")
    ax.set_ylabel(f"P({m['positive_class']})")
    ax.set_title(f"Pearson r = {m.get('pearson_r_score_fluorescence', float('nan')):.3f}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tsne(features: np.ndarray, y: np.ndarray, pred: np.ndarray, m, path: Path, seed: int = 0) -> None:
    from sklearn.manifold import TSNE

    plt = _plt()
    emb = TSNE(2, perplexity=min(30, max(5, len(features) // 4)), init="pca", random_state=seed).fit_transform(
        features.astype(np.float64))
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for ax, colour_by, title in ((axes[0], y, "coloured by label"), (axes[1], pred, "coloured by prediction")):
        for val, colour, name in ((False, "tab:green", m["classes"][0]), (True, "tab:red", m["classes"][1])):
            sel = colour_by == val
            ax.scatter(emb[sel, 0], emb[sel, 1], s=5, alpha=0.6, color=colour, label=name)
        ax.set_title(f"t-SNE of penultimate features, {title}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gradcam(model, x: np.ndarray, target: int) -> np.ndarray:
    """(N, H, W) Grad-CAM maps in 0..1 for class `target`, at the input's resolution."""
    import torch
    import torch.nn.functional as F

    layer = cam_layer(model)
    store: dict[str, Any] = {}

    def hook(_m, _i, out):
        store["a"] = out
        out.register_hook(lambda g: store.__setitem__("g", g))

    h = layer.register_forward_hook(hook)
    try:
        model.eval()
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).requires_grad_(True)
        logits = model(xt)
        model.zero_grad()
        logits[:, target].sum().backward()
    finally:
        h.remove()
    # a model that averages 8 rotated/flipped views in its graph (cropnet8) runs its layers on 8 x N
    # inputs, the unrotated views first: explain those
    a, g = store["a"].detach()[:len(x)], store["g"].detach()[:len(x)]
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].numpy()
    top = cam.reshape(len(cam), -1).max(axis=1)[:, None, None]
    return cam / np.maximum(top, 1e-12)


def plot_gradcam(model, x, y, score, ids, m, pos_index: int, path: Path, n: int = 12, seed: int = 0) -> None:
    plt = _plt()
    rng = np.random.default_rng(seed)
    picks = []
    for val in (True, False):
        idx = np.nonzero(y == val)[0]
        picks += rng.choice(idx, min(len(idx), n // 2), replace=False).tolist()
    picks = np.array(picks, int)
    cams = gradcam(model, x[picks], pos_index)
    cols = min(6, len(picks))
    rows = int(np.ceil(len(picks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, i in enumerate(picks):
        ax = axes.ravel()[k]
        img = x[i, 0]
        lo, hi = np.percentile(img, [1, 99])
        ax.imshow(np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1), cmap="gray")
        ax.imshow(cams[k], cmap="jet", alpha=0.35, vmin=0, vmax=1)
        ax.set_title(f"{m['classes'][int(y[i])]} p={score[i]:.2f}", fontsize=7)
    fig.suptitle(f"Grad-CAM for class '{m['positive_class']}' (label, P({m['positive_class']}))", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(model_path: str | Path, dataset: str | Path, out: str | Path, split: str = "auto",
             n_boot: int = 2000, tsne_max: int = 1500, gradcam_n: int = 12, seed: int = 0) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(model_path)
    ds = load_dataset(dataset)
    check_compatible(lm.contract, ds)
    mask, which = select_patches(lm.contract, ds, split)
    sub = ds.subset(mask)
    c = lm.contract
    pos_model = c.classes.index(c.positive_class)
    probs = lm.predict(sub.x)
    score = probs[:, pos_model].astype(np.float64)
    y = np.asarray(sub.classes)[sub.y] == c.positive_class
    group_by = c.trained_on.get("split", {}).get("group_by", "source")
    m = compute_metrics(y, score, c.decision_threshold, sub.groups(group_by), c.classes, c.positive_class,
                        sub.fluorescence, n_boot)
    m.update(model=str(lm.path), model_kind=lm.kind, model_name=c.name, arch=lm.arch or c.trained_on.get("arch"),
             dataset=str(dataset), patches=which, input_size=[c.height, c.width], bootstrap_unit=group_by)
    with open(out / "scores.csv", "w") as f:
        f.write("id,label,score\n")
        for i, lab, s in zip(sub.ids, y, score):
            f.write(f"{i},{int(lab)},{s:.6f}\n")
    svm = None
    if ds.area is not None:
        svm, base = cell_size_baseline(ds, mask, c.positive_class, group_by, seed)
        if svm is not None:
            base.update(size_baseline_metrics(y, score, svm, sub.groups(group_by), n_boot, seed))
        m["baseline_cell_size_svm"] = base
    figures = {"roc": "roc.png", "confusion": "confusion.png"}
    wells = sub.groups("well")
    if len(set(wells.tolist())) > 1:
        # the number a user reads off the daemon is a fraction per well: model against labels
        m["per_well"] = group_fractions(y, score, c.decision_threshold, wells)
        m["auc_parts"] = pooled_auc_parts(y, score, wells, m["per_well"])
        plot_group_fractions(m["per_well"], out / "per_well.png", f"{c.name}: per well",
                             what=f"{c.positive_class} fraction", truth="the labels")
        figures["per_well"] = "per_well.png"
    plot_roc(y, score, m, out / "roc.png", svm)
    plot_confusion(m, out / "confusion.png")
    if sub.fluorescence is not None:
        plot_fluorescence(score, sub.fluorescence, y, m, out / "fluorescence.png")
        figures["fluorescence"] = "fluorescence.png"
    notes = []
    if ranks_wells_not_samples(m.get("auc_parts")):
        parts = m["auc_parts"]
        notes.append(f"Most of this AUC ranks wells rather than samples inside a well: "
                     f"inside one well the mean AUC is {parts['within_group_auc_mean']:.3f}, and scoring each sample "
                     f"by its well's labelled fraction alone gives {parts['group_fraction_auc']:.3f}. Per-well "
                     f"fractions may still be usable; per-sample calls are not.")
    if lm.torch_model is not None:
        import torch

        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(sub), min(len(sub), tsne_max), replace=False))
        if len(pick) >= 10:
            with torch.no_grad():
                feats = np.concatenate([penultimate(lm.torch_model, torch.from_numpy(sub.x[pick[i:i + 256]])).numpy()
                                        for i in range(0, len(pick), 256)])
            plot_tsne(feats, y[pick], score[pick] >= c.decision_threshold, m, out / "tsne.png", seed)
            figures["tsne"] = "tsne.png"
        if gradcam_n > 0 and len(sub):
            plot_gradcam(lm.torch_model, sub.x, y, score, sub.ids, m, pos_model, out / "gradcam.png", gradcam_n, seed)
            figures["gradcam"] = "gradcam.png"
    else:
        notes.append("t-SNE and Grad-CAM need the PyTorch checkpoint (RUN/best.pt); this report evaluated the "
                     "exported ONNX file with ONNX Runtime, so they are absent.")
    if svm is not None:
        with open(out / "baseline_scores.csv", "w") as f:
            f.write("id,label,svm_cell_size,area\n")
            for i, lab, s, a in zip(sub.ids, y, svm, sub.area):
                f.write(f"{i},{int(lab)},{s:.6f},{int(a)}\n")
    m["figures"] = figures
    m["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(m, indent=1) + "\n")
    write_report(out, m, c, notes)
    log.info("evaluated %s on %d patches: AUC %.4f, balanced accuracy %.4f %s", lm.path, m["n"], m["auc"],
             m["balanced_accuracy"], m["balanced_accuracy_ci95"])
    return m


def ranks_wells_not_samples(parts: dict[str, Any] | None, within_floor: float = 0.65, gap: float = 0.1) -> bool:
    """A pooled AUC well above the within-well one, with the within-well one near chance: the model (or
    the labels' spread between wells) separates wells, not samples."""
    if not parts or parts["within_group_auc_mean"] is None or parts["pooled_auc"] is None:
        return False
    return parts["within_group_auc_mean"] < within_floor and parts["pooled_auc"] - parts["within_group_auc_mean"] >= gap


def write_report(out: Path, m: dict[str, Any], c: ModelContract, notes: list[str]) -> Path:
    t = c.trained_on
    cm = m["confusion_matrix"]
    lines = [
        f"# Evaluation: {c.name}", "",
        f"Model `{m['model']}` ({m['model_kind']}, architecture {m.get('arch')}, input "
        f"{c.height}x{c.width}x{len(c.channels)}, normalisation {c.normalisation.method}), "
        f"dataset `{m['dataset']}`, evaluated on {m['patches']}.", "",
        "| metric | value |", "|---|---|",
        f"| n (positive = {m['positive_class']}) | {m['n']} ({m['n_positive']}), {m['n_groups']} groups |",
        f"| AUC | {m['auc']:.4f} (95% CI {m['auc_ci95'][0]:.4f}-{m['auc_ci95'][1]:.4f}) |",
        f"| balanced accuracy @ {m['decision_threshold']:.2f} | {m['balanced_accuracy']:.4f} "
        f"(95% CI {m['balanced_accuracy_ci95'][0]:.4f}-{m['balanced_accuracy_ci95'][1]:.4f}) |",
        f"| sensitivity / specificity | {m['sensitivity']:.4f} / {m['specificity']:.4f} |",
    ]
    if "pearson_r_score_fluorescence" in m:
        lines.append(f"| Pearson r (score vs mean fluorescence) | {m['pearson_r_score_fluorescence']:.4f} |")
    b = m.get("baseline_cell_size_svm")
    if b and "auc" in b:
        d = b["auc_difference"]
        lines += [f"| baseline: cell-size SVM AUC | {b['auc']:.4f} (95% CI {b['auc_ci95'][0]:.4f}-{b['auc_ci95'][1]:.4f}) |",
                  f"| baseline: cell-size SVM balanced accuracy | {b['balanced_accuracy']:.4f} |",
                  f"| AUC difference (network - SVM) | {d['value']:+.4f} (paired 95% CI {d['ci95'][0]:+.4f} to "
                  f"{d['ci95'][1]:+.4f}) |"]
    pw = m.get("per_well")
    if pw:
        r = f", Pearson r {pw['pearson_r']:.3f}" if pw["pearson_r"] is not None else ""
        lines.append(f"| per-well {m['positive_class']} fraction, model vs labels | mean abs. error {pw['mae']:.3f}{r} "
                     f"over {len(pw['per_group'])} wells |")
        parts = m["auc_parts"]
        if parts["within_group_auc_mean"] is not None and parts["group_fraction_auc"] is not None:
            lines.append(f"| mean AUC within a well / AUC of each well's labelled fraction alone | "
                         f"{parts['within_group_auc_mean']:.4f} / {parts['group_fraction_auc']:.4f} |")
    lines += [f"| confusion (rows true {m['classes'][0]}/{m['classes'][1]}) | {cm[0]} / {cm[1]} |", "",
              f"CIs: {m['bootstrap']} (the {m['bootstrap_unit']} is the resampling unit).", ""]
    if b:
        lines += [f"Baseline (the cell-type study's): {b['model']}; {b['how']}.", ""]
    cv = c.metrics.get("cv") if isinstance(c.metrics, dict) else None
    if cv and "auc_ci95" in cv:
        lines += ["Cross-validated at training (pooled out-of-fold scores, 95% CIs resampling groups): AUC "
                  f"{cv['auc']:.4f} ({cv['auc_ci95'][0]:.4f}-{cv['auc_ci95'][1]:.4f}), balanced accuracy "
                  f"{cv['balanced_accuracy']:.4f} ({cv['balanced_accuracy_ci95'][0]:.4f}-"
                  f"{cv['balanced_accuracy_ci95'][1]:.4f}), n {cv['n']}"
                  + ("; these, not the figures above, estimate how the model does on images it never saw."
                     if "includes the training data" in m["patches"] else "."), ""]
    if t.get("fits"):
        lines += [f"Fits: {t['fits']}.", ""]
    if t:
        lines += [f"Training: {t.get('epochs_run', '?')} epochs (best {t.get('best_epoch', '?')}), "
                  f"{t.get('seconds', '?')} s on {t.get('device', '?')}; split by {t.get('split', {}).get('group_by')}.", ""]
    for key, title in (("roc", "ROC curve"), ("confusion", "Confusion matrix"),
                       ("fluorescence", "Score vs mean fluorescence"), ("per_well", "Per-well fraction, model vs labels"), ("tsne", "t-SNE of penultimate features"),
                       ("gradcam", "Grad-CAM")):
        if key in m["figures"]:
            lines += [f"## {title}", "", f"![{title}]({m['figures'][key]})", ""]
    for n in notes:
        lines += [f"> {n}", ""]
    lines += ["Files: `metrics.json`, `scores.csv` (id,label,score; label 1 = positive class)"
              + (", `baseline_scores.csv` (the cell-size SVM's scores and the areas)" if b and "auc" in b else "")
              + ".", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
