"""The networks served together, by slot: built once at start-up and passed around as one object."""

from __future__ import annotations

from dataclasses import dataclass

from wellwatch.core.contract import ModelContract
from wellwatch.core.inference.backend import InferenceBackend


@dataclass(frozen=True)
class Models:
    """live_dead: the tile classifier (always); segmentation: a network that finds cells; cell_type
    and cell_live_dead: classifiers of single-cell crops. None where a slot is not used."""
    live_dead: InferenceBackend
    segmentation: InferenceBackend | None = None
    cell_type: InferenceBackend | None = None
    cell_live_dead: InferenceBackend | None = None

    def crop_models(self) -> dict[str, InferenceBackend]:
        """The crop classifiers in use, by slot: each cell's crop goes to all of them."""
        return {slot: m for slot, m in (("cell_type", self.cell_type), ("cell_live_dead", self.cell_live_dead))
                if m is not None}

    def contract(self, slot: str) -> ModelContract | None:
        """A slot's model contract; None when the slot is empty."""
        backend = getattr(self, slot)
        return backend.contract if backend is not None else None
