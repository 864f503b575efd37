"""When to refit dose-response, and what to publish: the daemon's side of `dose/<plate>/<compound>`.

Fed every well message the daemon commits; returns the bodies of `dose` messages to publish with
them (the fitting itself is core/dose.py). A timepoint of a plate is fitted when it is complete:
every control and treated well of the plate map has all its fields (`plate.fields_per_well`), or
the acquisition has moved on (a later timepoint is complete; without fields_per_well, a later
timepoint has started): then the wells it imaged are what there is.
After that, a well of that timepoint that changes (a re-written file) refits it.
"""

from __future__ import annotations

from wellwatch.core.dose import WellReading, dose_response, reading_from_message
from wellwatch.core.plate_map import PlateMap
from wellwatch.core.stream_schema import envelope


def dose_topic(plate: str, compound: str) -> str:
    return f"dose/{plate}/{compound}"


class DosePublisher:
    def __init__(self, plate_map: PlateMap):
        self.plate_map = plate_map
        self.mapped = {w for w, c in plate_map.wells.items() if c.role in ("control", "treated")}
        self.readings: dict[str, dict[tuple[str, int], WellReading]] = {}  # plate -> (well, t) -> reading
        self.complete_flags: dict[tuple[str, int], dict[str, bool]] = {}   # (plate, t) -> well -> complete
        self.fitted: set[tuple[str, int]] = set()

    def observe(self, message: dict) -> list[tuple[int, dict]]:
        """A committed well message -> (timepoint, dose message body) for each fit now due."""
        plate, well, t = message["plate"], message["well"], message["timepoint"]
        if well not in self.mapped:
            return []
        self.readings.setdefault(plate, {})[(well, t)] = reading_from_message(message)
        self.complete_flags.setdefault((plate, t), {})[well] = bool(message.get("complete"))
        due = [t] if (plate, t) in self.fitted or self._complete(plate, t) else []
        # Earlier timepoints not fitted yet: without completeness (fields_per_well = 0) the first
        # message of a later timepoint closes them; with it, a later timepoint that is complete does
        # (frames are processed in parallel, so a later timepoint's first wells can come early).
        counted = message.get("fields_expected") is not None
        later = sorted(s for (p, s) in self.complete_flags if p == plate)
        due += [s for s in later if s < t and (plate, s) not in self.fitted
                and (not counted or any(self._complete(plate, u) for u in later if u > s))]
        return [(s, body) for s in sorted(set(due)) for body in self._fit(plate, s)]

    def _complete(self, plate: str, t: int) -> bool:
        flags = self.complete_flags.get((plate, t), {})
        return all(flags.get(w, False) for w in self.mapped)

    def _fit(self, plate: str, t: int) -> list[dict]:
        self.fitted.add((plate, t))
        readings = self.readings[plate]
        first = min(s for _, s in readings)
        bodies = []
        for compound in self.plate_map.compounds():
            body = dose_response(self.plate_map, compound, readings, t, first)
            if body["points"]:
                bodies.append(body)
        return bodies



def dose_message(seq: int, models: dict[str, str], plate: str, timepoint: int, body: dict,
                 source: str | None = None) -> tuple[str, dict]:
    """(topic, payload) of one dose message: the stream's envelope plus the fit results."""
    return dose_topic(plate, body["compound"]), envelope(seq, "dose", models, plate=plate, timepoint=timepoint,
                                                         source=source, **body)
