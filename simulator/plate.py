"""A simulated plate: doses and cell-type mix per well, the cells of every field, and frames in
acquisition order.

Every random draw is keyed by (seed, well index, field[, timepoint]), not by the order of the
run: a field looks the same whichever other wells are simulated with it (except that a
'dose_series' or a type_mix 'series' spreads its doses or type fractions over the wells listed),
and the cells (and so the ground truth) are known before a single frame is rendered.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Iterator

import numpy as np

from wellwatch.core.naming import FrameMeta
from wellwatch.core.plate import parse_well, well_index

from .cells import Cell
from .population import FieldPopulation, populate
from .render import flat_field, render_field
from .response import dose_series
from .spec import TYPE_FRACTION_RANGE, SimulationSpec

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

    def type_counts(self, types: tuple[str, ...] | list[str]) -> dict[str, int]:
        """Cells per type (live and dead), in the order given; zero for a type not present."""
        return count_types(self.cells, types)


def count_types(cells: list[Cell], types: tuple[str, ...] | list[str]) -> dict[str, int]:
    counts = {t: 0 for t in types}
    for c in cells:
        counts[c.type] = counts.get(c.type, 0) + 1
    return counts


@dataclass(frozen=True)
class PlatePlan:
    spec: SimulationSpec
    doses: dict[str, float]                             # well -> dose (0 without treatment)
    populations: dict[tuple[str, int], FieldPopulation]  # (well, field) -> cells
    type_mix: dict[str, dict[str, float]] = dc_field(default_factory=dict)  # well -> type -> fraction

    def cells(self, well: str, field: int, timepoint: int) -> list[Cell]:
        return self.populations[(well, field)].cells_at(timepoint)


def well_doses(spec: SimulationSpec) -> dict[str, float]:
    """'dose_series': log-spaced doses across the simulated wells' columns, lowest at the
    leftmost column; every row of a column gets the same dose (replicates). The leftmost
    `control_columns` columns get none (vehicle controls)."""
    if spec.treatment == "none":
        return {w: 0.0 for w in spec.wells}
    cols = {w: parse_well(w, spec.plate)[1] for w in spec.wells}
    ordered = sorted(set(cols.values()))
    controls, treated = ordered[:spec.control_columns], ordered[spec.control_columns:]
    doses = {c: 0.0 for c in controls} | dict(zip(treated, dose_series(len(treated))))
    return {w: doses[cols[w]] for w in spec.wells}


def well_type_mix(spec: SimulationSpec) -> dict[str, dict[str, float]]:
    """Expected fraction of each cell type per well; empty for a plate without cell_types.

    The first of spec.cell_types gets type_fraction ('none') or a fraction running linearly over
    TYPE_FRACTION_RANGE across the simulated wells in the order listed ('series'; row-major by
    default); the other types share the remainder equally."""
    types = spec.cell_types
    if not types:
        return {}
    if spec.type_mix == "series" and len(spec.wells) > 1:
        firsts = np.linspace(*TYPE_FRACTION_RANGE, len(spec.wells)).tolist()
    else:
        firsts = [float(spec.type_fraction)] * len(spec.wells)
    if len(types) == 1:
        return {w: {types[0]: 1.0} for w in spec.wells}
    return {w: {t: first if i == 0 else (1.0 - first) / (len(types) - 1)
                for i, t in enumerate(types)}
            for w, first in zip(spec.wells, firsts)}


def _rng(spec: SimulationSpec, *key: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, *key])


def plan_plate(spec: SimulationSpec) -> PlatePlan:
    doses = well_doses(spec)
    mixes = well_type_mix(spec)
    pops = {}
    for well in spec.wells:
        wi = well_index(well, spec.plate)
        for f in range(1, spec.fields + 1):
            pops[(well, f)] = populate(_rng(spec, _POPULATION, wi, f), spec.size,
                                       spec.cells_per_field, spec.timepoints, doses[well],
                                       spec.cell_scale, mixes.get(well), spec.growth_doublings)
    return PlatePlan(spec, doses, pops, mixes)


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
