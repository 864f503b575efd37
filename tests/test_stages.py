"""The frame path's shape: stage modules that import no other stage, frozen messages between them,
a name parsed once at the gate, one scoring function for the daemon and reprocessing, and the
inference stage driven without threads on the bundled model."""

from __future__ import annotations

import ast
import dataclasses
import queue
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from wellwatch.core import scoring
from wellwatch.core.files.nd2 import Nd2Tracker
from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.core.inference.models import Models
from wellwatch.core.model_inputs import prepare_frame
from wellwatch.core.naming import FrameMeta
from wellwatch.daemon import messages
from wellwatch.daemon.context import StageContext
from wellwatch.daemon.ledger import FrameLedger
from wellwatch.daemon.metrics import DaemonMetrics
from wellwatch.core.bundled_models import bundled_demo_model
from wellwatch.daemon.settle_gate import CompletenessGate
from wellwatch.daemon.stages import commit
from wellwatch.daemon.stages.infer import InferenceStage
from wellwatch.harness import local_config
from wellwatch.scale import stages as reprocess_stages
from wellwatch.simulator.plate import iter_fields
from wellwatch.simulator.spec import SimulationSpec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted((ROOT / "daemon" / "stages").glob("*.py"))


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_stage_imports_another_stage_or_the_pipeline():
    assert {p.stem for p in STAGES} == {"__init__", "gate", "read", "infer", "commit", "publish"}
    offenders = {p.name: sorted(m for m in imports_of(p)
                                if m.startswith("wellwatch.daemon.stages") or m == "wellwatch.daemon.pipeline")
                 for p in STAGES}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_message_is_frozen():
    classes = [c for c in vars(messages).values() if dataclasses.is_dataclass(c) and c.__module__ == messages.__name__]
    assert {c.__name__ for c in classes} == {"FrameFile", "ReadFrame", "ScoredFrame", "FailedFrame", "LayoutEvent",
                                             "StatusEvent"}
    assert all(c.__dataclass_params__.frozen for c in classes)
    file = messages.FrameFile("/a/x.tif", "x.tif", FrameMeta("p", "A1", 1, 0, 0, "BF"), 10, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        file.attempt = 1


def test_the_daemon_and_reprocess_share_one_scoring_function():
    assert commit.frame_counts is scoring.frame_counts
    assert reprocess_stages.frame_counts is scoring.frame_counts
    daemon_modules = {m for m in imports_of(ROOT / "scale" / "stages.py") if m.startswith("wellwatch.daemon")}
    assert not {m for m in daemon_modules if m.startswith(("wellwatch.daemon.stages", "wellwatch.daemon.messages"))}


def test_the_gate_hands_back_the_name_parsed_at_the_first_offer(tmp_path):
    path = tmp_path / "a.tif"
    path.write_bytes(b"\x01" * 100)
    gate = CompletenessGate(settle_polls=2)
    gate.offer(str(path), renamed=True, meta="parsed at the first event")
    gate.offer(str(path), renamed=True, meta="a later event")  # the candidate keeps what it was offered with
    (ready,) = gate.poll()
    assert (ready.path, ready.size, ready.meta) == (str(path), 100, "parsed at the first event")


@pytest.fixture(scope="module")
def demo():
    return OnnxBackend(bundled_demo_model(), device="cpu", warmup=False)


def test_the_inference_stage_turns_read_frames_into_scored_frames(tmp_path, demo):
    spec = SimulationSpec(plate_name="p", wells=("A1",), fields=2, timepoints=1, size=256, seed=3)
    config = local_config(tmp_path, spec)
    ctx = StageContext(config, str(tmp_path), DaemonMetrics(CollectorRegistry()), FrameLedger(), Nd2Tracker())
    to_infer, to_commit = queue.Queue(), queue.Queue()
    stage = InferenceStage(ctx, Models(demo), to_infer, to_commit)
    reads = []
    for i, field in enumerate(iter_fields(spec)):
        file = messages.FrameFile(f"/a/{i}.tif", f"{i}.tif", FrameMeta("p", "A1", i + 1, 0, 0, "BF"), 10, 1)
        reads.append(messages.ReadFrame(file, f"sha{i}", prepare_frame(field.images["BF"], demo.contract), 0.0))
    for read in reads:
        stage.admit(read)
    stage.drain()  # both frames' patches share the batches; each frame leaves once all its tiles are scored
    scored = [to_commit.get_nowait() for _ in reads]
    assert to_commit.empty() and [s.file for s in scored] == [r.file for r in reads]
    for read, s in zip(reads, scored):
        p = read.prepared
        assert s.sha256 == read.sha256 and s.outputs.n_empty == p.n_empty
        assert s.outputs.tile_scores.shape == (len(p.tile_origins), len(demo.contract.classes))
        assert np.allclose(s.outputs.tile_scores, demo.infer(p.patches), atol=1e-5)  # the frame alone scores the same
        counts = scoring.frame_counts(s.outputs, demo.contract)
        assert counts.live + counts.dead == len(p.tile_origins) and counts.empty == p.n_empty
