"""BioImage.IO packages in and out: read with bioimageio.spec, checked on the daemon's own session,
refused by name when they cannot be served, written by `wellwatch export-bioimageio` and read back.

Real parts: the shared unet2d_nuclei_broad package (MIT; skipped without ../shared), the bundled
models, real TIFF frames, ONNX Runtime.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("bioimageio.spec")

from wellwatch.cli import main  # noqa: E402
from wellwatch.core.inference.backend import OnnxBackend  # noqa: E402
from wellwatch.core.packages.description import PackageError, read_package  # noqa: E402
from wellwatch.core.config import InferenceConfig, load_config  # noqa: E402
from wellwatch.core.contract import file_sha256  # noqa: E402
from wellwatch.core.errors import ConfigError  # noqa: E402
from wellwatch.core.packages.backend import PackageBackend  # noqa: E402
from wellwatch.core.packages.loading import open_package  # noqa: E402
from wellwatch.core.packages.ops import apply_ops  # noqa: E402
from wellwatch.core.segmentation.package import PackageParams, PackageServing, labels_from_map, stitch_cores  # noqa: E402
from wellwatch.core.bundled_models import bundled_model  # noqa: E402
from wellwatch.core.segmentation.segmenters import load_segmenter  # noqa: E402

from .conftest import SHARED_DATA  # noqa: E402

NUCLEI = SHARED_DATA.parent / "models" / "bioimageio" / "unet2d_nuclei_broad"
needs_nuclei = pytest.mark.skipif(not NUCLEI.is_dir(), reason="../shared/models/bioimageio/unet2d_nuclei_broad absent")
CPU = InferenceConfig(device="cpu", warmup=False)


def copy_package(tmp_path: Path) -> Path:
    dst = tmp_path / "pkg"
    shutil.copytree(NUCLEI, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    dst.chmod(0o755)
    return dst


def edit_yaml(pkg: Path, old: str, new: str) -> None:
    path = pkg / "bioimageio.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def refusal(caplog, argv) -> str:
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    return lines[0]


# --- reading the shared package -----------------------------------------------------------------

@pytest.mark.unit
@needs_nuclei
def test_the_shared_package_is_read_by_its_description():
    pkg = read_package(NUCLEI)
    assert pkg.kind == "segmentation"
    assert pkg.input.axes == ("b", "c", "y", "x") and pkg.input.min_size == {"y": 512, "x": 512}
    assert pkg.input.step == {"y": 0, "x": 0}
    assert pkg.output.halo == {"y": 32, "x": 32}
    assert [op for op, _ in pkg.input.ops] == ["ensure_dtype", "zero_mean_unit_variance", "ensure_dtype"]
    assert pkg.input.ops[1][1]["axes"] == ["x", "y"]
    assert [op for op, _ in pkg.output.ops] == ["sigmoid", "ensure_dtype"]
    assert pkg.weights_sha256.startswith("85f5ac80fa977fea")
    assert pkg.license == "MIT" and "Fynn Beuttenmueller" in pkg.authors
    assert any("10.1007/978-3-319-24574-4_28" in c for c in pkg.citations)
    assert pkg.identity.startswith("bioimageio:")


@pytest.mark.unit
@needs_nuclei
def test_the_shared_test_tensors_are_reproduced_through_the_daemon_backend():
    backend = PackageBackend(read_package(NUCLEI), CPU)
    tol = backend.package.tolerance
    assert backend.deviation.mismatched == 0 and backend.deviation.worst_abs < tol.absolute + tol.relative
    # and through infer(), the path the daemon's batches take: same numbers as the check
    x = apply_ops(backend.package.input.ops, np.load(NUCLEI / "test_input.npy"), ("b", "c", "y", "x"))
    np.testing.assert_allclose(backend.infer(x), np.load(NUCLEI / "test_output.npy"), atol=1e-4, rtol=1e-3)


@pytest.mark.unit
@needs_nuclei
def test_a_parameterised_input_size_gives_the_smallest_valid_tile(tmp_path):
    pkg = copy_package(tmp_path)
    edit_yaml(pkg, "      - size: 512\n        id: y\n", "      - size:\n          min: 128\n          step: 16\n"
                                                       "        id: y\n")
    spec = read_package(pkg).input
    assert (spec.min_size["y"], spec.step["y"]) == (128, 16) and (spec.min_size["x"], spec.step["x"]) == (512, 0)
    assert spec.valid_size("y", 500) == 512 and spec.valid_size("y", 10) == 128 and spec.valid_size("x", 100) == 512


# --- refusals: one line, exit 2 -----------------------------------------------------------------

@pytest.mark.unit
@needs_nuclei
def test_a_tampered_test_output_is_refused_naming_the_package_and_the_worst_deviation(tmp_path, caplog):
    pkg = copy_package(tmp_path)
    out = np.load(pkg / "test_output.npy")
    out[0, 0, 100:110, 200:210] += 0.25
    np.save(pkg / "test_output.npy", out)
    edit_yaml(pkg, "39925fb38bc74530902e44bf8e43a8bd0a9e3675aab758d89f47dc66cb9818ed", file_sha256(pkg / "test_output.npy"))
    line = refusal(caplog, ["check-package", str(pkg), "--device", "cpu"])
    assert str(pkg) in line and "does not reproduce its test output" in line
    assert "worst |difference| 0.25" in line and "100 of 262144 elements" in line


@pytest.mark.unit
@needs_nuclei
def test_missing_weights_are_refused(tmp_path, caplog):
    pkg = copy_package(tmp_path)
    (pkg / "weights.onnx").unlink()
    line = refusal(caplog, ["check-package", str(pkg), "--device", "cpu"])
    assert str(pkg) in line and "weights.onnx" in line


@pytest.mark.unit
@needs_nuclei
def test_changed_weights_are_refused_by_their_sha256(tmp_path, caplog):
    pkg = copy_package(tmp_path)
    with open(pkg / "weights.onnx", "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\x00" * 4)
    line = refusal(caplog, ["check-package", str(pkg), "--device", "cpu"])
    assert str(pkg) in line and "sha256" in line


@pytest.mark.unit
@needs_nuclei
def test_unsupported_processing_is_refused_by_name(tmp_path, caplog):
    pkg = copy_package(tmp_path)
    edit_yaml(pkg, "      - id: sigmoid\n", "      - id: sigmoid\n      - id: scale_mean_variance\n"
                                          "        kwargs:\n          reference_tensor: raw\n")
    line = refusal(caplog, ["check-package", str(pkg), "--device", "cpu"])
    assert str(pkg) in line and "unsupported processing 'scale_mean_variance'" in line


@pytest.mark.unit
@needs_nuclei
def test_a_preprocessing_option_that_cannot_be_served_is_refused_by_name(tmp_path, caplog):
    pkg = copy_package(tmp_path)
    edit_yaml(pkg, "      - id: zero_mean_unit_variance\n        kwargs:\n",
              "      - id: scale_range\n        kwargs:\n          reference_tensor: raw\n"
              "          max_percentile: 99.8\n")
    line = refusal(caplog, ["check-package", str(pkg), "--device", "cpu"])
    assert str(pkg) in line and "unsupported processing 'scale_range' with a reference_tensor" in line


@pytest.mark.unit
@needs_nuclei
def test_a_package_with_other_weight_formats_only_is_refused_by_name(tmp_path, caplog):
    pkg = copy_package(tmp_path)
    text = (pkg / "bioimageio.yaml").read_text()
    start, end = text.index("  onnx:\n"), text.index("  pytorch_state_dict:\n")
    (pkg / "bioimageio.yaml").write_text(text[:start] + text[end:])
    line = refusal(caplog, ["check-package", str(pkg), "--device", "cpu"])
    assert "no onnx weights" in line and "torchscript" in line


@pytest.mark.unit
def test_a_missing_package_is_refused_with_one_line(tmp_path, caplog):
    line = refusal(caplog, ["check-package", str(tmp_path / "nope"), "--device", "cpu"])
    assert str(tmp_path / "nope") in line


# --- serving -------------------------------------------------------------------------------------

@pytest.mark.unit
def test_threshold_and_distance_watershed_split_touching_disks():
    yy, xx = np.mgrid[:120, :200]
    fg = (((yy - 60) ** 2 + (xx - 60) ** 2 < 30 ** 2) | ((yy - 60) ** 2 + (xx - 112) ** 2 < 30 ** 2)
          | ((yy - 60) ** 2 + (xx - 175) ** 2 < 8 ** 2)).astype(np.float32)
    labels = labels_from_map(fg, PackageParams(min_distance=10, min_area=30))
    assert labels.max() == 3  # two touching disks split, the small one kept
    assert labels_from_map(fg, PackageParams(min_distance=10, min_area=300)).max() == 2  # the small one dropped


@pytest.mark.unit
def test_stitching_takes_each_pixel_from_a_tile_whose_core_covers_it():
    serving = PackageServing("t", (64, 64), (8, 8), PackageParams())
    origins = np.array([[0, 0], [0, 48]])  # overlap of 2 halos: columns 48..63
    outputs = np.stack([np.full((1, 64, 64), 1.0, np.float32), np.full((1, 64, 64), 2.0, np.float32)])
    stitched = stitch_cores(outputs, origins, (64, 112), serving)[0]
    assert (stitched[:, :48] < 1.01).all() and (stitched[:, 64:] > 1.99).all()  # cores, and frame edges
    core_rows = stitched[8:56]  # rows 0-7 and 56-63 are in both tiles' halos (the frame's own edges)
    assert (core_rows[:, 48:56] < 1.01).all() and (core_rows[:, 56:64] > 1.99).all()  # the halos give way


@pytest.mark.unit
@needs_nuclei
def test_the_package_segments_a_frame_larger_than_its_tile_with_halo_overlap():
    segmenter = load_segmenter(str(NUCLEI), device="cpu")
    test_in = np.load(NUCLEI / "test_input.npy")[0, 0]
    whole = segmenter.segment(test_in)  # one tile: no stitching
    frame = np.pad(test_in, ((0, 300), (0, 0)), mode="reflect")  # 812 x 512: two tiles overlapping by 2 halos
    tiles, origins = segmenter.prepare(frame)
    assert len(tiles) == 2 and origins.tolist() == [[0, 0], [300, 0]]
    stitched = segmenter.segment(frame)
    assert stitched.shape == frame.shape and whole.max() > 20
    # the top half's cells are those of the single tile (the preprocessing statistics differ a little)
    assert abs(int(np.unique(stitched[:400]).size) - int(np.unique(whole[:400]).size)) <= 2


@pytest.mark.unit
def test_the_package_table_is_validated(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "bioimageio.yaml").write_text("type: model\n")
    with pytest.raises(ConfigError, match="segmentation.tta"):
        load_config(None, {"watch.root": str(tmp_path), "segmentation.method": "model", "segmentation.tta": True,
                           "models.segmentation.path": str(tmp_path / "pkg")})
    with pytest.raises(ConfigError, match="segmentation.package.threshhold"):
        load_config(None, {"watch.root": str(tmp_path), "segmentation.package.threshhold": 0.5})
    with pytest.raises(ConfigError, match="segmentation.package.min_area"):
        load_config(None, {"watch.root": str(tmp_path), "segmentation.package.min_area": 50,
                           "segmentation.package.max_area": 10})


# --- writing: every bundled model kind round-trips -------------------------------------------------

def simulated_plate(**kw):
    from wellwatch.simulator.spec import SimulationSpec

    base = dict(wells=("A1", "A2"), fields=1, timepoints=1, size=256, cells_per_field=12, channels=("BF",),
                plate_name="pk", seed=4, write_mode="rename")
    return SimulationSpec(**{**base, **kw})


def simulated_frame(tmp_path: Path) -> Path:
    """A simulated bright-field frame (a real TIFF written by the simulator) for the test tensors."""
    from wellwatch.simulator.writer import write_plate

    write_plate(simulated_plate(), tmp_path / "frames")
    return sorted((tmp_path / "frames" / "data").glob("*BF.tif"))[0]


@pytest.mark.unit
@pytest.mark.parametrize("model", ["demo-live-dead.onnx", "ldc-live-dead.onnx", "phase-segmentation.onnx"])
def test_a_bundled_model_exports_to_a_valid_package_that_is_read_back_and_served(tmp_path, model):
    from bioimageio.spec import load_model_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    frame = simulated_frame(tmp_path)
    out = tmp_path / "pkg"
    assert main(["export-bioimageio", str(bundled_model(model)), "--out", str(out), "--frame", str(frame)]) == 0
    descr = load_model_description(out / "bioimageio.yaml", perform_io_checks=True)
    assert isinstance(descr, ModelDescr)  # valid by bioimageio.spec's own validation
    assert descr.weights.onnx is not None and descr.license == "MIT" and descr.covers
    original = OnnxBackend(bundled_model(model), device="cpu", warmup=False, max_batch=4)
    task = original.contract.task
    served = open_package(str(out), task, CPU, max_batch=4)
    assert served.deviation.mismatched == 0  # its own test tensors, on the session the daemon got
    assert served.contract.name.startswith("bioimageio:") and served.sha256 == original.sha256
    x = np.load(out / "test_input.npy")
    np.testing.assert_array_equal(served.infer(x), original.infer(x))
    zipped = shutil.make_archive(str(tmp_path / "zipped"), "zip", out)  # a zipped package is read as well
    assert open_package(zipped, task, CPU, max_batch=4).sha256 == original.sha256


def _counts_through_daemon(workdir: Path, overrides: dict) -> tuple[dict, dict]:
    """(counts and cells per frame path, the models map) of one daemon run on the simulated plate."""
    from wellwatch.harness import local_config, start_daemon
    from wellwatch.simulator.writer import write_plate

    from .conftest import StreamRecorder

    spec = simulated_plate()
    config = local_config(workdir, spec, **{"inference.device": "cpu", "segmentation.workers": 1, **overrides})
    daemon = start_daemon(config)
    try:
        rec = StreamRecorder(config)
        rec.start()
        assert rec.connected.wait(15)
        write_plate(spec, workdir / "acquisition")
        frames = rec.wait_frames(len(spec.wells))
    finally:
        daemon.stop()
    return {f["path"]: (f["counts"], f.get("cells")) for f in frames}, frames[0]["models"]


# each bundled model in its slot: the .onnx, then the package wellwatch wrote of it
SLOTS = {"demo-live-dead.onnx": lambda path: {"models.live_dead.path": path},
         "phase-segmentation.onnx": lambda path: {"segmentation.method": "model", "models.segmentation.path": path},
         "ldc-live-dead.onnx": lambda path: {"models.live_dead.path": path}}


@pytest.mark.integration
@pytest.mark.parametrize("model", [  # the demo model's run is the fast one of the same path
    "demo-live-dead.onnx", *(pytest.param(m, marks=pytest.mark.slow) for m in ("ldc-live-dead.onnx",
                                                                            "phase-segmentation.onnx"))])
def test_the_daemon_serves_a_written_package_with_equal_counts(tmp_path, model):
    """A package wellwatch wrote, in its model's slot of a daemon on a simulated plate: the same counts
    as the .onnx it holds, and the stream names the package (id, version) beside the weights' sha256."""
    onnx = bundled_model(model)
    pkg = tmp_path / "pkg"
    assert main(["export-bioimageio", str(onnx), "--out", str(pkg), "--frame", str(simulated_frame(tmp_path))]) == 0
    direct, direct_models = _counts_through_daemon(tmp_path / "onnx", SLOTS[model](str(onnx)))
    packaged, packaged_models = _counts_through_daemon(tmp_path / "package", SLOTS[model](str(pkg)))
    assert packaged == direct and len(direct) == 2
    assert sum(c["live"] + c["dead"] for c, _ in direct.values()) > 0
    name = OnnxBackend(onnx, device="cpu", warmup=False).contract.name
    identity = f"bioimageio:{read_package(pkg).id}/0.1.0"
    assert direct_models[name] == packaged_models[identity] == file_sha256(onnx)
    assert name not in packaged_models and identity not in direct_models


# --- the shared package as the daemon's nuclei segmenter on adcc-paired's LIVE channel -------------

ADCC = SHARED_DATA / "adcc-paired" / "data"
ADCC_FIELDS = ("A1--W00001--P00001", "A6--W00006--P00001")


@pytest.mark.integration
@needs_nuclei
@pytest.mark.skipif(not ADCC.is_dir(), reason="../shared/data/adcc-paired absent")
def test_the_daemon_segments_nuclei_on_the_live_channel_with_the_shared_package(tmp_path):
    from .test_vendor_daemon import vendor_config

    root = tmp_path / "watched"
    root.mkdir()
    config = vendor_config(tmp_path, root, "scanr", "BF", **{
        "channels.segment_on": "LIVE", "segmentation.method": "model", "segmentation.workers": 1,
        "models.segmentation.path": str(NUCLEI), "inference.device": "cpu"})
    from wellwatch.harness import start_daemon

    from .conftest import StreamRecorder

    daemon = start_daemon(config)
    try:
        rec = StreamRecorder(config)
        rec.start()
        assert rec.connected.wait(30)
        for f in ADCC_FIELDS:
            for c in ("BF", "PI", "LIVE"):
                shutil.copy(ADCC / f"{f}--Z00000--T00000--{c}.tif", root)
        frames = rec.wait_frames(len(ADCC_FIELDS))
    finally:
        daemon.stop()
    segmenter = load_segmenter(str(NUCLEI), device="cpu")
    for f in frames:
        live = tifffile.imread(ADCC / f["path"].replace("--BF.tif", "--LIVE.tif"))
        assert f["cells"] == int(segmenter.segment(live).max()) > 20  # the LIVE nuclei, as the package segments them
        identity = read_package(NUCLEI).identity
        assert f["models"][identity] == read_package(NUCLEI).weights_sha256


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["tile", "crop"])
def test_export_with_bioimageio_writes_a_package_of_the_trained_model(tmp_path, kind):
    """`wellwatch export RUN/best.pt --out M.onnx --bioimageio PKG`: the freshly exported model, packaged."""
    pytest.importorskip("torch")
    from wellwatch.core.contract import CellCrop, EmptyFilter, Normalisation

    from .test_export import TILE, make_checkpoint, tiny_contract

    contract = (tiny_contract() if kind == "tile" else
                tiny_contract(task="cell_type", classes=("lmpp", "prob"), positive_class="prob", tiling=None,
                              empty_filter=EmptyFilter("none"), normalisation=Normalisation("mask_mean"),
                              crop=CellCrop(TILE, TILE / 3)))
    ckpt = make_checkpoint(tmp_path / "best.pt", contract)
    pkg = tmp_path / "pkg"
    assert main(["export", str(ckpt), "--out", str(tmp_path / "m.onnx"), "--no-real-images",
                 "--bioimageio", str(pkg), "--bioimageio-frame", str(simulated_frame(tmp_path))]) == 0
    package = read_package(pkg)
    assert package.weights_sha256 == file_sha256(tmp_path / "m.onnx") and package.kind == "classification"
    assert open_package(str(pkg), contract.task, CPU).deviation.mismatched == 0
    readme = (pkg / "README.md").read_text()
    assert "synthetic blobs" in readme and '"auc": 0.9' in readme  # the contract's training data and metrics


@pytest.mark.integration
def test_a_configured_package_without_the_extra_is_refused_naming_the_extra(tmp_path):
    """A runtime without bioimageio.spec: one line that names the extra to install."""
    import subprocess
    import sys

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "bioimageio.yaml").write_text("type: model\n")
    code = ("import sys; sys.modules['bioimageio'] = None; sys.modules['bioimageio.spec'] = None\n"
            "from wellwatch.cli import main\n"
            f"sys.exit(main(['check-package', {str(pkg)!r}, '--device', 'cpu']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    errors = [ln for ln in run.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and str(pkg) in errors[0] and "pip install 'wellwatch[bioimageio]'" in errors[0]
