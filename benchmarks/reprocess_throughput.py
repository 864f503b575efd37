"""Frames/s of `wellwatch reprocess` with 1 and 2 scoring actors on a local Ray cluster, and in-process.

    python benchmarks/reprocess_throughput.py [--size 512] [--wells 48] [--fields 2] [--segmentation none|classical]

A simulated plate (bright-field + PI; only BF is processed) is written once; each engine then
reprocesses it, timed from the file list to the last row (Ray's start-up excluded, its actors'
start included). One ORT thread per actor. Prints one line per run and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from wellwatch.harness import local_config  # noqa: E402
from wellwatch.scale.reprocess import reprocess  # noqa: E402
from wellwatch.simulator.spec import SimulationSpec  # noqa: E402
from wellwatch.simulator.writer import write_plate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wells", type=int, default=48)
    parser.add_argument("--fields", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--segmentation", choices=("none", "classical"), default="none")
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        spec = SimulationSpec(fields=args.fields, timepoints=1, size=args.size, treatment="dose_series", seed=2,
                              wells=tuple(f"{'ABCDEFGH'[i // 12]}{i % 12 + 1}" for i in range(args.wells)))
        config = local_config(work, spec, **{"segmentation.method": args.segmentation, "inference.device": "cpu"})
        write_plate(spec, work / "acquisition")
        n = args.wells * args.fields
        print(f"{n} frames of {args.size}x{args.size}, segmentation {args.segmentation}; this machine: "
              f"{os.cpu_count()} CPUs (shared)")
        results = {}
        r = reprocess([config.watch.root], config, engine="local")
        results["local"] = n / r.seconds
        print(f"local (in-process, 1 thread): {results['local']:.1f} frames/s")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            reprocess([config.watch.root], config, engine="ray", workers=1)  # warm: workers and imports
            for workers in (1, 2):
                r = reprocess([config.watch.root], config, engine="ray", workers=workers)
                results[f"ray_{workers}"] = n / r.seconds
                print(f"ray, {workers} actor(s): {results[f'ray_{workers}']:.1f} frames/s ({r.seconds:.1f} s)")
        finally:
            ray.shutdown()
        print(json.dumps({"frames": n, "size": args.size, "segmentation": args.segmentation,
                          "frames_per_s": {k: round(v, 2) for k, v in results.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
