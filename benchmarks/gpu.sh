#!/usr/bin/env bash
# The whole GPU benchmark in a few minutes, for a short loan of a GPU machine:
#   benchmarks/gpu.sh [OUT_DIR]      (default: $OUT if set, else ./gpu-figures)
# 1. model only: the bundled classifiers (and NAME.fp16.onnx twins when present) on the CUDA
#    provider with its options (cuDNN algorithm search, arena), fixed batch sizes warmed first;
# 2. end to end: `wellwatch bench` on 2048x2048 frames (burst frames/s, latency p50/p99 at 3 frames/s
#    moved in from outside the watched folder, default settle time).
# Figures go to OUT_DIR/gpu-model-only.json and OUT_DIR/gpu-e2e.json. On a machine without a GPU
# it says so in one line, writes OUT_DIR/NO_GPU and exits 0 (soft): nothing CPU-measured is
# ever written as a GPU figure.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT_DIR=${1:-${OUT:-./gpu-figures}}
mkdir -p "$OUT_DIR"

no_gpu() {
    echo "gpu.sh: $1; no GPU figures measured" | tee "$OUT_DIR/NO_GPU" >&2
    exit 0
}

command -v nvidia-smi >/dev/null 2>&1 || no_gpu "nvidia-smi not found (no NVIDIA driver)"
nvidia-smi -L >/dev/null 2>&1 || no_gpu "nvidia-smi finds no GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT_DIR/gpu.txt"

echo "[1/2] model only, fixed batch sizes (about 1 minute) ..." >&2
timeout 180 "$PY" benchmarks/gpu_bench.py --out "$OUT_DIR/gpu-model-only.json" >/dev/null
rc=$?
[ $rc -eq 3 ] && no_gpu "ONNX Runtime cannot use the GPU (see the line above)"
[ $rc -ne 0 ] && echo "gpu.sh: model-only step failed (exit $rc); going on" >&2

echo "[2/2] end to end, 2048x2048 frames (a few minutes) ..." >&2
timeout 300 "$PY" -m wellwatch bench --json --size 2048 --wells 24 --fields 2 --timepoints 2 \
    --steady-rate 3 --stage-outside --settle-s 0.3 --naive-frames 4 >"$OUT_DIR/gpu-e2e.json"
rc=$?
[ $rc -ne 0 ] && echo "gpu.sh: end-to-end step failed (exit $rc)" >&2
"$PY" - "$OUT_DIR/gpu-e2e.json" <<'PYEOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
if r.get("provider") != "CUDAExecutionProvider":
    print(f"gpu.sh: the daemon ran on {r.get('provider')}: these are not GPU figures", file=sys.stderr)
print(f"end to end {r['e2e_frames_per_s']:.1f} frames/s of {r['frame_size']} px on {r['provider']}; "
      f"latency at 3/s p50 {1000 * r['latency_p50_s']:.0f} ms, p99 {1000 * r['latency_p99_s']:.0f} ms")
PYEOF
echo "gpu.sh: figures in $OUT_DIR" >&2
