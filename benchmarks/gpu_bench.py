"""Model-only GPU figures for benchmarks/gpu.sh: each bundled classifier (and its fp16 twin
`NAME.fp16.onnx` when present) on the CUDA provider, at a few fixed batch sizes warmed first.

Prints one JSON object (and writes it to --out). Without a working CUDA provider it says so in one
line and exits 3: nothing is measured on a CPU fallback and called a GPU figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

MODELS = Path(__file__).resolve().parent.parent / "wellwatch" / "models"
CUDA = "CUDAExecutionProvider"
# conv algorithm search once per shape (the shapes are fixed and warmed); the arena grows only as asked
CUDA_OPTIONS = {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE", "arena_extend_strategy": "kSameAsRequested",
                "do_copy_in_default_stream": True}


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(str(path), options, providers=[(CUDA, CUDA_OPTIONS), "CPUExecutionProvider"])
    if s.get_providers()[0] != CUDA:
        raise SystemExit(f"gpu_bench: {path.name}: ONNX Runtime fell back to {s.get_providers()[0]} "
                         "(no GPU, or CUDA/cuDNN libraries missing); nothing measured")
    return s


def measure(path: Path, batches: list[int], seconds: float) -> dict:
    s = session(path)
    inp = s.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    rng = np.random.default_rng(0)
    rows = {}
    for b in batches:
        x = rng.standard_normal([b, *shape[1:]]).astype(dtype)
        for _ in range(5):  # warm: algorithm search and arena growth happen here, not in the timing
            s.run(None, {inp.name: x})
        times, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            s.run(None, {inp.name: x})
            times.append(time.perf_counter() - t0)
        t = np.array(times)
        rows[str(b)] = {"patches_per_s": round(b * len(t) / t.sum()), "p50_ms": round(1000 * np.percentile(t, 50), 3),
                        "p99_ms": round(1000 * np.percentile(t, 99), 3), "runs": len(t)}
        print(f"  {path.name} batch {b:4d}: {rows[str(b)]['patches_per_s']:9d} patches/s, "
              f"p99 {rows[str(b)]['p99_ms']:.2f} ms per batch", file=sys.stderr, flush=True)
    return {"input": [inp.name, inp.type, inp.shape], "batches": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--batches", default="1,16,64,256")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model and batch size")
    args = p.parse_args()
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        print("gpu_bench: this onnxruntime has no CUDA provider (install onnxruntime-gpu); nothing measured",
              file=sys.stderr)
        return 3
    batches = [int(b) for b in args.batches.split(",")]
    names = ["demo-live-dead", "ldc-live-dead"]
    paths = [MODELS / f"{n}{suffix}.onnx" for n in names for suffix in ("", ".fp16")]
    result = {"onnxruntime": ort.__version__, "cuda_options": CUDA_OPTIONS, "models": {}}
    try:
        for path in paths:
            if path.is_file():
                result["models"][path.name] = measure(path, batches, args.seconds)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 3
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
