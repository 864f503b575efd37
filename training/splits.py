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
