"""Peak memory of reading each hostile file, each in a fresh process.

Decompression bombs (few-kB zlib TIFFs declaring huge images), a many-page bomb and a bit-flipped
frame, read with `wellwatch.core.files.tiff.read_frame` and the default [limits]. For each: the
file's size, the outcome, and the reading process's peak RSS and peak virtual size above what it
held before the read (an untouched np.empty of 7 GB would show in the virtual peak).

    python benchmarks/hostile_files.py        (a few seconds)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = r"""
import json, resource, sys
from wellwatch.core.errors import FrameReadError
from wellwatch.core.files.tiff import read_frame

def vm_peak_kb():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmPeak:')).split()[1])

rss0, vm0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, vm_peak_kb()
try:
    image = read_frame(sys.argv[1])
    outcome = f"read {image.shape} {image.dtype}"
except FrameReadError as e:
    outcome = f"refused ({'retryable' if e.retryable else 'quarantine'}): {e.reason}"
print(json.dumps({"outcome": outcome,
                  "peak_rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
                  "peak_virtual_mb": (vm_peak_kb() - vm0) / 1024}))
"""


def main() -> int:
    import numpy as np
    import tifffile

    from wellwatch.simulator.hostile import flip_bit, tiff_bomb

    work = Path(tempfile.mkdtemp(prefix="wellwatch-hostile-"))
    files = {}
    for name, (w, h, pages) in {"bomb 60000x60000": (60000, 60000, 1), "bomb 20000x20000": (20000, 20000, 1),
                                "bomb 3 pages of 20000x20000": (20000, 20000, 3),
                                "5000 pages of 512x512": (512, 512, 5000)}.items():
        tiff_bomb(work / f"{len(files)}.tif", w, h, pages)
        files[name] = work / f"{len(files)}.tif"
    frame = work / "frame.tif"
    tifffile.imwrite(frame, (np.random.default_rng(0).random((1024, 1024)) * 4000).astype(np.uint16),
                     compression="zlib")
    files["a normal 1024x1024 uint16 frame"] = frame
    flipped = work / "flipped.tif"
    flipped.write_bytes(frame.read_bytes())
    flip_bit(flipped, 30, 3)  # inside the header
    files["the same frame, one header bit flipped"] = flipped
    print(f"{'file':<40}{'bytes':>10}{'peak RSS MB':>13}{'peak virt MB':>14}  outcome")
    for name, path in files.items():
        out = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout)
        print(f"{name:<40}{path.stat().st_size:>10}{r['peak_rss_mb']:>13.1f}{r['peak_virtual_mb']:>14.1f}  "
              f"{r['outcome'][:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
