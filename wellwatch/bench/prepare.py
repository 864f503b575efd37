"""`wellwatch bench`'s preparation phase and CPU accounting: where a frame's milliseconds and the cores go.

Preparation is timed stage by stage in this process, one thread, nothing else running: decode
(tifffile, from bytes in memory), normalise, tile (the copy the empty filter reads), empty filter,
and the whole of `prepare_tiles`
(normalise, tile, empty filter and the kept tiles copied out, as a batch receives them). Figures
are milliseconds per megapixel, the best of a few passes over the same frames.

CPU time per thread (Linux /proc) tells which thread of the daemon uses the cores during a phase;
worker processes are reported by pid.
"""

from __future__ import annotations

import os
import threading
import time

from wellwatch.core.contract import ModelContract
from wellwatch.core.preprocess import cut_tiles, empty_mask, normalise_frame, prepare_tiles, tile_origins
from wellwatch.core.files.tiff import decode_frame

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def preparation_ms_per_mpx(files: list[tuple[str, bytes]], contract: ModelContract, passes: int = 3) -> dict[str, float]:
    """ms per megapixel of each preparation stage over `files` (name, TIFF bytes)."""
    images = [decode_frame(name, data) for name, data in files]
    mpx = sum(im.size for im in images) / 1e6
    tiling, norm, qc = contract.tiling, contract.normalisation, contract.empty_filter
    normed = [normalise_frame(im, norm) for im in images]
    tiles = [cut_tiles(n, tile_origins(n.shape, tiling), tiling.tile_size) for n in normed]

    # each result dropped before the next call, as in the daemon: holding them all would time the
    # kernel's first touch of fresh pages instead of the work
    stages = {
        "decode": lambda: _each(files, lambda f: decode_frame(*f)),
        "normalise": lambda: _each(images, lambda im: normalise_frame(im, norm)),
        "tile": lambda: _each(normed, lambda n: cut_tiles(n, tile_origins(n.shape, tiling), tiling.tile_size)),
        "empty_filter": lambda: _each(tiles, lambda t: empty_mask(t, qc)),
        "prepare_tiles": lambda: _each(images, lambda im: prepare_tiles([im], contract)),
    }
    out = {}
    for name, run in stages.items():
        best = float("inf")
        for _ in range(passes):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        out[name] = round(1000 * best / mpx, 3)
    out["decode_and_prepare"] = round(out["decode"] + out["prepare_tiles"], 3)
    return out


def _each(items, fn) -> None:
    for item in items:
        fn(item)


def _cpu_s(stat_path: str) -> float | None:
    try:
        with open(stat_path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


class CpuSampler:
    """CPU seconds used between `start` and `stop`, per Python thread name (native threads such as
    ONNX Runtime's together as "native"), and per extra process (pids given)."""

    def __init__(self, pids: dict[str, int] | None = None):
        self.pids = pids or {}

    def _read(self) -> dict[str, float]:
        names = {t.native_id: t.name for t in threading.enumerate()}
        use: dict[str, float] = {}
        try:
            tids = os.listdir("/proc/self/task")
        except OSError:
            return {}
        for tid in tids:
            cpu = _cpu_s(f"/proc/self/task/{tid}/stat")
            if cpu is not None:
                name = names.get(int(tid), "native")
                name = name.rstrip("0123456789_") if name.startswith(("prepare", "ThreadPool")) else name
                use[name] = use.get(name, 0.0) + cpu
        for label, pid in self.pids.items():
            cpu = _cpu_s(f"/proc/{pid}/stat")
            if cpu is not None:
                use[label] = use.get(label, 0.0) + cpu
        return use

    def start(self) -> None:
        self._t0, self._wall0 = self._read(), time.perf_counter()

    def stop(self) -> dict:
        end, wall = self._read(), time.perf_counter() - self._wall0
        used = {k: round(v - self._t0.get(k, 0.0), 3) for k, v in end.items()}
        used = {k: v for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v > 0}
        return {"wall_s": round(wall, 3), "cpu_s": used, "cores_busy": round(sum(used.values()) / wall, 2) if wall else 0.0}
