"""Splits grouped by source, so patches of one raw image never sit on both sides."""

from __future__ import annotations

import numpy as np


def grouped_split(groups: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Boolean masks, one per fraction, assigning whole groups (shuffled by seed)."""
    unique = np.array(sorted(set(groups.tolist())), dtype=object)
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    bounds = np.round(np.cumsum((0.0,) + tuple(fractions)) / sum(fractions) * len(unique)).astype(int)
    masks = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        masks.append(np.isin(groups, unique[lo:hi]))
    return masks


def grouped_kfold(groups: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """k boolean test masks; every group is in exactly one (groups shuffled by seed, dealt round-robin
    by size, largest first, so the folds hold similar numbers of patches)."""
    unique, counts = np.unique(np.asarray(groups).astype(str), return_counts=True)
    if k < 2 or k > len(unique):
        raise ValueError(f"{k}-fold cross-validation needs 2..{len(unique)} folds ({len(unique)} groups)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    order = order[np.argsort(-counts[order], kind="stable")]
    fold_of = {unique[j]: i % k for i, j in enumerate(order)}
    g = np.asarray(groups).astype(str)
    return [np.array([fold_of[x] == f for x in g]) for f in range(k)]
