"""The cells of one field: placed once, then followed through the time-lapse."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np

from .cells import CELL_TYPES, Cell, CellShape, marker_amplitudes, random_shapes
from .response import death_timepoints

CANDIDATES_PER_CELL = 64   # rejection-sampling tries before a cell is left out of a crowded field
DRIFT_SIGMA = 0.3          # px per timepoint at cell_scale 1: cells creep, they do not jump


@dataclass(frozen=True)
class FieldPopulation:
    size: int
    x0: np.ndarray           # (N,) column at t=0
    y0: np.ndarray           # (N,) row at t=0
    drift: np.ndarray        # (N, 2) px per timepoint (x, y)
    live_radius: np.ndarray  # (N,)
    types: tuple[str, ...]
    shapes: tuple[CellShape, ...]
    death_t: np.ndarray      # (N,) first dead timepoint; >= the run's timepoints: never
    birth_t: np.ndarray | None = None  # (N,) first timepoint the cell is there; None: all from t=0

    def __len__(self) -> int:
        return len(self.x0)

    def dead_at(self, t: int) -> np.ndarray:
        return self.death_t <= t

    def cells_at(self, t: int) -> list[Cell]:
        dead = self.dead_at(t)
        born = np.ones(len(self), bool) if self.birth_t is None else self.birth_t <= t
        moving = np.minimum(t, self.death_t)[:, None]  # dead cells stop drifting
        pos = np.clip(np.stack([self.x0, self.y0], 1) + self.drift * moving, 0, self.size - 1)
        shrink = np.array([CELL_TYPES[k].dead_shrink for k in self.types])
        radius = np.where(dead, self.live_radius * shrink, self.live_radius)
        return [Cell(cell_id=i, x=float(pos[i, 0]), y=float(pos[i, 1]), radius=float(radius[i]),
                     state="dead" if dead[i] else "live", type=self.types[i], shape=self.shapes[i])
                for i in range(len(self)) if born[i]]


def place(rng: np.random.Generator, radii: np.ndarray, size: int, scale: float) -> np.ndarray:
    """Positions (N, 2) for cells of the given radii without heavy overlap; NaN rows for cells
    that found no room. The draw count is fixed per cell, so results depend only on the seed."""
    pos = np.full((len(radii), 2), np.nan)
    reach = radii * 1.25 + 2.0 * scale          # semi-major axis plus halo
    for i in np.argsort(-radii, kind="stable"):  # big cells first pack better
        lo, hi = reach[i], size - reach[i]
        cand = rng.uniform(lo, max(lo, hi), (CANDIDATES_PER_CELL, 2))
        placed = ~np.isnan(pos[:, 0])
        if placed.any():
            dist = np.linalg.norm(cand[:, None, :] - pos[None, placed, :], axis=2)
            ok = np.all(dist >= reach[i] + reach[placed][None, :], axis=1)
        else:
            ok = np.ones(len(cand), bool)
        if hi > lo and ok.any():
            pos[i] = cand[np.argmax(ok)]
    return pos


def populate(rng: np.random.Generator, size: int, mean_cells: float, timepoints: int,
             dose: float, scale: float = 1.0,
             cell_types: Mapping[str, float] | None = None,
             growth_doublings: float = 0.0) -> FieldPopulation:
    """Draw one field's cells: count (Poisson), types, sizes, positions, shapes, death times,
    marker intensities. `cell_types` maps type name -> expected fraction (default: all "A").

    The marker draws come last, so adding them left every earlier draw (and so every frame of
    a plate without a marker channel) as it was; birth times (growth) come after them.

    Growth: the field holds every cell that will ever be there (Poisson mean
    mean_cells * 2**growth_doublings, placed at the start); each appears at its birth timepoint,
    drawn so that mean_cells * 2**(growth_doublings * t / (timepoints - 1)) cells are there at t.
    A cell's death draw is independent of its birth, so a fraction F(t) of the cells present at
    t are dead, as without growth (a cell born after its death time appears dead)."""
    mix = dict(cell_types or {"A": 1.0})
    if growth_doublings > 0:
        mean_cells = mean_cells * 2.0 ** growth_doublings
    names = sorted(mix)
    weights = np.array([mix[k] for k in names], float)
    n = int(rng.poisson(mean_cells))
    types = [names[k] for k in rng.choice(len(names), n, p=weights / weights.sum())]
    radii = np.array([rng.uniform(*CELL_TYPES[k].live_radius) for k in types]) * scale
    pos = place(rng, radii.reshape(-1), size, scale)
    keep = ~np.isnan(pos[:, 0]) if n else np.zeros(0, bool)
    types = [k for k, kept in zip(types, keep) if kept]
    radii, pos = radii.reshape(-1)[keep], pos[keep]
    n = len(types)
    shapes: list[CellShape | None] = [None] * n
    for name in names:  # shapes drawn per type, in a fixed order, then put back in cell order
        idx = [i for i, k in enumerate(types) if k == name]
        for i, shape in zip(idx, random_shapes(rng, CELL_TYPES[name], len(idx))):
            shapes[i] = shape
    u = rng.uniform(size=n)
    drift = rng.normal(0.0, DRIFT_SIGMA * scale, (n, 2))
    marker = marker_amplitudes(rng, types)
    shapes = [replace(sh, marker_amp=float(m)) for sh, m in zip(shapes, marker)]  # type: ignore[type-var]
    birth = birth_timepoints(rng, n, timepoints, growth_doublings) if growth_doublings > 0 else None
    return FieldPopulation(size=size, x0=pos[:, 0], y0=pos[:, 1], drift=drift, live_radius=radii,
                           types=tuple(types), shapes=tuple(shapes),  # type: ignore[arg-type]
                           death_t=death_timepoints(u, timepoints, dose), birth_t=birth)


def birth_timepoints(rng: np.random.Generator, n: int, timepoints: int, doublings: float) -> np.ndarray:
    """First timepoint of each cell: P(born by t) = 2**(doublings * (t / (T - 1) - 1))."""
    v = rng.uniform(0.0, 2.0 ** doublings, n)
    if timepoints <= 1:
        return np.zeros(n, int)
    rate = doublings / (timepoints - 1)  # doublings per timepoint
    with np.errstate(divide="ignore"):
        return np.clip(np.ceil(np.log2(v) / rate - 1e-9), 0, timepoints - 1).astype(int)
