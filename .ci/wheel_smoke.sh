#!/usr/bin/env bash
# Install wellwatch as users do -- a built wheel in a fresh virtualenv, outside the checkout --
# and check that the installed package works on its own: the bundled models are found (their
# paths must not lead into the source tree) and a short simulated demo runs end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" .
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "$work"/dist/wellwatch-*.whl
cd "$work"  # nothing from the checkout is importable from here
"$work/venv/bin/python" - <<'PY'
import wellwatch
from wellwatch.core.segmentation.segmenters import BUNDLED_SEGMENTATION_MODEL, load_segmenter
from wellwatch.daemon.service import bundled_demo_model

assert "site-packages" in wellwatch.__file__, f"imported from {wellwatch.__file__}, not the installed wheel"
for model in (bundled_demo_model(), BUNDLED_SEGMENTATION_MODEL):
    assert model.is_file() and "site-packages" in str(model), f"bundled model not installed: {model}"
print("smoke: segmentation model", load_segmenter("").name, "loads from", BUNDLED_SEGMENTATION_MODEL)
PY
"$work/venv/bin/wellwatch" demo --wells 2 --fields 1 --timepoints 1 --interval-s 0.01
echo "smoke: the installed wheel works"
