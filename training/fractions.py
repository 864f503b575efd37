"""Per-group class fractions, model against labels: the number a user reads off the daemon (e.g. the
dead fraction of a well) is a fraction, so a classifier is also judged by how well it gets those."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .scores import balanced_accuracy, roc_auc


def group_fractions(y: np.ndarray, score: np.ndarray, threshold: float, groups: np.ndarray) -> dict[str, Any]:
    """{"per_group": {group: {n, fraction_labels, fraction_model, mean_score, auc, balanced_accuracy}},
    "mae", "pearson_r"}: the positive fraction by the labels and by the model's calls, per group."""
    y = np.asarray(y, bool)
    pred = np.asarray(score) >= threshold
    per_group = {}
    for g in sorted(set(np.asarray(groups).astype(str).tolist())):
        m = np.asarray(groups).astype(str) == g
        both = 0 < y[m].sum() < m.sum()
        per_group[g] = {"n": int(m.sum()), "fraction_labels": float(y[m].mean()),
                        "fraction_model": float(pred[m].mean()), "mean_score": float(np.mean(score[m])),
                        "auc": roc_auc(y[m], score[m]) if both else None,
                        "balanced_accuracy": balanced_accuracy(y[m], pred[m]) if both else None}
    labels = np.array([v["fraction_labels"] for v in per_group.values()])
    model = np.array([v["fraction_model"] for v in per_group.values()])
    r = float(np.corrcoef(labels, model)[0, 1]) if len(labels) > 2 and labels.std() > 0 and model.std() > 0 else None
    return {"per_group": per_group, "mae": float(np.abs(labels - model).mean()), "pearson_r": r}


def plot_group_fractions(fractions: dict[str, Any], path: Path, title: str, what: str = "dead fraction",
                         truth: str = "the stain") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pg = fractions["per_group"]
    labels = [v["fraction_labels"] for v in pg.values()]
    model = [v["fraction_model"] for v in pg.values()]
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="0.7", lw=1)
    ax.scatter(labels, model, color="tab:red")
    for name, a, b in zip(pg, labels, model):
        ax.annotate(name, (a, b), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{what} from {truth}")
    ax.set_ylabel(f"{what} called by the model")
    r = fractions["pearson_r"]
    ax.set_title(f"{title}\nmean abs. error {fractions['mae']:.3f}" + (f", Pearson r {r:.3f}" if r is not None else ""),
                 fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pooled_auc_parts(y: np.ndarray, score: np.ndarray, groups: np.ndarray, fractions: dict[str, Any]) -> dict[str, Any]:
    """How much of a pooled AUC only says which group (experiment) a sample came from; `fractions` is
    `group_fractions` of the same y, score and groups (its per-group figures are reused, not redone).

    - `group_fraction_auc`: every sample scored by its own group's true positive fraction. A model
      that knows each experiment's dead fraction and nothing about single cells reaches this.
    - `model_group_mean_auc`: every sample scored by the model's mean score over its group: the
      share of the model's AUC that ranks experiments rather than samples.
    - `within_group_auc_mean`: the mean of the per-group AUCs (groups holding both classes): how well
      the model ranks samples inside one experiment, which a pooled AUC can hide.
    """
    y = np.asarray(y, bool)
    per_group = fractions["per_group"]
    names, which = np.unique(np.asarray(groups).astype(str), return_inverse=True)  # group_fractions' order
    fraction = np.array([per_group[n]["fraction_labels"] for n in names])[which]
    mean_score = np.array([per_group[n]["mean_score"] for n in names])[which]
    within = [v["auc"] for v in per_group.values() if v["auc"] is not None]
    both = 0 < y.sum() < len(y)
    return {"pooled_auc": roc_auc(y, score) if both else None,
            "group_fraction_auc": roc_auc(y, fraction) if both else None,
            "model_group_mean_auc": roc_auc(y, mean_score) if both else None,
            "within_group_auc_mean": float(np.mean(within)) if within else None,
            "groups_with_both_classes": len(within)}
