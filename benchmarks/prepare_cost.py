"""Preparation cost, ms per megapixel, of this tree against an earlier revision, in one run.

    python benchmarks/prepare_cost.py [--before 27f380a] [--size 1024] [--frames 16] [--rounds 15]

The earlier revision's `core/files/tiff.py` and `core/preprocess.py` are taken from git and
imported beside the current ones; both time decode (TIFF bytes -> image) and `prepare_tiles`
(normalise, tile, empty filter, kept tiles out) on the same simulated frames with the bundled demo
model's contract, one thread, rounds interleaved (before, after, before, ...) so that other load on
a shared machine hits both alike. Prints the best and the median round per stage, and checks
that both give identical patches.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_revision(rev: str, name: str, folder: Path):
    """daemon/NAME.py at `rev`, its relative imports pointed at the installed package."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:daemon/{name}.py"], check=True,
                            capture_output=True, text=True).stdout
    source = re.sub(r"^from \.(\w+) import", r"from wellwatch.daemon.\1 import", source, flags=re.M)
    path = folder / f"{name}_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"{name}_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", default="27f380a", help="git revision to compare with (default: before the preparation changes)")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()

    from wellwatch.core import preprocess
    from wellwatch.core.files import tiff as reader
    from wellwatch.core.inference.backend import OnnxBackend
    from wellwatch.core.bundled_models import bundled_demo_model
    from wellwatch.simulator.plate import iter_fields
    from wellwatch.simulator.spec import SimulationSpec, parse_wells
    from wellwatch.simulator.writer import tiff_bytes

    contract = OnnxBackend(bundled_demo_model(), "cpu", warmup=False).contract
    spec = SimulationSpec(wells=parse_wells(str(max(1, args.frames // 2)), 96), fields=2, timepoints=1,
                          size=args.size, channels=("BF",), treatment="dose_series", plate_name="p", seed=3)
    files = [tiff_bytes(f.images["BF"]) for f in iter_fields(spec)][:args.frames]
    mpx = len(files) * args.size ** 2 / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        old = {"reader": load_revision(args.before, "reader", Path(tmp)),
               "preprocess": load_revision(args.before, "preprocess", Path(tmp))}
    sides = {f"before ({args.before})": old, "after (this tree)": {"reader": reader, "preprocess": preprocess}}

    for mods in sides.values():  # identical numbers, or the comparison means nothing
        images = [mods["reader"].decode_frame("f.tif", d) for d in files]
        mods["patches"] = [mods["preprocess"].prepare_tiles([im], contract)[0] for im in images]
        mods["images"] = images
    first, second = (m["patches"] for m in sides.values())
    identical = all(np.array_equal(a, b) for a, b in zip(first, second))

    times = {label: {"decode": [], "prepare_tiles": []} for label in sides}
    for _ in range(args.rounds):
        for label, mods in sides.items():
            t0 = time.perf_counter()
            for d in files:
                mods["reader"].decode_frame("f.tif", d)
            t1 = time.perf_counter()
            for im in mods["images"]:
                mods["preprocess"].prepare_tiles([im], contract)
            t2 = time.perf_counter()
            times[label]["decode"].append(1000 * (t1 - t0) / mpx)
            times[label]["prepare_tiles"].append(1000 * (t2 - t1) / mpx)
    result = {"frames": len(files), "size": args.size, "identical_patches": identical, "ms_per_mpx": {}}
    for label, stages in times.items():
        result["ms_per_mpx"][label] = {f"{stage}_{how}": round(float(fn(v)), 3) for stage, v in stages.items()
                                       for how, fn in (("best", np.min), ("median", np.median))}
    print(json.dumps(result, indent=1))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
