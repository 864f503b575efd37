"""ONNX Runtime on the CPU: its idle threads sleep between runs unless inference.spin_wait."""

from __future__ import annotations

import pytest

from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.core.config import InferenceConfig
from wellwatch.core.bundled_models import bundled_demo_model

pytestmark = pytest.mark.unit


def allow_spinning(cfg: InferenceConfig) -> str | None:
    options = OnnxBackend(bundled_demo_model(), inference=cfg).session.get_session_options()
    try:
        return options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set: ONNX Runtime's default, which spins
        return None


def test_threads_sleep_between_runs_by_default_and_spin_only_when_asked():
    assert allow_spinning(InferenceConfig(device="cpu", warmup=False)) == "0"
    assert allow_spinning(InferenceConfig(device="cpu", warmup=False, spin_wait=True)) is None
