"""Leave-one-experiment-out evaluation of a live/dead classifier on a paired dataset.

Each experiment (by default the well: one experiment per well, as in `adcc-paired`) is held out once;
the model is trained on the others with a fixed number of epochs (with a handful of experiments there
is no honest validation split for early stopping, and a held-out well must not choose the epoch). It
reports, over the out-of-experiment scores of every patch:
- AUC and balanced accuracy with 95% CIs that resample whole experiments;
- per experiment: AUC, balanced accuracy, and the dead fraction called by the model against the
  stain's (the number a user reads off the daemon), with a plot;
- how much of the pooled AUC only ranks experiments (`auc_parts`, `fractions.pooled_auc_parts`):
  when experiments' dead fractions differ widely, knowing each experiment's fraction alone scores
  a high pooled AUC, so the mean AUC within an experiment is reported beside it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import Dataset
from .evaluate import bootstrap_ci
from .fractions import group_fractions, plot_group_fractions, pooled_auc_parts
from .scores import balanced_accuracy, roc_auc
from .splits import grouped_kfold
from .classifier_loop import TrainConfig, predict_proba, train_classifier


def leave_one_group_out(ds: Dataset, groups: np.ndarray, cfg: TrainConfig, balance_groups: bool = False,
                        k: int = 0, progress=print,
                        init_state: dict | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Out-of-group P(dead) for every sample, and per-fold facts (groups, seconds); `k` > 0: k folds
    of whole groups instead of one group at a time; `init_state`: every fold fine-tunes these weights."""
    pos = ds.classes.index("dead")
    oof = np.full(len(ds), np.nan)
    folds = []
    names = sorted(set(groups.tolist()))
    tests = [groups == g for g in names] if not k else grouped_kfold(groups, k, cfg.seed)
    for i, test in enumerate(tests):
        g = ",".join(sorted(set(groups[test].tolist())))
        t0 = time.perf_counter()
        # no validation split, no early stopping (patience 0): the last epoch is kept
        model, history = train_classifier(ds.x[~test], ds.y[~test], ds.x[test][:0], ds.y[test][:0],
                                          replace(cfg, seed=cfg.seed + i, patience=0),
                                          groups_train=groups[~test] if balance_groups else None,
                                          init_state=init_state)
        oof[test] = predict_proba(model, ds.x[test])[:, pos]
        secs = time.perf_counter() - t0
        y = ds.y[test] == pos
        auc = roc_auc(y, oof[test]) if 0 < y.sum() < len(y) else float("nan")
        folds.append({"group": g, "n": int(test.sum()), "seconds": round(secs, 1), "auc": auc})
        progress(f"fold {i + 1}/{len(tests)} (held out {g}, {int(test.sum())} patches): AUC {auc:.3f}, "
                 f"{secs:.0f} s")
    return oof, folds


def summarise(ds: Dataset, groups: np.ndarray, oof: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    y = ds.y == ds.classes.index("dead")
    pred = oof >= threshold
    fractions = group_fractions(y, oof, threshold, groups)
    return {"n": int(len(y)), "groups": len(set(groups.tolist())), "auc": roc_auc(y, oof),
            "balanced_accuracy": balanced_accuracy(y, pred), "ci95": bootstrap_ci(y, oof, pred, groups),
            "threshold": threshold, "dead_fraction": fractions,
            "auc_parts": pooled_auc_parts(y, oof, groups, fractions)}


def run(ds: Dataset, out: Path, cfg: TrainConfig, group_by: str = "well", title: str = "",
        balance_groups: bool = False, k: int = 0) -> dict[str, Any]:
    groups = ds.groups(group_by)
    t0 = time.perf_counter()
    oof, folds = leave_one_group_out(ds, groups, cfg, balance_groups, k)
    summary = summarise(ds, groups, oof)
    summary.update(folds=folds, config=asdict(cfg), group_by=group_by, balance_groups=balance_groups,
                   k=k or len(set(groups.tolist())),
                   seconds=round(time.perf_counter() - t0, 1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "loeo.json").write_text(json.dumps(summary, indent=1, default=float))
    np.savez_compressed(out / "loeo_scores.npz", ids=ds.ids, y=ds.y, score=oof, group=groups)
    plot_group_fractions(summary["dead_fraction"], out / "dead_fraction.png",
                         f"{title or f'leave one {group_by} out'}: AUC {summary['auc']:.3f}")
    return summary
