"""What every vendor layout reader returns: the expected acquisition (PlateLayout) or a LayoutError."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wellwatch.core.errors import WellwatchError


class LayoutError(WellwatchError, ValueError):
    """A vendor layout file exists but cannot be read; the message names the file and what is wrong."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"plate layout {path}: {reason}")


@dataclass(frozen=True)
class PlateLayout:
    """Expected acquisition: wells, their fields, channels, timepoints and z planes.

    `fields` maps each expected well to its field indices (as the file names number them);
    `channels` are channel ids as they appear in the file names (e.g. "1" for ImageXpress w1),
    `channel_names` what the software calls them ("DAPI"). `pixel_size_um` is the image pixel
    size in micrometres (None when the file does not say): the segmentation rescales with it.
    """

    vendor: str
    source: str
    rows: int
    cols: int
    fields: dict[str, tuple[int, ...]]
    channels: tuple[str, ...]
    timepoints: tuple[int, ...]
    z_planes: tuple[int, ...] = (0,)
    channel_names: dict[str, str] = field(default_factory=dict)
    pixel_size_um: float | None = None
    plate: str | None = None  # the plate's name as its frames carry it (None: the daemon's plate name)

    @property
    def wells(self) -> tuple[str, ...]:
        return tuple(self.fields)

    def fields_expected(self, well: str) -> int:
        """Images of one channel expected per well and timepoint: fields x z planes (0 = not in the layout)."""
        return len(self.fields.get(well, ())) * len(self.z_planes)

    def summary(self) -> dict:
        """What the daemon announces at start (status/plate) and logs."""
        return {"vendor": self.vendor, "source": self.source, "plate": self.plate,
                "plate_format": self.rows * self.cols,
                "wells": list(self.wells), "fields": {w: len(f) for w, f in self.fields.items()},
                "channels": list(self.channels), "channel_names": self.channel_names,
                "timepoints": list(self.timepoints), "z_planes": len(self.z_planes),
                "pixel_size_um": self.pixel_size_um}
