#!/usr/bin/env bash
# The whole GPU benchmark in a few minutes, for a short loan of a GPU machine:
#   benchmarks/gpu.sh [OUT_DIR]      (default: $OUT if set, else ./gpu-figures)
# It runs on a bare copy of the repository: wellwatch is imported from the working tree through a
# folder of links (no pip, no network); only onnxruntime-gpu and the runtime's libraries must be
# there already (pip is tried once, briefly, if they are not). Steps, each under its own timeout:
# 1. model only and per 2048x2048 frame (benchmarks/gpu_bench.py): float32, float16 twin and
#    normalisation-in-graph variants, with and without I/O binding (pinned host buffers), fixed
#    batch sizes warmed first, the padding check, float16 against float32 on real tiles;
# 2. TensorRT (float32 models, engine cache) when ONNX Runtime has it;
# 3, 4. end to end: `wellwatch bench` on 2048x2048 frames (burst frames/s, latency p50/p99 at 3
#    frames/s moved in from outside the watched folder), float32 then the float16 twin.
# Figures go to OUT_DIR/gpu-model-only.json, gpu-tensorrt.json, gpu-e2e-fp32.json, gpu-e2e-fp16.json
# and env.txt; worst case about 10 minutes (the steps' timeouts), typically 5-6. Without
# a GPU (or when ONNX Runtime cannot use it) it says why in one line, writes OUT_DIR/NO_GPU and
# exits 0: nothing measured on a CPU is ever written as a GPU figure.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT_DIR=${1:-${OUT:-./gpu-figures}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

no_gpu() {
    echo "gpu.sh: $1; no GPU figures measured" | tee "$OUT_DIR/NO_GPU" >&2
    exit 0
}

command -v nvidia-smi >/dev/null 2>&1 || no_gpu "nvidia-smi not found (no NVIDIA driver)"
nvidia-smi -L >/dev/null 2>&1 || no_gpu "nvidia-smi finds no GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT_DIR/env.txt"

# --- a Python that imports wellwatch from this tree -----------------------------------------
PY=${PYTHON:-}
[ -z "$PY" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
[ -z "$PY" ] && PY=$(command -v python3)
[ -n "$PY" ] || no_gpu "no python3"
if ! "$PY" -c "import wellwatch.core.inference.backend" >/dev/null 2>&1; then
    # the package maps wellwatch.daemon -> daemon/ etc. (pyproject.toml); rebuild that map with links
    LINKS=$(mktemp -d)/site
    mkdir -p "$LINKS/wellwatch"
    for f in wellwatch/*; do ln -s "$REPO/$f" "$LINKS/wellwatch/$(basename "$f")"; done
    for d in daemon training export simulator dashboard scale; do ln -s "$REPO/$d" "$LINKS/wellwatch/$d"; done
    export PYTHONPATH="$LINKS${PYTHONPATH:+:$PYTHONPATH}"
fi
missing=$("$PY" - <<'PYEOF'
import importlib
need = ["numpy", "onnxruntime", "tifffile", "zmq", "watchdog", "prometheus_client", "skimage", "scipy"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PYEOF
)
if [ -n "$missing" ]; then
    echo "gpu.sh: missing $missing; trying pip once (2 minutes at most) ..." >&2
    timeout 120 "$PY" -m pip install -q onnxruntime-gpu numpy tifffile pyzmq watchdog prometheus-client \
        scikit-image scipy nd2 onnx >/dev/null 2>&1 || true
    "$PY" -c "import onnxruntime, numpy, tifffile, zmq, watchdog, prometheus_client, skimage, scipy" 2>/dev/null \
        || no_gpu "Python packages missing ($missing) and pip could not install them (no registry?)"
fi
"$PY" -c "import onnx" 2>/dev/null || echo "gpu.sh: onnx not installed: float16 and in-graph variants skipped" >&2

# --- can ONNX Runtime use the GPU? one line saying why not --------------------------------------
"$PY" - "$OUT_DIR/env.txt" 2>"$OUT_DIR/ort-load.log" <<'PYEOF' || no_gpu "$(tail -n 1 "$OUT_DIR/env.txt") $(grep -o 'with error: .*' "$OUT_DIR/ort-load.log" | tail -n 1 | cut -c 1-200)"
import sys
import onnxruntime as ort
from wellwatch.core.inference.pinned import pin
from wellwatch.daemon.service import bundled_demo_model
import numpy as np
log = open(sys.argv[1], "a")
print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}", file=log)
if "CUDAExecutionProvider" not in ort.get_available_providers():
    print("this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)", file=log)
    sys.exit(1)
ort.set_default_logger_severity(3)  # ORT's own reason goes to ort-load.log; the shell quotes it
s = ort.InferenceSession(str(bundled_demo_model()), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
if s.get_providers()[0] != "CUDAExecutionProvider":
    print("ONNX Runtime cannot load its CUDA provider:", file=log)
    sys.exit(1)
print(f"CUDA provider loads; pinned host memory: {pin(np.zeros(1 << 20, np.uint8))}", file=log)
PYEOF
cat "$OUT_DIR/env.txt" >&2

echo "[1/4] model only and per 2048x2048 frame (2-3 minutes) ..." >&2
timeout 240 "$PY" benchmarks/gpu_bench.py --provider cuda --seconds 1 --frames 2 --repeats 3 \
    --out "$OUT_DIR/gpu-model-only.json" >/dev/null
rc=$?
[ $rc -eq 3 ] && no_gpu "ONNX Runtime cannot use the GPU (see the line above)"
[ $rc -ne 0 ] && echo "gpu.sh: model-only step failed (exit $rc); going on" >&2

if "$PY" -c "import onnxruntime as o, sys; sys.exit('TensorrtExecutionProvider' not in o.get_available_providers())"; then
    echo "[2/4] TensorRT, float32 models (engine builds: 1-2 minutes) ..." >&2
    timeout 150 "$PY" benchmarks/gpu_bench.py --provider cuda --tensorrt-only --seconds 1 \
        --out "$OUT_DIR/gpu-tensorrt.json" >/dev/null || echo "gpu.sh: TensorRT step failed or timed out" >&2
else
    echo "[2/4] this onnxruntime has no TensorRT provider; skipped" >&2
fi

E2E="--json --size 2048 --wells 12 --fields 2 --timepoints 2 --steady-rate 3 --stage-outside --settle-s 0.3 --naive-frames 4"
MODELS=$(mktemp -d)
cp wellwatch/models/demo-live-dead.onnx "$MODELS/"
echo "[3/4] end to end, float32, 2048x2048 frames (about 1 minute) ..." >&2
timeout 120 "$PY" -m wellwatch bench $E2E --model "$MODELS/demo-live-dead.onnx" >"$OUT_DIR/gpu-e2e-fp32.json" \
    || echo "gpu.sh: end-to-end float32 step failed" >&2
echo "[4/4] end to end, the float16 twin (inference.precision = auto picks it on a GPU) ..." >&2
if "$PY" - "$MODELS/demo-live-dead.onnx" <<'PYEOF'
import sys
from wellwatch.core.inference.backend import OnnxBackend, fp16_twin
from wellwatch.export.fp16 import write_fp16
m = sys.argv[1]
write_fp16(m, OnnxBackend(m, device="cpu", warmup=False).contract, fp16_twin(m))
PYEOF
then
    timeout 120 "$PY" -m wellwatch bench $E2E --model "$MODELS/demo-live-dead.onnx" >"$OUT_DIR/gpu-e2e-fp16.json" \
        || echo "gpu.sh: end-to-end float16 step failed" >&2
else
    echo "gpu.sh: no float16 twin could be made (onnx missing?); step skipped" >&2
fi
for f in "$OUT_DIR"/gpu-e2e-*.json; do
    "$PY" - "$f" <<'PYEOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
if r.get("provider") not in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
    print(f"gpu.sh: {sys.argv[1]}: the daemon ran on {r.get('provider')}: these are not GPU figures", file=sys.stderr)
print(f"{sys.argv[1].rsplit('/', 1)[-1]}: end to end {r['e2e_frames_per_s']:.1f} frames/s of {r['frame_size']} px "
      f"on {r['provider']}; latency at 3/s p50 {1000 * r['latency_p50_s']:.0f} ms, p99 {1000 * r['latency_p99_s']:.0f} ms",
      file=sys.stderr)
PYEOF
done
echo "gpu.sh: figures in $OUT_DIR" >&2
