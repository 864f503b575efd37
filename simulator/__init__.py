"""Fake microscope acquisitions: rendered BF/PI frames, written like a scope writes them, with
the answer (cells, live/dead counts, doses) alongside. Deterministic by seed."""

from .cells import CELL_TYPES, Cell, CellShape, CellType
from .plate import FieldFrame, PlatePlan, iter_fields, plan_plate, well_doses
from .render import flat_field, render_bf, render_field, render_pi
from .spec import SimulationSpec, parse_wells
from .writer import WriteSummary, frame_name, write_plate

__all__ = [
    "CELL_TYPES", "Cell", "CellShape", "CellType", "FieldFrame", "PlatePlan", "SimulationSpec",
    "WriteSummary", "flat_field", "frame_name", "iter_fields", "parse_wells", "plan_plate",
    "render_bf", "render_field", "render_pi", "well_doses", "write_plate",
]
