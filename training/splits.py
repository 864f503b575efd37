"""Splits grouped by source, so patches of one raw image never sit on both sides.

k-fold is scikit-learn's GroupKFold; the train/validation/test split by fractions has no
scikit-learn counterpart (GroupShuffleSplit cuts two ways), so it is the few lines below."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupKFold


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
    """k boolean test masks; every group is in exactly one (scikit-learn's GroupKFold, groups
    shuffled by seed and dealt into k folds of as many groups each)."""
    g = np.asarray(groups).astype(str)
    n_groups = len(np.unique(g))
    if k < 2 or k > n_groups:
        raise ValueError(f"{k}-fold cross-validation needs 2..{n_groups} folds ({n_groups} groups)")
    folds = []
    for _, test in GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(g, groups=g):
        mask = np.zeros(len(g), bool)
        mask[test] = True
        folds.append(mask)
    return folds
