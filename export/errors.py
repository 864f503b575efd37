"""Export's typed errors (ParityError and DecisionError live in parity.py, with their reports)."""

from __future__ import annotations

from wellwatch.core.errors import WellwatchError


class ExportError(WellwatchError, RuntimeError):
    """An export cannot be made (bad checkpoint, unusable inputs); the message says why."""


class ManifestError(WellwatchError, ValueError):
    """A model file does not match its manifest, or the manifest is missing or unreadable."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")
