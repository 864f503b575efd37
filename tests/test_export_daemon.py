"""Exported models in the daemon: real-image inference equals PyTorch, refusals name file and problem,
and every published message carries the model file's sha256."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from wellwatch.core.inference.backend import OnnxBackend  # noqa: E402
from wellwatch.core.contract import METADATA_KEY, EmptyFilter, Tiling, file_sha256  # noqa: E402
from wellwatch.core.errors import ContractError, StartupError  # noqa: E402
from wellwatch.core.preprocess import prepare_tiles  # noqa: E402
from wellwatch.core.files.tiff import read_frame  # noqa: E402
from wellwatch.daemon.service import Daemon  # noqa: E402
from wellwatch.training.checkpoint_export import export_checkpoint  # noqa: E402
from wellwatch.harness import local_config  # noqa: E402
from wellwatch.simulator.spec import SimulationSpec  # noqa: E402
from wellwatch.simulator.writer import write_plate  # noqa: E402
from wellwatch.training.checkpoint import load_checkpoint  # noqa: E402

from .conftest import shared_data  # noqa: E402
from .test_export import NO_IMAGES, altered, make_checkpoint, tiny_contract  # noqa: E402


def plate() -> SimulationSpec:
    return SimulationSpec(wells=("A1", "A2"), fields=1, timepoints=1, size=128, cells_per_field=6, channels=("BF",),
                          plate_name="exp", seed=3, write_mode="rename")


def exported_model(tmp_path, name: str = "m", **contract_changes):
    ckpt = make_checkpoint(tmp_path / f"{name}.pt", tiny_contract(name=name, **contract_changes))
    return export_checkpoint(ckpt, tmp_path / f"{name}.onnx", parity_images=NO_IMAGES), ckpt


@pytest.mark.unit
def test_real_image_through_the_daemon_backend_equals_pytorch(tmp_path):
    """The acceptance check: a real frame, the daemon's preprocessing and ONNX Runtime session,
    against the PyTorch model on the same patches."""
    image = read_frame(str(shared_data("usiigaci-phase", "set1", "raw.tif")))
    result, ckpt = exported_model(tmp_path, height=64, width=64, tiling=Tiling(64, 64),
                                  empty_filter=EmptyFilter("std", {"threshold": 0.5}))
    backend = OnnxBackend(result.path, device="cpu", max_batch=64)
    patches, origins, empty = prepare_tiles([image], backend.contract)
    assert len(patches) >= 100 and len(origins) == 15 * 16
    served = backend.infer(patches)
    model, _, _, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(patches)), 1).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=1e-4)
    # the decisions the daemon would count are the same, too
    assert ((served[:, 1] >= 0.5) == (expected[:, 1] >= 0.5)).all()


@pytest.mark.unit
def test_daemon_refuses_a_cell_type_model_in_the_live_dead_slot(tmp_path):
    result, _ = exported_model(tmp_path, name="celltype", task="cell_type", classes=("lmpp", "prob"),
                               positive_class="prob", tiling=None, empty_filter=EmptyFilter("none"))
    config = local_config(tmp_path, plate(), model=str(result.path))
    with pytest.raises(StartupError) as e:
        Daemon(config)
    assert str(result.path) in str(e.value) and "task is 'cell_type', not 'live_dead'" in str(e.value)


@pytest.mark.unit
def test_daemon_refuses_a_model_whose_channels_do_not_match_the_config(tmp_path):
    result, _ = exported_model(tmp_path, name="twochannel", channels=("brightfield", "dic"))
    config = local_config(tmp_path, plate(), model=str(result.path))  # channels.label_free = BF: one channel
    with pytest.raises(StartupError) as e:
        Daemon(config)
    message = str(e.value)
    assert "channels.label_free ['BF'] gives 1 channel(s)" in message
    assert f"model {result.path} ('twochannel') expects 2 (brightfield, dic)" in message


@pytest.mark.unit
def test_daemon_refuses_models_without_a_contract_or_with_a_graph_that_contradicts_it(tmp_path):
    result, _ = exported_model(tmp_path)
    bare = altered(result.path, tmp_path / "bare.onnx", lambda p: p.metadata_props.__delitem__(slice(None)))
    with pytest.raises(ContractError, match="has no wellwatch model contract") as e:
        OnnxBackend(bare, device="cpu", warmup=False)
    assert e.value.path == str(bare)

    def claim_64px(proto):
        entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
        entry.value = tiny_contract(height=64, width=64, tiling=Tiling(64, 64)).to_json()

    lying = altered(result.path, tmp_path / "lying.onnx", claim_64px)
    with pytest.raises(ContractError, match=r"graph input shape \['batch', 1, 32, 32\] does not match") as e:
        Daemon(local_config(tmp_path, plate(), model=str(lying)))
    assert e.value.path == str(lying)


@pytest.mark.integration
def test_every_published_message_carries_the_model_sha256(tmp_path, recorder_for):
    from wellwatch.harness import start_daemon

    result, _ = exported_model(tmp_path, name="streamed", height=64, width=64, tiling=Tiling(64, 64))
    spec = plate()
    config = local_config(tmp_path, spec, model=str(result.path))
    running = start_daemon(config)
    try:
        rec = recorder_for(config)
        write_plate(spec, tmp_path / "acquisition")
        rec.wait_frames(2, timeout=60)
        time.sleep(0.3)
    finally:
        assert running.stop() == 0
    assert rec.of_type("frame") and rec.of_type("well")
    sha = file_sha256(result.path)
    assert sha == result.sha256
    assert all(m["models"] == {"streamed": sha} for m in rec.updates)
    assert rec.snapshots and all(w["models"] == {"streamed": sha} for w in rec.snapshots[-1]["wells"])
