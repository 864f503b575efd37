"""The GPU path, exercised on the CPU: provider options from the config, the provider really got,
the float16 twin only on a GPU, I/O binding on fixed padded batch sizes, and models that normalise
inside their graph (raw uint16 tiles) giving the daemon's own outputs on real frames."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from wellwatch.core.inference.backend import OnnxBackend, fp16_twin
from wellwatch.core.config import CudaConfig, InferenceConfig, TensorrtConfig, load_config
from wellwatch.core.contract import EmptyFilter, Normalisation
from wellwatch.core.errors import ConfigError, ContractError, ProviderError
from wellwatch.core.model_inputs import prepare_frame
from wellwatch.core.inference.providers import CPU, CUDA, TENSORRT, provider_chain
from wellwatch.core.files.tiff import read_frame
from wellwatch.core.bundled_models import bundled_demo_model

from .conftest import shared_data


def cuda_really_works() -> bool:
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return False
    ort.set_default_logger_severity(4)
    try:
        s = ort.InferenceSession(str(bundled_demo_model()), providers=[CUDA, CPU])
    finally:
        ort.set_default_logger_severity(2)
    return s.get_providers()[0] == CUDA


NO_GPU = not cuda_really_works()


# --- config and the provider chain -------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("text, key, why", [
    ("[inference.cuda]\ncudnn_conv_algo_search = 'FAST'\n", "inference.cuda.cudnn_conv_algo_search",
     "allowed: EXHAUSTIVE, HEURISTIC, DEFAULT"),
    ("[inference.cuda]\narena_extend_strategy = 'grow'\n", "inference.cuda.arena_extend_strategy",
     "allowed: kNextPowerOfTwo, kSameAsRequested"),
    ("[inference.cuda]\ngpu_mem_limit_mb = -1\n", "inference.cuda.gpu_mem_limit_mb", "allowed range"),
    ("[inference.cuda]\ndo_copy_in_default_stream = 1\n", "inference.cuda.do_copy_in_default_stream", "true or false"),
    ("[inference]\nprecision = 'half'\n", "inference.precision", "allowed: auto, fp32, fp16"),
    ("[inference]\nio_binding = 'yes'\n", "inference.io_binding", "allowed: auto, on, off"),
    ("[inference]\nbatch_sizes = [64, 16]\n", "inference.batch_sizes", "strictly ascending"),
    ("[inference]\nbatch_sizes = [0, 16]\n", "inference.batch_sizes", "strictly ascending"),
    ("[inference]\nbatch_sizes = [16, 512]\n", "inference.batch_sizes", "batching.max_batch \\(256\\)"),
    ("[inference]\nbatch_sizes = '16'\n", "inference.batch_sizes", "list of integers"),
    ("[inference]\ndevice = 'cpu'\nprecision = 'fp16'\n", "inference.precision", "for GPUs"),
    ("[inference]\ndevice = 'cpu'\n[inference.tensorrt]\nenable = true\n", "inference.tensorrt.enable", "needs a GPU"),
    ("[inference.tensorrt]\nenable = true\nengine_cache_dir = ''\n", "inference.tensorrt.engine_cache_dir",
     "folder for built engines"),
    ("[inference.tensorrt]\nengine_cache = 'x'\n", "inference.tensorrt.engine_cache", "unknown key"),
])
def test_bad_inference_values_name_the_dotted_key(tmp_path, text, key, why):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=why) as e:
        load_config(path)
    assert e.value.key == key


@pytest.mark.unit
def test_provider_chain_names_the_options_as_onnx_runtime_does(tmp_path):
    cfg = InferenceConfig(cuda=CudaConfig(device_id=1, cudnn_conv_algo_search="HEURISTIC", gpu_mem_limit_mb=512,
                                          do_copy_in_default_stream=False),
                          tensorrt=TensorrtConfig(enable=True, engine_cache_dir=str(tmp_path), fp16=True))
    inputs = [("input", (1, 64, 64))]
    chain = provider_chain(cfg, [TENSORRT, CUDA, CPU], inputs, [4, 16, 256])
    assert [name for name, _ in chain] == [TENSORRT, CUDA, CPU]
    trt, cuda = chain[0][1], chain[1][1]
    assert trt["trt_engine_cache_enable"] == "1" and trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_fp16_enable"] == "1" and trt["device_id"] == "1"
    assert trt["trt_profile_min_shapes"] == "input:4x1x64x64" and trt["trt_profile_max_shapes"] == "input:256x1x64x64"
    assert cuda == {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested",
                    "do_copy_in_default_stream": "0", "gpu_mem_limit": str(512 * 1024 * 1024)}
    # TensorRT only when enabled and present; CUDA only when present; the CPU always, last
    assert [n for n, _ in provider_chain(dataclasses.replace(cfg, tensorrt=TensorrtConfig()), [TENSORRT, CUDA, CPU],
                                         inputs, [4])] == [CUDA, CPU]
    assert [n for n, _ in provider_chain(cfg, [CUDA, CPU], inputs, [4])] == [CUDA, CPU]
    assert [n for n, _ in provider_chain(cfg, [CPU], inputs, [4])] == [CPU]
    assert provider_chain(dataclasses.replace(cfg, device="cpu", tensorrt=TensorrtConfig()), [TENSORRT, CUDA, CPU],
                          inputs, [4]) == [(CPU, {})]


@pytest.mark.unit
@pytest.mark.skipif(not NO_GPU, reason="CUDA works here: the fallback cannot be seen")
def test_the_provider_really_got_is_reported_and_a_required_gpu_refused(caplog):
    backend = OnnxBackend(bundled_demo_model(), warmup=False)
    assert backend.provider == CPU and not backend.io_binding and not backend.pinned
    assert "provider=CPUExecutionProvider" in backend.describe()
    with pytest.raises(ProviderError, match="require_gpu is true but ONNX Runtime gave CPUExecutionProvider"):
        OnnxBackend(bundled_demo_model(), require_gpu=True, warmup=False)


@pytest.mark.unit
@pytest.mark.skipif(not NO_GPU, reason="CUDA works here: the fallback cannot be seen")
def test_a_tensorrt_provider_that_cannot_load_falls_back_with_one_line_and_a_clean_stdout(tmp_path, capsys, caplog):
    import onnxruntime as ort

    if TENSORRT not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no TensorRT provider")
    cfg = InferenceConfig(tensorrt=TensorrtConfig(enable=True, engine_cache_dir=str(tmp_path)), warmup=False)
    backend = OnnxBackend(bundled_demo_model(), inference=cfg)
    assert backend.requested == [TENSORRT, CUDA, CPU] and backend.provider == CPU
    assert capsys.readouterr().out == ""  # ORT's fallback banner would corrupt a --json output
    assert any("TensorrtExecutionProvider was requested" in r.getMessage() for r in caplog.records)


# --- I/O binding on fixed batch sizes ------------------------------------------------------

def real_tiles(contract, n_frames: int = 2) -> np.ndarray:
    frames = [read_frame(str(shared_data("usiigaci-phase", f"set{i}", "raw.tif"))) for i in range(1, n_frames + 1)]
    return np.concatenate([prepare_frame(f, contract).patches for f in frames])


@pytest.mark.unit
def test_io_binding_with_padding_gives_the_unpadded_outputs_on_real_tiles():
    plain = OnnxBackend(bundled_demo_model(), device="cpu", warmup=False)
    bound = OnnxBackend(bundled_demo_model(), max_batch=64, inference=InferenceConfig(
        device="cpu", io_binding="on", batch_sizes=(1, 8, 64, 256)))  # sizes above the model's max_batch: unused
    assert bound.io_binding and bound.pad_to_buckets and not bound.pinned and bound.buckets == [1, 8, 64]
    tiles = real_tiles(plain.contract)
    assert len(tiles) > 200
    # sizes that fill a bucket, pad one (a larger batch first leaves rows that must not leak), and split
    for n in (64, 5, 1, 9, 63, len(tiles), 3):
        got, expected = bound.infer(tiles[:n]), plain.infer(tiles[:n])
        assert got.shape == (n, 2)
        np.testing.assert_allclose(got, expected, atol=1e-6)
    assert bound.infer(tiles[:0]).shape == (0, 2)
    bound.close()


# --- the float16 twin ------------------------------------------------------------------------

@pytest.fixture
def model_with_fp16_twin(tmp_path):
    pytest.importorskip("onnx")
    from wellwatch.export.fp16 import write_fp16

    model = tmp_path / "demo.onnx"
    model.write_bytes(bundled_demo_model().read_bytes())
    contract = OnnxBackend(model, device="cpu", warmup=False).contract
    write_fp16(model, contract, fp16_twin(model))
    return model


@pytest.mark.unit
@pytest.mark.skipif(not NO_GPU, reason="on a GPU the twin is chosen (benchmarks/gpu.sh measures it)")
def test_the_fp16_twin_is_used_only_on_a_gpu(model_with_fp16_twin):
    auto = OnnxBackend(model_with_fp16_twin, warmup=False)
    assert auto.path == str(model_with_fp16_twin) and auto.precision == "float32"
    with pytest.raises(ProviderError, match="precision = 'fp16' but ONNX Runtime gave CPUExecutionProvider"):
        OnnxBackend(model_with_fp16_twin, inference=InferenceConfig(precision="fp16", warmup=False))


@pytest.mark.unit
def test_fp16_without_a_twin_is_refused_naming_the_file(tmp_path):
    model = tmp_path / "alone.onnx"
    model.write_bytes(bundled_demo_model().read_bytes())
    with pytest.raises(ContractError, match="no alone.fp16.onnx beside it") as e:
        OnnxBackend(model, inference=InferenceConfig(precision="fp16", warmup=False))
    assert e.value.path == str(model)


# --- normalisation inside the graph ----------------------------------------------------------

@pytest.fixture(scope="module")
def raw_model(tmp_path_factory):
    pytest.importorskip("onnx")
    from wellwatch.export.in_graph import raw_path, with_normalisation_in_graph

    out = raw_path(tmp_path_factory.mktemp("raw") / "demo-live-dead.onnx")
    with_normalisation_in_graph(bundled_demo_model(), out)
    return out


REAL_FRAMES = [("usiigaci-phase", "set3", "raw.tif"), ("usiigaci-phase", "set17", "raw.tif"),
               ("nis-timelapse", "20180101ef002xy01t05.tif"),
               ("adcc-paired", "data", "A1--W00001--P00001--Z00000--T00000--BF.tif")]


@pytest.mark.unit
@pytest.mark.parametrize("method", ["robust_zscore", "percentile", "fixed"])
def test_in_graph_normalisation_equals_the_daemons_on_real_frames(tmp_path, raw_model, method):
    from wellwatch.export.in_graph import with_normalisation_in_graph

    params = {"robust_zscore": {}, "percentile": {"low": 1.0, "high": 99.0}, "fixed": {"mean": 3000.0, "std": 400.0}}
    daemon_side, graph_side = bundled_demo_model(), raw_model
    if method != "robust_zscore":  # the same network under another contract normalisation
        daemon_side, graph_side = retarget(tmp_path, Normalisation(method, params[method]))
        with_normalisation_in_graph(daemon_side, graph_side)
    reference = OnnxBackend(daemon_side, device="cpu", warmup=False)
    raw = OnnxBackend(graph_side, inference=InferenceConfig(device="cpu", io_binding="on", batch_sizes=(16, 256)))
    assert raw.contract.normalisation_in_graph and raw.contract.normalisation.method == method
    seen = 0
    for parts in REAL_FRAMES:
        path = shared_data(*parts)
        frame = read_frame(str(path))
        ours, theirs = prepare_frame(frame, raw.contract), prepare_frame(frame, reference.contract)
        assert ours.patches.dtype.names == ("raw", "affine") and ours.patches["raw"].dtype == np.uint16
        assert ours.n_empty == theirs.n_empty and (ours.tile_origins == theirs.tile_origins).all()
        np.testing.assert_allclose(raw.infer(ours.patches), reference.infer(theirs.patches), atol=1e-5)
        seen += len(ours.patches)
    assert seen > 100


def retarget(tmp_path, norm: Normalisation):
    """The demo network with another normalisation in its contract (same weights; every tile kept,
    since the empty filter's threshold belongs to the robust z-score)."""
    import onnx

    from wellwatch.export.metadata import set_metadata

    contract = dataclasses.replace(OnnxBackend(bundled_demo_model(), device="cpu", warmup=False).contract,
                                   normalisation=norm, empty_filter=EmptyFilter("none"))
    proto = onnx.load(str(bundled_demo_model()))
    set_metadata(proto, contract)
    out = tmp_path / f"demo-{norm.method}.onnx"
    onnx.save(proto, str(out))
    return out, tmp_path / f"demo-{norm.method}.raw.onnx"


@pytest.mark.unit
def test_only_affine_tile_models_move_their_normalisation_into_the_graph(tmp_path):
    pytest.importorskip("onnx")
    from wellwatch.core.bundled_models import bundled_model
    from wellwatch.export.errors import ExportError
    from wellwatch.export.in_graph import with_normalisation_in_graph

    with pytest.raises(ExportError, match="only tile live_dead models"):
        with_normalisation_in_graph(bundled_model("phase-segmentation.onnx"), tmp_path / "seg.raw.onnx")
    flat = dataclasses.replace(OnnxBackend(bundled_demo_model(), device="cpu", warmup=False).contract,
                               normalisation=Normalisation("flatfield", {"sigma": 30.0}), normalisation_in_graph=True)
    with pytest.raises(ContractError, match="'flatfield' cannot run in the graph"):
        flat.validate("x")


@pytest.mark.integration
def test_the_daemon_serves_a_raw_model_with_the_counts_of_the_float_model(tmp_path, raw_model, recorder_for):
    from wellwatch.harness import local_config, start_daemon
    from wellwatch.simulator.spec import SimulationSpec
    from wellwatch.simulator.writer import write_plate

    counts = {}
    for name, model in (("float", bundled_demo_model()), ("raw", raw_model)):
        spec = SimulationSpec(wells=("A1", "B2"), fields=1, timepoints=1, size=256, cells_per_field=8,
                              channels=("BF",), plate_name="p", seed=5, write_mode="rename")
        work = tmp_path / name
        config = local_config(work, spec, model=str(model), **{"inference.io_binding": "on"})
        running = start_daemon(config)
        try:
            rec = recorder_for(config)
            write_plate(spec, work / "acquisition")
            frames = rec.wait_frames(2, timeout=60)
        finally:
            assert running.stop() == 0
        counts[name] = sorted((f["well"], f["counts"]["live"], f["counts"]["dead"], f["counts"]["empty"])
                              for f in frames)
    assert counts["raw"] == counts["float"] and sum(c[1] + c[2] for c in counts["raw"]) > 0


@pytest.mark.unit
def test_export_raw_command_checks_real_frames_and_writes_the_manifest(tmp_path, capsys):
    pytest.importorskip("onnx")
    import json

    from wellwatch.cli import main
    from wellwatch.core.contract import file_sha256

    out = tmp_path / "demo.raw.onnx"
    frame = shared_data("usiigaci-phase", "set5", "raw.tif")
    assert main(["export-raw", str(bundled_demo_model()), "--out", str(out), "--parity-image", str(frame)]) == 0
    assert "largest difference 0" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "demo.raw.onnx.manifest.json").read_text())
    assert manifest["sha256"] == file_sha256(out) and manifest["contract"]["normalisation_in_graph"] is True
    assert manifest["parity"]["tiles"] > 100 and manifest["parity"]["same_empty_tiles"] is True
    assert OnnxBackend(out, device="cpu", warmup=False).contract.normalisation_in_graph
