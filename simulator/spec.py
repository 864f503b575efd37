"""What to simulate: one frozen, validated description of a fake acquisition."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from wellwatch.core.errors import ConfigError, NamingError
from wellwatch.core.plate import PLATE_FORMATS, PlateFormat, all_wells, normalise_well

from .cells import CELL_TYPES
from .render import channel_kind

NAMINGS = ("scanr", "nis")
WRITE_MODES = ("direct", "chunked", "rename", "preallocate")
TREATMENTS = ("none", "dose_series")
TYPE_MIXES = ("none", "series")
TYPE_FRACTION_RANGE = (0.1, 0.9)  # 'series': first type's fraction, first well to last
# Options added after the first release: left out of to_json() while at their defaults, so a
# default plate's ground_truth.json stays byte-identical to what earlier versions wrote.
_LATER_DEFAULTS = {"cell_types": [], "type_mix": "none", "type_fraction": 0.5,
                   "control_columns": 0, "growth_doublings": 0.0}
SIM_PLATE_FORMATS = (96, 384)
DEFAULT_WELL_COUNT = 12


@dataclass(frozen=True)
class SimulationSpec:
    plate_format: int = 96
    wells: tuple[str, ...] = ()      # empty: the first 12 wells, row-major (row A of a 96 plate)
    fields: int = 2                  # per well, numbered from 1
    timepoints: int = 3              # numbered from 0
    interval_s: float = 0.0          # pause between consecutive fields while writing
    size: int = 512                  # frame edge, px
    cells_per_field: float = 40.0    # Poisson mean
    channels: tuple[str, ...] = ("BF", "PI")
    naming: str = "scanr"
    write_mode: str = "direct"
    chunk_pause_s: float = 0.02
    plate_name: str = "plate1"
    treatment: str = "none"
    seed: int = 0
    cell_scale: float = 1.0          # cell size factor: 1 gives radii ~7-11 px (live)
    cell_types: tuple[str, ...] = ()  # empty: one cell line ("A"), as before; e.g. ("lmpp", "prob")
    type_mix: str = "none"           # "none": every well type_fraction; "series": varies by well
    type_fraction: float = 0.5       # fraction of the first of cell_types (the rest share the remainder)
    control_columns: int = 0         # 'dose_series': the leftmost N columns of the wells get no drug
    growth_doublings: float = 0.0    # untreated cells double this many times over the run (0: no growth)

    def __post_init__(self) -> None:
        def check(key: str, ok: bool, value: Any, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"simulate.{key}", value, allowed)

        check("plate_format", self.plate_format in SIM_PLATE_FORMATS, self.plate_format,
              f"allowed: {', '.join(map(str, SIM_PLATE_FORMATS))}")
        wells = tuple(self.wells) or tuple(all_wells(self.plate)[:DEFAULT_WELL_COUNT])
        try:
            wells = tuple(normalise_well(w, self.plate) for w in wells)
        except NamingError as e:
            raise ConfigError("simulate.wells", e.name,
                              f"{e.reason} (wells of a {self.plate_format}-well plate: "
                              f"A1..{all_wells(self.plate)[-1]})") from None
        check("wells", len(set(wells)) == len(wells), list(self.wells), "each well at most once")
        object.__setattr__(self, "wells", wells)
        channels = tuple(self.channels)
        check("channels", len(channels) > 0 and len(set(channels)) == len(channels),
              list(channels), "one or more distinct channel names")
        for ch in channels:
            try:
                channel_kind(ch)
            except ValueError as e:
                raise ConfigError("simulate.channels", ch, str(e)) from None
        object.__setattr__(self, "channels", channels)
        check("fields", self.fields >= 1, self.fields, "at least 1")
        check("timepoints", self.timepoints >= 1, self.timepoints, "at least 1")
        check("interval_s", self.interval_s >= 0, self.interval_s, "0 or more seconds")
        check("chunk_pause_s", self.chunk_pause_s >= 0, self.chunk_pause_s, "0 or more seconds")
        check("size", 32 <= self.size <= 16384, self.size, "32..16384 px")
        check("cells_per_field", self.cells_per_field >= 0, self.cells_per_field, "0 or more")
        check("cell_scale", 0.1 <= self.cell_scale <= 20, self.cell_scale, "0.1..20")
        check("naming", self.naming in NAMINGS, self.naming, f"allowed: {', '.join(NAMINGS)}")
        check("write_mode", self.write_mode in WRITE_MODES, self.write_mode,
              f"allowed: {', '.join(WRITE_MODES)}")
        check("treatment", self.treatment in TREATMENTS, self.treatment,
              f"allowed: {', '.join(TREATMENTS)}")
        cell_types = tuple(self.cell_types)
        check("cell_types", len(set(cell_types)) == len(cell_types), list(cell_types),
              "each cell type at most once")
        for name in cell_types:
            check("cell_types", name in CELL_TYPES, name,
                  f"allowed: {', '.join(CELL_TYPES)}")
        object.__setattr__(self, "cell_types", cell_types)
        check("type_mix", self.type_mix in TYPE_MIXES, self.type_mix,
              f"allowed: {', '.join(TYPE_MIXES)}")
        check("type_mix", self.type_mix == "none" or len(cell_types) >= 2, self.type_mix,
              "'series' needs two or more cell_types")
        check("type_fraction", isinstance(self.type_fraction, (int, float))
              and 0.0 <= self.type_fraction <= 1.0, self.type_fraction, "0..1")
        check("control_columns", isinstance(self.control_columns, int) and self.control_columns >= 0,
              self.control_columns, "a non-negative integer")
        check("control_columns", self.control_columns == 0 or self.treatment == "dose_series",
              self.control_columns, "control columns need treatment 'dose_series'")
        check("growth_doublings", isinstance(self.growth_doublings, (int, float))
              and 0.0 <= self.growth_doublings <= 4.0, self.growth_doublings, "0..4 doublings")
        check("seed", isinstance(self.seed, int) and self.seed >= 0, self.seed,
              "a non-negative integer")
        check("plate_name", bool(self.plate_name) and "/" not in self.plate_name
              and "\\" not in self.plate_name, self.plate_name, "a non-empty name without slashes")

    @property
    def plate(self) -> PlateFormat:
        return PLATE_FORMATS[self.plate_format]

    @property
    def typed(self) -> bool:
        """True when cell types were asked for: the ground truth then counts cells per type."""
        return bool(self.cell_types)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["wells"], d["channels"] = list(self.wells), list(self.channels)
        d["cell_types"] = list(self.cell_types)
        if all(d[k] == v for k, v in _LATER_DEFAULTS.items()):
            for k in _LATER_DEFAULTS:
                del d[k]
        return d


def parse_wells(text: str, plate_format: int) -> tuple[str, ...]:
    """CLI form: 'A1,A2', a count N (the first N wells row-major), or 'all'."""
    if plate_format not in PLATE_FORMATS:
        raise ConfigError("simulate.plate_format", plate_format, "a known plate format")
    wells = all_wells(PLATE_FORMATS[plate_format])
    text = text.strip()
    if text.lower() == "all":
        return tuple(wells)
    if text.isdigit():
        n = int(text)
        if not 1 <= n <= len(wells):
            raise ConfigError("simulate.wells", text, f"a count from 1 to {len(wells)}")
        return tuple(wells[:n])
    names: Sequence[str] = [w.strip() for w in text.split(",") if w.strip()]
    if not names:
        raise ConfigError("simulate.wells", text, "well names like A1,A2, a count, or 'all'")
    return tuple(names)
