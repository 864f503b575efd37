"""Fake microscope acquisitions: rendered BF/phase/DIC/PI/marker frames, written like a scope
writes them, with the answer (cells, live/dead and per-type counts, doses) alongside.
Deterministic by seed."""

from .cells import CELL_TYPES, Cell, CellShape, CellType
from .plate import FieldFrame, PlatePlan, iter_fields, plan_plate, well_doses, well_type_mix
from .render import (flat_field, render_bf, render_dic, render_field, render_marker, render_ph,
                     render_pi)
from .spec import SimulationSpec, parse_wells
from .writer import WriteSummary, frame_name, write_plate

__all__ = [
    "CELL_TYPES", "Cell", "CellShape", "CellType", "FieldFrame", "PlatePlan", "SimulationSpec",
    "WriteSummary", "flat_field", "frame_name", "iter_fields", "parse_wells", "plan_plate",
    "render_bf", "render_dic", "render_field", "render_marker", "render_ph", "render_pi",
    "well_doses", "well_type_mix", "write_plate",
]
