"""The GPU path's figures for benchmarks/gpu.sh, and the same figures on the CPU for comparison.

    python benchmarks/gpu_bench.py --out FILE [--provider cuda|cpu] [--tensorrt]

For each bundled classifier, made here in its variants (float32; its float16 twin, GPU only; the
raw-input twin with the normalisation in its graph, export/in_graph.py):
1. model only: patches/s and p50/p99 per batch at fixed batch sizes, with and without I/O binding;
2. padding: a partial batch padded to the next fixed size against the same rows unpadded
   (largest output difference, and time);
3. per 2048x2048 frame (a 2x2 mosaic of real Usiigaci phase-contrast frames, or a simulated frame
   without the data): prepare + infer ms/frame, frames/s and p99, daemon normalisation vs in graph.
Prints one JSON object (and writes it to --out). With --provider cuda and no working CUDA provider
it says so in one line and exits 3: nothing measured on a CPU fallback is called a GPU figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "wellwatch" / "models"
DATA = ROOT.parent / "shared" / "data"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def variants(work: Path, name: str, gpu: bool) -> dict[str, Path]:
    """float32, float16 twin (GPU only) and raw-input model, as files in `work`."""
    from wellwatch.daemon.backend import OnnxBackend, fp16_twin

    fp32 = work / f"{name}.onnx"
    shutil.copy(MODELS / f"{name}.onnx", fp32)
    out = {"fp32": fp32}
    try:  # both need the onnx package (the train extra); without it only the float32 model is measured
        from wellwatch.export.fp16 import write_fp16
        from wellwatch.export.in_graph import raw_path, with_normalisation_in_graph

        raw_dir = work / "raw"
        raw_dir.mkdir(exist_ok=True)
        out["raw"] = raw_path(raw_dir / fp32.name)
        with_normalisation_in_graph(fp32, out["raw"])
        if gpu:
            contract = OnnxBackend(fp32, device="cpu", warmup=False).contract
            write_fp16(fp32, contract, fp16_twin(fp32))
            out["fp16"] = fp16_twin(fp32)
            write_fp16(out["raw"], OnnxBackend(out["raw"], device="cpu", warmup=False).contract, fp16_twin(out["raw"]))
            out["raw_fp16"] = fp16_twin(out["raw"])
    except ImportError as e:
        say(f"gpu_bench: {e.name} is not installed: float16 and in-graph variants skipped")
    return out


def backend_for(path: Path, provider: str, precision: str, binding: str, batches: list[int], threads: int,
                trt: bool = False, cache: Path | None = None):
    from wellwatch.daemon.backend import OnnxBackend
    from wellwatch.daemon.config import InferenceConfig, TensorrtConfig

    cfg = InferenceConfig(device=provider, precision=precision, io_binding=binding, batch_sizes=tuple(batches),
                          require_gpu=provider == "cuda", intra_op_threads=threads,
                          tensorrt=TensorrtConfig(enable=trt, engine_cache_dir=str(cache or ""), fp16=False))
    return OnnxBackend(path, max_batch=max(batches), inference=cfg)


def inputs_for(backend, n: int, rng) -> np.ndarray:
    batch = backend.zeros(n)
    if backend.contract.normalisation_in_graph:
        batch["raw"] = rng.integers(500, 4000, batch["raw"].shape, dtype=np.uint16)
        batch["affine"] = (2000.0, 1 / 300.0)
    else:
        batch[:] = rng.standard_normal(batch.shape).astype(np.float32)
    return batch


def ms(seconds) -> float:
    return round(1000 * float(seconds), 3)


def timed(fn, seconds: float, min_runs: int = 5) -> np.ndarray:
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < min_runs:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return np.array(times)


def model_only(backend, batches: list[int], seconds: float) -> dict:
    rng = np.random.default_rng(0)
    rows = {}
    for b in batches:
        x = inputs_for(backend, b, rng)
        for _ in range(3):
            backend.infer(x)
        t = timed(lambda: backend.infer(x), seconds)
        rows[str(b)] = {"patches_per_s": round(b * len(t) / t.sum()), "p50_ms": ms(np.median(t)),
                        "p99_ms": ms(np.percentile(t, 99)), "runs": len(t)}
    return rows


def padding(bound, plain, sizes: list[int], seconds: float) -> dict:
    """Rows padded up to the next fixed size (I/O binding) against the same rows run unpadded."""
    rng = np.random.default_rng(1)
    rows = {}
    for n in sizes:
        x = inputs_for(plain, n, rng)
        diff = float(np.abs(bound.infer(x) - plain.infer(x)).max())
        tb, tp = timed(lambda: bound.infer(x), seconds), timed(lambda: plain.infer(x), seconds)
        rows[str(n)] = {"padded_to": bound.bound.bucket_for(n), "max_abs_diff": diff,
                        "padded_ms": ms(np.median(tb)), "unpadded_ms": ms(np.median(tp))}
    return rows


def frames_2048(count: int) -> tuple[list[np.ndarray], str]:
    import tifffile

    sets = sorted(DATA.glob("usiigaci-phase/set*/raw.tif"))
    if len(sets) >= 4:
        tiles = [tifffile.imread(p)[:1022, :1022] for p in sets[:4 * count]]
        mosaic = [np.pad(np.block([[a, b], [c, d]]), ((2, 2), (2, 2)), mode="reflect")
                  for a, b, c, d in zip(*[iter(tiles)] * 4)]
        return mosaic, "2x2 mosaics of real Usiigaci phase-contrast frames (1022 px each, reflect-padded to 2048)"
    rng = np.random.default_rng(0)
    return [rng.integers(1000, 3000, (2048, 2048), dtype=np.uint16) for _ in range(count)], "uniform noise frames"


def per_frame(backend, frames: list[np.ndarray], repeats: int) -> dict:
    """Prepare (the daemon's prepare_frame) + infer in batches of the largest fixed size, per frame."""
    from wellwatch.daemon.prepare import prepare_frame

    largest = backend.buckets[-1]
    prep, infer, total = [], [], []
    backend.infer(prepare_frame(frames[0], backend.contract).patches[:largest])
    for _ in range(repeats):
        for f in frames:
            t0 = time.perf_counter()
            patches = prepare_frame(f, backend.contract).patches
            t1 = time.perf_counter()
            for i in range(0, len(patches), largest):
                backend.infer(patches[i:i + largest])
            t2 = time.perf_counter()
            prep.append(t1 - t0), infer.append(t2 - t1), total.append(t2 - t0)
    t = np.array(total)
    return {"prepare_ms": ms(np.median(prep)), "infer_ms": ms(np.median(infer)), "total_ms": ms(np.median(t)),
            "p99_ms": ms(np.percentile(t, 99)), "frames_per_s": round(len(t) / float(t.sum()), 2), "tiles_per_frame": int(len(patches)), "frames": len(t)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--provider", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tensorrt", action="store_true", help="also the TensorRT provider (engine build: minutes)")
    p.add_argument("--models", default="demo-live-dead,ldc-live-dead")
    p.add_argument("--batches", default="1,16,64,256")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per model, variant and batch size")
    p.add_argument("--frames", type=int, default=2, help="2048x2048 frames (each 4 real frames)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime CPU threads (0 = its default)")
    args = p.parse_args()
    import onnxruntime as ort

    from wellwatch.daemon.errors import ProviderError

    gpu = args.provider == "cuda"
    if gpu and "CUDAExecutionProvider" not in ort.get_available_providers():
        say("gpu_bench: this onnxruntime has no CUDA provider (install onnxruntime-gpu); nothing measured")
        return 3
    batches = [int(b) for b in args.batches.split(",")]
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    frames, frames_what = frames_2048(args.frames)
    result = {"onnxruntime": ort.__version__, "provider": None, "batches": batches, "frames": frames_what,
              "models": {}}
    try:
        for name in args.models.split(","):
            files = variants(work, name, gpu)
            entry = result["models"][name] = {"model_only": {}, "per_2048_frame": {}}
            for variant, path in files.items():
                precision = "fp16" if variant.endswith("fp16") else "fp32"
                for binding in ("off", "on"):
                    backend = backend_for(path, args.provider, precision, binding, batches, args.threads)
                    result["provider"] = backend.provider
                    key = f"{variant}, io_binding {binding}" + (", pinned" if backend.pinned else "")
                    entry["model_only"][key] = model_only(backend, batches, args.seconds)
                    best = max(entry["model_only"][key].values(), key=lambda r: r["patches_per_s"])
                    say(f"  {name} {key}: best {best['patches_per_s']} patches/s")
                    entry["per_2048_frame"][key] = per_frame(backend, frames, args.repeats)
                    say(f"  {name} {key}: {entry['per_2048_frame'][key]}")
                    if variant == "fp32" and binding == "on":
                        plain = backend_for(path, args.provider, precision, "off", batches, args.threads)
                        entry["padding"] = padding(backend, plain, [3, 17, 100, 200], args.seconds / 4)
                        say(f"  {name} padding: {entry['padding']}")
                    backend.close()
            if args.tensorrt and "TensorrtExecutionProvider" in ort.get_available_providers():
                backend = backend_for(files["fp32"], args.provider, "fp32", "on", batches, args.threads, trt=True,
                                      cache=work / "trt")
                entry["model_only"][f"fp32 TensorRT ({backend.provider})"] = model_only(backend, batches, args.seconds)
                say(f"  {name} TensorRT: {entry['model_only'][f'fp32 TensorRT ({backend.provider})']}")
    except ProviderError as e:
        say(f"gpu_bench: {e}; nothing measured")
        return 3
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
