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


def variants(work: Path, name: str, gpu: bool) -> dict[str, tuple[Path, str]]:
    """Variant -> (model file, inference.precision): float32, its float16 twin (GPU only; the backend
    finds NAME.fp16.onnx beside NAME.onnx), the raw-input model and its twin, as files in `work`."""
    from wellwatch.core.inference.backend import OnnxBackend, fp16_twin

    fp32 = work / f"{name}.onnx"
    shutil.copy(MODELS / f"{name}.onnx", fp32)
    out = {"fp32": (fp32, "fp32")}
    try:  # both need the onnx package (the train extra); without it only the float32 model is measured
        from wellwatch.export.fp16 import write_fp16
        from wellwatch.export.in_graph import raw_path, with_normalisation_in_graph

        raw_dir = work / "raw"
        raw_dir.mkdir(exist_ok=True)
        raw = raw_path(raw_dir / fp32.name)
        with_normalisation_in_graph(fp32, raw)
        out["raw"] = (raw, "fp32")
        if gpu:
            for variant, model in (("fp16", fp32), ("raw_fp16", raw)):
                write_fp16(model, OnnxBackend(model, device="cpu", warmup=False).contract, fp16_twin(model))
                out[variant] = (model, "fp16")
    except ImportError as e:
        say(f"gpu_bench: {e.name} is not installed: float16 and in-graph variants skipped")
    return out


def backend_for(path: Path, provider: str, precision: str, binding: str, batches: list[int], threads: int,
                trt: bool = False, cache: Path | None = None):
    from wellwatch.core.inference.backend import OnnxBackend
    from wellwatch.core.config import InferenceConfig, TensorrtConfig

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


def interleaved(fns: dict[str, callable], seconds: float, min_runs: int = 5) -> dict[str, np.ndarray]:
    """Each function's run times, the functions taking turns: on a shared machine a load change then
    hits every variant alike instead of whichever ran during it."""
    times = {k: [] for k in fns}
    end = time.perf_counter() + seconds * len(fns)
    while time.perf_counter() < end or min(map(len, times.values())) < min_runs:
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: np.array(v) for k, v in times.items()}


def model_only(backends: dict, batches: list[int], seconds: float) -> dict:
    """patches/s and p50/p99 per batch of each variant, at each fixed batch size (no padding)."""
    rng = np.random.default_rng(0)
    rows = {k: {} for k in backends}
    for b in batches:
        inputs = {k: inputs_for(be, b, rng) for k, be in backends.items()}
        for k, be in backends.items():
            for _ in range(3):
                be.infer(inputs[k])
        times = interleaved({k: (lambda be=be, x=inputs[k]: be.infer(x)) for k, be in backends.items()}, seconds)
        for k, t in times.items():
            rows[k][str(b)] = {"patches_per_s": round(b * len(t) / float(t.sum())), "p50_ms": ms(np.median(t)),
                               "p99_ms": ms(np.percentile(t, 99)), "runs": len(t)}
    return rows


def padding(bound, plain, sizes: list[int], seconds: float) -> dict:
    """Rows padded up to the next fixed size (I/O binding) against the same rows run unpadded."""
    rng = np.random.default_rng(1)
    rows = {}
    for n in sizes:
        x = inputs_for(plain, n, rng)
        diff = float(np.abs(bound.infer(x) - plain.infer(x)).max())
        t = interleaved({"padded": lambda: bound.infer(x), "unpadded": lambda: plain.infer(x)}, seconds)
        rows[str(n)] = {"padded_to": bound.bound.bucket_for(n), "max_abs_diff": diff,
                        "padded_ms": ms(np.median(t["padded"])), "unpadded_ms": ms(np.median(t["unpadded"]))}
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


def per_frame(backends: dict, frames: list[np.ndarray], repeats: int) -> dict:
    """Prepare (the daemon's prepare_frame) + infer in batches of the largest fixed size, per frame;
    the variants take turns on each frame."""
    from wellwatch.core.model_inputs import prepare_frame

    stats = {k: {"prepare": [], "infer": [], "total": [], "tiles": 0} for k in backends}
    for be in backends.values():  # warm
        be.infer(prepare_frame(frames[0], be.contract).patches[:be.buckets[-1]])
    for _ in range(repeats):
        for f in frames:
            for k, be in backends.items():
                largest = be.buckets[-1]
                t0 = time.perf_counter()
                patches = prepare_frame(f, be.contract).patches
                t1 = time.perf_counter()
                for i in range(0, len(patches), largest):
                    be.infer(patches[i:i + largest])
                t2 = time.perf_counter()
                st = stats[k]
                st["prepare"].append(t1 - t0), st["infer"].append(t2 - t1), st["total"].append(t2 - t0)
                st["tiles"] = len(patches)
    out = {}
    for k, st in stats.items():
        t = np.array(st["total"])
        out[k] = {"prepare_ms": ms(np.median(st["prepare"])), "infer_ms": ms(np.median(st["infer"])),
                  "total_ms": ms(np.median(t)), "p99_ms": ms(np.percentile(t, 99)),
                  "frames_per_s": round(len(t) / float(t.sum()), 2), "tiles_per_frame": st["tiles"], "frames": len(t)}
    return out


def fp16_agreement(fp32, fp16, frames: list[np.ndarray]) -> dict:
    """The float16 twin against the float32 model on the real frames' tiles: its parity, measured
    where it runs (on a GPU, float16 arithmetic)."""
    from wellwatch.core.model_inputs import prepare_frame

    a, b = [], []
    for f in frames:
        patches = prepare_frame(f, fp32.contract).patches
        for i in range(0, len(patches), fp32.buckets[-1]):
            a.append(fp32.infer(patches[i:i + fp32.buckets[-1]]))
            b.append(fp16.infer(patches[i:i + fp32.buckets[-1]]))
    a, b = np.concatenate(a), np.concatenate(b)
    k, threshold = fp32.contract.positive_index, fp32.contract.decision_threshold
    return {"tiles": len(a), "max_abs_diff": float(np.abs(a - b).max()),
            "decisions_changed": int(((a[:, k] >= threshold) != (b[:, k] >= threshold)).sum())}


def measure_variants(entry: dict, name: str, backends: dict, frames: list, batches: list[int], args) -> None:
    """Model only, per 2048 frame, padding and float16 agreement of one model's variants."""
    entry["model_only"] = model_only(backends, batches, args.seconds)
    for k, rows in entry["model_only"].items():
        best = max(rows.values(), key=lambda r: r["patches_per_s"])
        say(f"  {name} {k}: model only, best {best['patches_per_s']} patches/s")
    entry["per_2048_frame"] = per_frame(backends, frames, args.repeats)
    for k, row in entry["per_2048_frame"].items():
        say(f"  {name} {k}: per 2048 frame {row}")
    plain, bound = (next(be for k, be in backends.items() if k.startswith(f"fp32, io_binding {b}"))
                    for b in ("off", "on"))
    sizes = [n for n in (3, 17, 100, 200) if n < bound.buckets[-1]]
    entry["padding"] = padding(bound, plain, sizes, args.seconds / 2)
    say(f"  {name} padding: {entry['padding']}")
    fp16 = next((be for k, be in backends.items() if k.startswith("fp16, io_binding on")), None)
    if fp16 is not None:
        entry["fp16_vs_fp32"] = fp16_agreement(bound, fp16, frames)
        say(f"  {name} fp16 vs fp32: {entry['fp16_vs_fp32']}")
    for be in backends.values():
        be.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--provider", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tensorrt", action="store_true", help="also the TensorRT provider (engine build: minutes)")
    p.add_argument("--tensorrt-only", action="store_true", help="only the float32 models on TensorRT")
    p.add_argument("--models", default="demo-live-dead,ldc-live-dead")
    p.add_argument("--batches", default="1,16,64,256")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per model, variant and batch size")
    p.add_argument("--frames", type=int, default=2, help="2048x2048 frames (each 4 real frames)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime CPU threads (0 = its default)")
    args = p.parse_args()
    import onnxruntime as ort

    from wellwatch.core.errors import ProviderError

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
            files = variants(work, name, gpu and not args.tensorrt_only)
            if args.tensorrt_only:
                files = {"fp32": files["fp32"]}
                args.tensorrt = True
            entry = result["models"][name] = {}
            backends = {}
            for variant, (path, precision) in ([] if args.tensorrt_only else files.items()):
                for binding in ("off", "on"):
                    backend = backend_for(path, args.provider, precision, binding, batches, args.threads)
                    result["provider"] = backend.provider
                    backends[f"{variant}, io_binding {binding}" + (", pinned" if backend.pinned else "")] = backend
            if backends:
                say(f"  {name}: {len(backends)} variants: {', '.join(backends)}")
            if backends:
                measure_variants(entry, name, backends, frames, batches, args)
            if args.tensorrt and "TensorrtExecutionProvider" in ort.get_available_providers():
                trt = backend_for(files["fp32"][0], args.provider, "fp32", "on", batches, args.threads, trt=True,
                                  cache=work / "trt")
                entry["tensorrt"] = {"provider": trt.provider,
                                     **model_only({"trt": trt}, batches, args.seconds)["trt"]}
                say(f"  {name} TensorRT: {entry['tensorrt']}")
                trt.close()
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
