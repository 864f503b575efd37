"""Export: checkpoint -> ONNX with the contract, parity against PyTorch, float16, manifest, inspect.

Tiny models (a few training steps on 32 px patches), so every test takes well under a second or two.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from wellwatch.cli import main as wellwatch_main  # noqa: E402
from wellwatch.core.contract import (EmptyFilter, ModelContract, Normalisation, Tiling,  # noqa: E402
                                       contract_from_metadata, file_sha256)
from wellwatch.export import onnx_export  # noqa: E402
from wellwatch.export.errors import ExportError, ManifestError  # noqa: E402
from wellwatch.training.checkpoint_export import export_checkpoint  # noqa: E402
from wellwatch.export.inspect_model import format_info, inspect_model  # noqa: E402
from wellwatch.export.manifest import manifest_path, verify_manifest  # noqa: E402
from wellwatch.export.metadata import PRECISION_KEY  # noqa: E402
from wellwatch.export.onnx_export import verify_fp16, verify_parity  # noqa: E402
from wellwatch.export.parity import (DecisionError, ParityError, Tolerances, compare, compare_cases,  # noqa: E402
                                     compare_decisions)
from wellwatch.export.parity_inputs import random_cases, real_cases, real_patches  # noqa: E402
from wellwatch.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from wellwatch.training.classifier_loop import TrainConfig, train_classifier  # noqa: E402

from .conftest import shared_data  # noqa: E402

TILE = 32
NO_IMAGES: list = []


def tiny_contract(**changes) -> ModelContract:
    base = dict(
        name="tiny-test", task="live_dead", classes=("live", "dead"), positive_class="dead", output="probabilities",
        input_name="input", channels=("brightfield",), layout="NCHW", height=TILE, width=TILE,
        normalisation=Normalisation("robust_zscore"), tiling=Tiling(TILE, TILE),
        empty_filter=EmptyFilter("std", {"threshold": 0.5}), decision_threshold=0.5,
        trained_on={"data": "synthetic blobs", "patches": 96}, metrics={"auc": 0.9})
    base.update(changes)
    return ModelContract(**base)


def synthetic_patches(n: int, channels: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """'Dead' patches hold a bright round blob, 'live' ones a dim one: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:TILE, :TILE]
    blob = np.exp(-((yy - TILE / 2) ** 2 + (xx - TILE / 2) ** 2) / 40.0)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, channels, TILE, TILE)) + (1 + 3 * y)[:, None, None, None] * blob
    return x.astype(np.float32), y.astype(np.int64)


def make_checkpoint(path: Path, contract: ModelContract | None = None, arch: str = "tiny") -> Path:
    """Train a tiny model for a few steps and save it as RUN/best.pt."""
    contract = contract or tiny_contract()
    x, y = synthetic_patches(96, len(contract.channels))
    model, history = train_classifier(x[:64], y[:64], x[64:], y[64:],
                                      TrainConfig(arch=arch, epochs=2, batch_size=16, steps_per_epoch=4),
                                      classes=len(contract.classes))
    return save_checkpoint(path, model, arch, contract, {"train_loss": history.train_loss})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run") / "best.pt")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "model.onnx"
    return export_checkpoint(checkpoint, out, fp16=True, parity_images=NO_IMAGES)


def altered(src: Path, dst: Path, change) -> Path:
    proto = onnx.load(str(src))
    change(proto)
    onnx.save(proto, str(dst))
    return dst


# --- round trip ---------------------------------------------------------------------------------

@pytest.mark.unit
def test_round_trip_parity_passes_and_the_file_carries_its_contract(checkpoint, exported):
    assert exported.path.is_file() and exported.parity.passed
    assert exported.parity.mismatched == 0 and exported.parity.max_abs_diff < 1e-5
    assert exported.parity.elements == (1 + 7 + 32) * 2  # the random batches of several sizes
    proto = onnx.load(str(exported.path))
    meta = {p.key: p.value for p in proto.metadata_props}
    contract = contract_from_metadata(meta, str(exported.path))
    _, arch, trained, _ = load_checkpoint(checkpoint)
    assert dataclasses.replace(contract, created="", tool="") == dataclasses.replace(trained, created="", tool="")
    assert contract.metrics == {"auc": 0.9} and contract.trained_on["data"] == "synthetic blobs"
    assert contract.created and contract.tool.startswith("wellwatch ")
    assert meta[PRECISION_KEY] == "float32"
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    onnx.checker.check_model(proto)


@pytest.mark.integration
def test_batch_axis_is_dynamic(exported):
    import onnxruntime as ort

    proto = onnx.load(str(exported.path))
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    for n in (1, 3, 100):
        out = session.run(None, {"input": np.zeros((n, 1, TILE, TILE), np.float32)})[0]
        assert out.shape == (n, 2)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)  # probabilities, as the contract says


@pytest.mark.unit
def test_logits_contract_gives_a_graph_without_softmax(tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.pt", tiny_contract(output="logits"))
    result = export_checkpoint(ckpt, tmp_path / "logits.onnx", parity_images=NO_IMAGES)
    ops = [n.op_type for n in onnx.load(str(result.path)).graph.node]
    assert "Softmax" not in ops and result.parity.passed
    model, _, contract, _ = load_checkpoint(ckpt)
    x = random_cases(contract)[1].batch
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    assert not np.allclose(logits.sum(axis=1), 1.0)  # really logits


@pytest.mark.integration
def test_eight_view_model_exports_with_its_view_averaging_in_the_graph(tmp_path):
    """cropnet8 averages the 8 rotations/flips inside its forward: the ONNX file must compute the same
    (parity) and so give one call for a cell however it is turned, served with no daemon change."""
    import onnxruntime as ort

    ckpt = make_checkpoint(tmp_path / "best.pt", arch="cropnet8")
    result = export_checkpoint(ckpt, tmp_path / "m8.onnx", parity_images=NO_IMAGES)
    assert result.parity.passed and result.parity.mismatched == 0
    info = inspect_model(result.path)  # the daemon's own loading checks, output shape included
    assert "[batch, 2]" in format_info(info)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = synthetic_patches(5, seed=4)[0]
    p = session.run(None, {"input": x})[0]
    for turned in (np.rot90(x, 1, axes=(2, 3)), np.flip(x, axis=3), np.rot90(x, 3, axes=(2, 3))[..., ::-1, :]):
        np.testing.assert_allclose(session.run(None, {"input": np.ascontiguousarray(turned)})[0], p, atol=1e-5)


@pytest.mark.unit
def test_cell_type_two_channel_model_exports_with_real_patches(tmp_path):
    contract = tiny_contract(task="cell_type", classes=("lmpp", "prob", "other"), positive_class="prob", tiling=None,
                             channels=("dic", "phase"), empty_filter=EmptyFilter("none"))
    ckpt = make_checkpoint(tmp_path / "best.pt", contract)
    image = shared_data("usiigaci-phase", "set2", "raw.tif")
    result = export_checkpoint(ckpt, tmp_path / "ct.onnx", parity_images=[image])
    assert result.parity.passed
    assert any(name.startswith("real set2/raw.tif") for name in result.inputs)
    assert json.loads(manifest_path(result.path).read_text())["contract"]["task"] == "cell_type"


# --- parity failures ------------------------------------------------------------------------------

@pytest.mark.unit
def test_altered_weight_fails_parity_with_a_full_report(checkpoint, exported, tmp_path):
    def bump_first_conv(proto):
        name = next(n.input[1] for n in proto.graph.node if n.op_type == "Conv")
        init = next(i for i in proto.graph.initializer if i.name == name)
        w = onnx.numpy_helper.to_array(init).copy()
        w.flat[0] += 0.5
        init.CopyFrom(onnx.numpy_helper.from_array(w, name))

    bad = altered(exported.path, tmp_path / "bad-weight.onnx", bump_first_conv)
    model, _, contract, _ = load_checkpoint(checkpoint)
    with pytest.raises(ParityError) as e:
        verify_parity(model, bad, contract, random_cases(contract))
    report = e.value.report
    assert 0 < report.mismatched <= report.elements == 80
    assert report.max_abs_diff > 1e-4
    message = str(e.value)
    assert str(bad) in message and "ppm" in message and "largest difference" in message
    assert "input set 'random, batch" in message and ", sample " in message and ", output " in message
    assert f"{report.mismatched} of 80 elements ({report.mismatched_ppm:.1f} ppm)" in message


@pytest.mark.unit
def test_altered_graph_fails_parity(checkpoint, exported, tmp_path):
    def relu_to_sigmoid(proto):
        next(n for n in proto.graph.node if n.op_type == "Relu").op_type = "Sigmoid"

    bad = altered(exported.path, tmp_path / "bad-graph.onnx", relu_to_sigmoid)
    model, _, contract, _ = load_checkpoint(checkpoint)
    with pytest.raises(ParityError, match="ppm"):
        verify_parity(model, bad, contract, random_cases(contract))


@pytest.mark.unit
def test_a_failed_export_leaves_no_model_behind(checkpoint, tmp_path, monkeypatch):
    real_write = onnx_export.write_onnx

    def write_then_corrupt(model, contract, out, opset):
        real_write(model, contract, out, opset)
        altered(Path(out), Path(out), lambda p: setattr(
            next(n for n in p.graph.node if n.op_type == "Relu"), "op_type", "Sigmoid"))

    monkeypatch.setattr(onnx_export, "write_onnx", write_then_corrupt)
    out = tmp_path / "model.onnx"
    with pytest.raises(ParityError, match=f"exported model {out} differs"):  # the destination, not the staging name
        export_checkpoint(checkpoint, out, parity_images=NO_IMAGES)
    assert list(tmp_path.iterdir()) == []  # no model, no manifest, no staging file


@pytest.mark.unit
def test_tolerances_are_options(checkpoint, exported, tmp_path):
    def scale_head(proto):
        init = next(i for i in proto.graph.initializer if i.name.endswith("head.weight"))
        w = onnx.numpy_helper.to_array(init) * np.float32(1.01)
        init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))

    bad = altered(exported.path, tmp_path / "nudged.onnx", scale_head)
    model, _, contract, _ = load_checkpoint(checkpoint)
    cases = random_cases(contract)
    with pytest.raises(ParityError):
        verify_parity(model, bad, contract, cases)  # defaults: atol 1e-4, rtol 1e-3
    assert verify_parity(model, bad, contract, cases, atol=0.2, rtol=0.2).passed


@pytest.mark.unit
def test_compare_counts_ppm_and_flags_nan():
    expected = np.zeros((1000, 2), np.float32)
    actual = expected.copy()
    actual[10, 1] = 0.5
    actual[20, 0] = np.nan
    r = compare(expected, actual, atol=1e-3, rtol=0)
    assert r.mismatched == 2 and r.mismatched_ppm == pytest.approx(1000.0) and r.nonfinite == 1
    assert r.worst_index == (20, 0) and not r.passed  # a NaN is the worst difference
    r = compare_cases([("a", expected[:5], expected[:5]), ("b", expected, np.where(np.isnan(actual), 0, actual))],
                      1e-3, 0, ("live", "dead"))
    assert r.mismatched == 1 and r.where == "input set 'b', sample 10, output 1 (dead)" and r.max_abs_diff == 0.5


@pytest.mark.unit
def test_compare_decisions_tells_borderline_from_real_disagreements():
    ref = np.array([[0.9, 0.1], [0.505, 0.495], [0.2, 0.8], [0.6, 0.4]])
    var = np.array([[0.9, 0.1], [0.49, 0.51], [0.2, 0.8], [0.3, 0.7]])
    r = compare_decisions([("x", ref, var)], positive_index=1, threshold=0.5, margin=0.01)
    assert (r.samples, r.disagreements, r.borderline_disagreements) == (4, 2, 1)
    assert not r.passed and r.agreement == 0.5 and "sample 3" in r.describe()
    assert compare_decisions([("x", ref[:3], var[:3])], 1, 0.5, 0.01).passed  # only the borderline one
    three = np.array([[0.5, 0.3, 0.2]])
    assert compare_decisions([("x", three, np.array([[0.3, 0.5, 0.2]]))], 1, 0.5, 0.01).disagreements == 1


# --- float16 ----------------------------------------------------------------------------------------

@pytest.mark.unit
def test_fp16_variant_keeps_float32_io_and_the_decisions(exported):
    assert exported.fp16_path.name == "model.fp16.onnx" and exported.fp16_path.is_file()
    proto = onnx.load(str(exported.fp16_path))
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert proto.graph.input[0].type.tensor_type.elem_type == f32
    assert proto.graph.output[0].type.tensor_type.elem_type == f32
    weights = [i for i in proto.graph.initializer if i.data_type in (f32, f16)]
    assert weights and all(i.data_type == f16 for i in weights)
    assert {p.key: p.value for p in proto.metadata_props}[PRECISION_KEY] == "float16"
    assert exported.fp16_parity.nonfinite == 0 and exported.fp16_parity.passed
    assert exported.fp16_decisions.passed and exported.fp16_decisions.samples == 40
    assert exported.fp16_parity.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    manifest = verify_manifest(exported.fp16_path)
    assert manifest["precision"] == "float16" and manifest["float32_model"]["sha256"] == exported.sha256
    assert manifest["decisions"]["agreement"] == exported.fp16_decisions.agreement


@pytest.mark.unit
def test_fp16_nan_or_changed_decisions_fail(checkpoint, exported, tmp_path):
    model, _, contract, _ = load_checkpoint(checkpoint)
    cases = random_cases(contract)

    def poison(proto):
        init = next(i for i in proto.graph.initializer if i.name.endswith("head.bias"))
        b = onnx.numpy_helper.to_array(init).copy()
        b[0] = np.nan
        init.CopyFrom(onnx.numpy_helper.from_array(b, init.name))

    nan = altered(exported.fp16_path, tmp_path / "nan.fp16.onnx", poison)
    with pytest.raises(ParityError, match="NaN/inf"):
        verify_fp16(model, nan, contract, cases)

    def flip(proto):  # swap the two classes' rows of the head: values far off and every call changed
        init = next(i for i in proto.graph.initializer if i.name.endswith("head.weight"))
        init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init)[::-1].copy(), init.name))

    flipped = altered(exported.fp16_path, tmp_path / "flipped.fp16.onnx", flip)
    lenient = Tolerances(fp16_atol=1.0, fp16_rtol=1.0)  # values pass, so the decision check must catch it
    with pytest.raises(DecisionError, match="changes decisions"):
        verify_fp16(model, flipped, contract, cases, lenient)


# --- real inputs ------------------------------------------------------------------------------------

@pytest.mark.unit
def test_real_patches_are_cut_with_the_daemon_preprocessing():
    from wellwatch.core.preprocess import prepare_tiles
    from wellwatch.core.files.tiff import read_frame

    image = read_frame(str(shared_data("usiigaci-phase", "set1", "raw.tif")))
    contract = tiny_contract(height=64, width=64, tiling=Tiling(64, 64), empty_filter=EmptyFilter("std", {"threshold": 0.5}))
    patches = real_patches(image, contract, limit=10_000)
    served, origins, empty = prepare_tiles([image], contract)
    assert patches.dtype == np.float32 and patches.shape[1:] == (1, 64, 64)
    assert len(patches) == len(origins) and len(served) == (~empty).sum()
    np.testing.assert_array_equal(patches[:len(served)], served)  # non-empty tiles first, exactly as served
    cases = real_cases([shared_data("usiigaci-phase", "set1", "raw.tif")], contract)
    assert [len(c.batch) for c in cases] == [64, 1]


@pytest.mark.unit
def test_export_default_uses_the_shared_real_image(checkpoint, tmp_path):
    shared_data("usiigaci-phase", "set1", "raw.tif")
    result = export_checkpoint(checkpoint, tmp_path / "m.onnx")
    assert "real set1/raw.tif, batch 64" in result.inputs and result.parity.passed
    assert json.loads(manifest_path(result.path).read_text())["parity"]["inputs"] == result.inputs


@pytest.mark.unit
def test_given_patches_join_the_parity_inputs(checkpoint, tmp_path):
    x, _ = synthetic_patches(20)
    result = export_checkpoint(checkpoint, tmp_path / "m.onnx", real_inputs=x, parity_images=NO_IMAGES)
    assert "given patches, batch 20" in result.inputs and result.parity.elements == (40 + 20) * 2
    with pytest.raises(ValueError, match="parity patches have shape"):
        export_checkpoint(checkpoint, tmp_path / "m2.onnx", real_inputs=x[:, :, :16], parity_images=NO_IMAGES)


# --- manifest and inspect ---------------------------------------------------------------------------

@pytest.mark.unit
def test_manifest_records_hash_size_contract_and_tools(exported, checkpoint):
    m = verify_manifest(exported.path)
    assert m["sha256"] == file_sha256(exported.path) == exported.sha256
    assert m["size"] == exported.path.stat().st_size and m["file"] == "model.onnx"
    assert m["contract"]["name"] == "tiny-test" and m["precision"] == "float32" and m["opset"] >= 17
    assert {"wellwatch", "torch", "onnx", "onnxruntime", "python"} <= m["tools"].keys()
    assert m["source"] == {"checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint), "arch": "tiny"}
    assert m["parity"]["mismatched"] == 0 and m["exported"].endswith("Z")


@pytest.mark.unit
def test_a_changed_file_fails_verification(exported, tmp_path):
    def nudge(proto):  # one weight, slightly: the file still loads, but it is not what was exported
        init = proto.graph.initializer[0]
        w = onnx.numpy_helper.to_array(init).copy()
        w.flat[0] += 1e-3
        init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))

    copy = altered(exported.path, tmp_path / "model.onnx", nudge)
    (tmp_path / "model.onnx.manifest.json").write_text(manifest_path(exported.path).read_text())
    with pytest.raises(ManifestError, match="does not match the manifest"):
        verify_manifest(copy)
    info = inspect_model(copy)
    assert info.hash_check == "mismatch" and not info.verified
    assert inspect_model(exported.path).hash_check == "manifest"


@pytest.mark.unit
def test_inspect_prints_the_contract(exported):
    text = format_info(inspect_model(exported.path))
    for expected in ("task           live_dead", "live, dead (output order; positive: dead)", "robust_zscore",
                     "tiles 32 px, stride 32 px", "std (threshold=0.5)", "0.5 on p(dead)", '"auc": 0.9',
                     "verified against model.onnx.manifest.json", "[batch, 1, 32, 32]", exported.sha256):
        assert expected in text, expected


@pytest.mark.unit
def test_cli_export_and_inspect(checkpoint, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert wellwatch_main(["export", str(checkpoint), "--out", str(out), "--fp16", "--no-real-images",
                           "--atol", "1e-5"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "cli.fp16.onnx" in printed and "decisions agree on 40 of 40" in printed
    assert "atol=1e-05" in printed
    assert wellwatch_main(["inspect", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["hash_check"] == "manifest" and doc["contract"]["classes"] == ["live", "dead"]
    assert wellwatch_main(["inspect", str(out), "--sha256", "0" * 64]) == 1
    assert "is not the expected" in capsys.readouterr().err
    assert wellwatch_main(["export", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2


@pytest.mark.unit
def test_model_without_manifest_is_inspected_but_unverified(exported, tmp_path):
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(exported.path.read_bytes())
    assert inspect_model(lone).hash_check == "unverified"
    assert inspect_model(lone, exported.sha256).hash_check == "expected"


@pytest.mark.unit
def test_missing_checkpoint_is_an_export_error(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        export_checkpoint(tmp_path / "nope.pt", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.unit
def test_the_bundled_demo_model_was_made_by_export_checkpoint():
    """`make demo-model` exports through the same entry point: its manifest carries that path's records."""
    from wellwatch.core.bundled_models import bundled_demo_model

    path = bundled_demo_model()
    m = verify_manifest(path)  # the shipped file is the one the manifest describes
    assert m["source"]["arch"] == "tiny" and len(m["source"]["checkpoint_sha256"]) == 64
    assert m["precision"] == "float32" and m["parity"]["mismatched"] == 0
    assert m["parity"]["inputs"][:3] == ["random, batch 1", "random, batch 7", "random, batch 32"]
    assert any(i.startswith("given patches") for i in m["parity"]["inputs"])  # its held-out test tiles
    info = inspect_model(path)
    assert info.hash_check == "manifest" and info.contract.trained_on["demo"] is True
    assert info.contract.tool.startswith("wellwatch ") and " export " in info.contract.tool


@pytest.mark.integration
def test_the_bundled_ldc_model_serves_crops_cut_by_dataset_voc():
    """`make ldc-model`'s file: the daemon's loader accepts it, its manifest matches, its contract says
    what it fits, and it calls real LDC crops cut by today's `dataset voc` defaults (a change to the
    crop geometry or normalisation that it was not trained with would break this)."""
    import onnxruntime as ort

    from wellwatch.training.scores import roc_auc
    from wellwatch.training.voc import build_voc_dataset

    path = Path(__file__).resolve().parents[1] / "wellwatch" / "models" / "ldc-live-dead.onnx"
    m = verify_manifest(path)
    assert m["source"]["arch"] == "cropnet8" and m["parity"]["mismatched"] == 0 and path.stat().st_size < 2_000_000
    info = inspect_model(path)
    c = info.contract
    assert c.task == "live_dead" and (c.height, c.width) == (32, 32) and "22 px across" in c.trained_on["fits"]
    assert c.metrics["cv"]["auc_ci95"][0] <= c.metrics["cv"]["auc"] <= c.metrics["cv"]["auc_ci95"][1]
    ds = build_voc_dataset([shared_data("ldc-live-dead", "images")], limit=60, duplicate_threshold=None)
    assert ds.x.shape[1:] == (1, c.height, c.width) and ds.normalisation == c.normalisation
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    p_dead = session.run(None, {c.input_name: ds.x})[0][:, c.classes.index("dead")]
    # images it was trained on: a check that serving matches training, not an estimate of accuracy
    assert roc_auc(ds.y == ds.classes.index("dead"), p_dead) > 0.95
