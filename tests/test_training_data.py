"""Synthetic data generators for the training tests (they return data and the expected answer)."""

from __future__ import annotations

import numpy as np

from wellwatch.core.contract import EmptyFilter, Normalisation, Tiling
from wellwatch.training.dataset import Dataset, contract_fields


def blob_crops(n: int = 240, size: int = 32, groups: int = 24, seed: int = 0, noise: float = 0.6):
    """(x (n,1,size,size) float32, y (n,) 0 live / 1 dead, group ids): live cells are large dim discs,
    dead cells small bright ones; position jitters; the label is learnable from the image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    y = rng.integers(0, 2, n)
    x = rng.normal(0, noise, (n, 1, size, size)).astype(np.float32)
    for i in range(n):
        cy, cx = size / 2 + rng.normal(0, 2, 2)
        r = rng.uniform(4, 6) * size / 32 if y[i] else rng.uniform(9, 12) * size / 32
        amp = 3.0 if y[i] else 1.5
        x[i, 0] += amp * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
    g = np.array([f"img{k % groups:03d}" for k in range(n)])
    return x, y.astype(np.int64), g


def blob_dataset(n: int = 240, size: int = 32, groups: int = 24, seed: int = 0, kind: str = "crops") -> Dataset:
    x, y, g = blob_crops(n, size, groups, seed)
    meta = {"kind": kind, "task": "live_dead", "positive_class": "dead", "channels": ["brightfield"],
            **contract_fields(Normalisation("robust_zscore", {}), Tiling(size, size), EmptyFilter("none", {}))}
    ids = np.array([f"{s}#{i}" for i, s in enumerate(g)])
    fluo = np.where(y == 1, 200.0, 100.0) + np.random.default_rng(seed).normal(0, 10, n)
    return Dataset(x, y, ids, g, np.array(["A1"] * n), np.array(["p1"] * n), ("live", "dead"), meta,
                   fluo.astype(np.float32))
