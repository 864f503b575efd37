"""Cell records: what a cell type looks like, one cell's fixed shape, one cell at one timepoint.

A cell's shape (orientation, outline wobble, nucleus placement) is drawn once and kept for the
whole time-lapse, so the same cell looks the same from frame to frame; only its state
(live/dead) and a tiny drift change over time.

Cell types: "A" is the original cell line (the default, single-type plate). "lmpp" and "prob"
are the two haematopoietic progenitors of the Ogawa et al. study: lymphoid-primed multipotent
progenitors are larger, more irregular and more granular; pro-B cells are smaller, rounder and
smoother, with a larger nucleus, and carry the B-lineage surface marker CD19 (bright in the
marker channel, where LMPPs are dim). Marker intensity per cell is log-normal around the
type's median, so the two types overlap a little on log intensity, as measured ones do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_HARMONICS = 4  # outline wobble: cos(k*theta) for k = 2..5
MAX_NUCLEOLI = 2


@dataclass(frozen=True)
class CellType:
    """Look of one cell line; another type only needs another entry in CELL_TYPES."""

    name: str
    live_radius: tuple[float, float]  # px at cell_scale 1 (default 512 px frames)
    dead_shrink: float                # dead radius = live radius * dead_shrink (dead cells round up)
    aspect: tuple[float, float]       # long/short axis ratio of live cells
    wobble: float                     # outline harmonic amplitude (fraction of radius)
    texture: float                    # granular interior texture (fraction of background)
    nucleus: float                    # nucleus radius / cell radius
    nucleoli: tuple[int, int]         # count range, inclusive
    marker: float = 80.0              # median marker-channel counts above background (CD19-like)
    marker_sd: float = 0.4            # log-normal spread of the marker (sd of ln counts)


CELL_TYPES: dict[str, CellType] = {
    "A": CellType("A", live_radius=(7.0, 11.0), dead_shrink=0.72, aspect=(1.1, 1.5),
                  wobble=0.05, texture=0.06, nucleus=0.45, nucleoli=(1, 2)),
    # LMPP: larger, irregular outline, granular interior, CD19-negative (dim marker). Sizes overlap
    # with pro-B (radii 7.5-9 px both), as in the cell-type study, where size alone (its SVM
    # baseline) separates the types worse than the CNN does.
    "lmpp": CellType("lmpp", live_radius=(7.5, 12.0), dead_shrink=0.72, aspect=(1.1, 1.4),
                     wobble=0.09, texture=0.12, nucleus=0.42, nucleoli=(2, 2),
                     marker=80.0, marker_sd=0.45),
    # Pro-B: small, round, smooth, high nucleus-to-cytoplasm ratio, CD19-positive (bright marker).
    "prob": CellType("prob", live_radius=(5.5, 9.0), dead_shrink=0.78, aspect=(1.0, 1.15),
                     wobble=0.02, texture=0.025, nucleus=0.6, nucleoli=(1, 1),
                     marker=600.0, marker_sd=0.45),
}


@dataclass(frozen=True)
class CellShape:
    """Per-cell shape parameters, fixed over the time-lapse."""

    aspect: float                                   # >= 1, area-preserving ellipse
    angle: float                                    # orientation, radians
    wobble_amp: tuple[float, ...]                   # N_HARMONICS amplitudes
    wobble_phase: tuple[float, ...]                 # N_HARMONICS phases
    nucleus_offset: tuple[float, float]             # (dx, dy) as a fraction of the radius
    nucleoli: tuple[tuple[float, float], ...]       # (dx, dy) as a fraction of the nucleus radius
    pi_amp: float                                   # PI counts of the nucleus once dead
    pi_leak: float                                  # PI counts of the nucleus while live
    marker_amp: float = 0.0                         # marker counts of the cell body (surface stain)


@dataclass(frozen=True)
class Cell:
    """One cell in one frame: the ground truth record plus what rendering needs."""

    cell_id: int
    x: float          # column, px
    y: float          # row, px
    radius: float     # current radius, px (smaller once dead)
    state: str        # "live" or "dead"
    type: str         # key of CELL_TYPES
    shape: CellShape

    @property
    def dead(self) -> bool:
        return self.state == "dead"


def random_shapes(rng: np.random.Generator, cell_type: CellType, n: int) -> list[CellShape]:
    """Draw n shapes of one type (vectorised draws, then one record per cell)."""
    aspect = rng.uniform(*cell_type.aspect, n)
    angle = rng.uniform(0.0, np.pi, n)
    amp = np.abs(rng.normal(0.0, cell_type.wobble, (n, N_HARMONICS)))
    amp /= np.arange(1, N_HARMONICS + 1)  # higher harmonics weaker: wobbly, not spiky
    phase = rng.uniform(0.0, 2 * np.pi, (n, N_HARMONICS))
    noff = rng.uniform(-0.15, 0.15, (n, 2))
    n_nucleoli = rng.integers(cell_type.nucleoli[0], cell_type.nucleoli[1] + 1, n)
    nol = rng.uniform(-0.45, 0.45, (n, MAX_NUCLEOLI, 2))
    pi_amp = rng.uniform(1500.0, 2500.0, n)
    pi_leak = rng.uniform(0.0, 8.0, n)
    return [
        CellShape(
            aspect=float(aspect[i]), angle=float(angle[i]),
            wobble_amp=tuple(amp[i].tolist()), wobble_phase=tuple(phase[i].tolist()),
            nucleus_offset=(float(noff[i, 0]), float(noff[i, 1])),
            nucleoli=tuple((float(a), float(b)) for a, b in nol[i, : n_nucleoli[i]]),
            pi_amp=float(pi_amp[i]), pi_leak=float(pi_leak[i]),
        )
        for i in range(n)
    ]


def marker_amplitudes(rng: np.random.Generator, types: list[str] | tuple[str, ...]) -> np.ndarray:
    """Per-cell marker counts: log-normal around each cell's type median (one draw per cell)."""
    z = rng.standard_normal(len(types))
    mu = np.array([np.log(CELL_TYPES[k].marker) for k in types], float).reshape(-1)
    sd = np.array([CELL_TYPES[k].marker_sd for k in types], float).reshape(-1)
    return np.exp(mu + sd * z)
