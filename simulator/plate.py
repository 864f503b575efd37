"""A simulated plate: doses per well, the cells of every field, and frames in acquisition order.

Every random draw is keyed by (seed, well index, field[, timepoint]), not by the order of the
run: a field looks the same whichever other wells are simulated with it, and the cells (and
so the ground truth) are known before a single frame is rendered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from wellwatch.daemon.naming import FrameMeta
from wellwatch.daemon.plate import parse_well, well_index

from .cells import Cell
from .population import FieldPopulation, populate
from .render import flat_field, render_field
from .response import dose_series
from .spec import SimulationSpec

_POPULATION, _RENDER = 0, 1  # stream tags so population and noise draws never collide


@dataclass(frozen=True)
class FieldFrame:
    """One field at one timepoint: identity, images per channel, and its cells."""

    plate: str
    well: str
    well_index: int          # scanR W block: 1-based, row-major over the plate
    field: int               # 1-based
    timepoint: int           # 0-based
    dose: float
    images: dict[str, np.ndarray]
    cells: list[Cell]

    def meta(self, channel: str) -> FrameMeta:
        return FrameMeta(self.plate, self.well, self.field, self.timepoint, 0, channel)

    @property
    def live(self) -> int:
        return sum(not c.dead for c in self.cells)

    @property
    def dead(self) -> int:
        return sum(c.dead for c in self.cells)


@dataclass(frozen=True)
class PlatePlan:
    spec: SimulationSpec
    doses: dict[str, float]                             # well -> dose (0 without treatment)
    populations: dict[tuple[str, int], FieldPopulation]  # (well, field) -> cells

    def cells(self, well: str, field: int, timepoint: int) -> list[Cell]:
        return self.populations[(well, field)].cells_at(timepoint)


def well_doses(spec: SimulationSpec) -> dict[str, float]:
    """'dose_series': log-spaced doses across the simulated wells' columns, lowest at the
    leftmost column; every row of a column gets the same dose (replicates)."""
    if spec.treatment == "none":
        return {w: 0.0 for w in spec.wells}
    cols = {w: parse_well(w, spec.plate)[1] for w in spec.wells}
    rank = {c: i for i, c in enumerate(sorted(set(cols.values())))}
    doses = dose_series(len(rank))
    return {w: doses[rank[cols[w]]] for w in spec.wells}


def _rng(spec: SimulationSpec, *key: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, *key])


def plan_plate(spec: SimulationSpec) -> PlatePlan:
    doses = well_doses(spec)
    pops = {}
    for well in spec.wells:
        wi = well_index(well, spec.plate)
        for f in range(1, spec.fields + 1):
            pops[(well, f)] = populate(_rng(spec, _POPULATION, wi, f), spec.size,
                                       spec.cells_per_field, spec.timepoints, doses[well],
                                       spec.cell_scale)
    return PlatePlan(spec, doses, pops)


def iter_fields(spec: SimulationSpec, plan: PlatePlan | None = None) -> Iterator[FieldFrame]:
    """Render fields in acquisition order: timepoint-major, then well (as listed), then field."""
    plan = plan or plan_plate(spec)
    flat = flat_field(spec.size)  # same optics for every field
    for t in range(spec.timepoints):
        for well in spec.wells:
            wi = well_index(well, spec.plate)
            for f in range(1, spec.fields + 1):
                cells = plan.cells(well, f, t)
                images = render_field(cells, spec.size, _rng(spec, _RENDER, wi, f, t),
                                      spec.channels, spec.cell_scale, flat)
                yield FieldFrame(spec.plate_name, well, wi, f, t, plan.doses[well], images, cells)
