"""What to simulate: one frozen, validated description of a fake acquisition."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from wellwatch.core.errors import ConfigError, NamingError
from wellwatch.core.plate import PLATE_FORMATS, PlateFormat, all_wells, normalise_well
from wellwatch.core.validation import between, check_fields, choice

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
    plate_format: int = field(default=96, metadata=choice(*SIM_PLATE_FORMATS))
    wells: tuple[str, ...] = ()      # empty: the first 12 wells, row-major (row A of a 96 plate)
    fields: int = field(default=2, metadata=between(1))         # per well, numbered from 1
    timepoints: int = field(default=3, metadata=between(1))     # numbered from 0
    interval_s: float = field(default=0.0, metadata=between(0.0))   # pause between consecutive fields, s
    size: int = field(default=512, metadata=between(32, 16384))  # frame edge, px
    cells_per_field: float = field(default=40.0, metadata=between(0.0))  # Poisson mean
    channels: tuple[str, ...] = ("BF", "PI")
    naming: str = field(default="scanr", metadata=choice(*NAMINGS))
    write_mode: str = field(default="direct", metadata=choice(*WRITE_MODES))
    chunk_pause_s: float = field(default=0.02, metadata=between(0.0))
    plate_name: str = "plate1"
    treatment: str = field(default="none", metadata=choice(*TREATMENTS))
    seed: int = field(default=0, metadata=between(0))
    # cell size factor: 1 gives radii ~7-11 px (live)
    cell_scale: float = field(default=1.0, metadata=between(0.1, 20.0))
    cell_types: tuple[str, ...] = ()  # empty: one cell line ("A"), as before; e.g. ("lmpp", "prob")
    # "none": every well type_fraction; "series": varies by well
    type_mix: str = field(default="none", metadata=choice(*TYPE_MIXES))
    # fraction of the first of cell_types (the rest share the remainder)
    type_fraction: float = field(default=0.5, metadata=between(0.0, 1.0))
    # 'dose_series': the leftmost N columns of the wells get no drug
    control_columns: int = field(default=0, metadata=between(0))
    # untreated cells double this many times over the run (0: no growth)
    growth_doublings: float = field(default=0.0, metadata=between(0.0, 4.0))

    def __post_init__(self) -> None:
        """Each field's type, choices and range (core/validation.py, as config.toml's), then the rules
        between fields; the lists become tuples."""
        def check(key: str, ok: bool, value: Any, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"simulate.{key}", value, allowed)

        check_fields(self, "simulate.", skip=("wells", "channels", "cell_types"))
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
        cell_types = tuple(self.cell_types)
        check("cell_types", len(set(cell_types)) == len(cell_types), list(cell_types),
              "each cell type at most once")
        for name in cell_types:
            check("cell_types", name in CELL_TYPES, name,
                  f"allowed: {', '.join(CELL_TYPES)}")
        object.__setattr__(self, "cell_types", cell_types)
        check("type_mix", self.type_mix == "none" or len(cell_types) >= 2, self.type_mix,
              "'series' needs two or more cell_types")
        check("control_columns", self.control_columns == 0 or self.treatment == "dose_series",
              self.control_columns, "control columns need treatment 'dose_series'")
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
