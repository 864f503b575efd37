"""What to simulate: one frozen, validated description of a fake acquisition."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from wellwatch.daemon.errors import ConfigError, NamingError
from wellwatch.daemon.plate import PLATE_FORMATS, PlateFormat, all_wells, normalise_well

from .render import channel_kind

NAMINGS = ("scanr", "nis")
WRITE_MODES = ("direct", "chunked", "rename")
TREATMENTS = ("none", "dose_series")
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
        check("seed", isinstance(self.seed, int) and self.seed >= 0, self.seed,
              "a non-negative integer")
        check("plate_name", bool(self.plate_name) and "/" not in self.plate_name
              and "\\" not in self.plate_name, self.plate_name, "a non-empty name without slashes")

    @property
    def plate(self) -> PlateFormat:
        return PLATE_FORMATS[self.plate_format]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["wells"], d["channels"] = list(self.wells), list(self.channels)
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
