"""A BioImage.IO package as the daemon's nuclei segmenter on adcc-paired's LIVE channel (a live-nuclei
stain), beside the classical segmentation and the bundled phase-contrast segmenter.

    python benchmarks/bioimageio_nuclei.py [--package DIR] [--data DIR] [--figure PNG] [--daemon]

Per field: the nuclei the package finds (threshold + distance-transform watershed on its probability
map, [segmentation.package] defaults) and those the classical pipeline finds (intensity Otsu, the
parameters tests/test_segment_on_channel.py uses for these nuclei); seconds per frame for each
segmenter, the bundled phase-contrast network included, one frame at a time. With --daemon, the
daemon itself on all fields (BF read by the live/dead model, cells from LIVE via segment_on), once
with the package and once with the bundled network: frames/s from the daemon's start (models
loaded, pool up, all files present) to the last frame message.
The figure shows both segmentations' outlines on one real field.
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
import tifffile

from wellwatch.core.bundled_models import BUNDLED_SEGMENTATION_MODEL
from wellwatch.core.segmentation.segmenters import load_segmenter
from wellwatch.core.segmentation.classical import ClassicalParams, segment_classical

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
NUCLEI = ClassicalParams(foreground="intensity", downsample=1, min_area=50, max_area=3000)


def per_field(package: str, data: Path) -> tuple[list[dict], dict]:
    segmenters = {"package": load_segmenter(package, device="cpu"),
                  "bundled": load_segmenter(str(BUNDLED_SEGMENTATION_MODEL), device="cpu")}
    rows, seconds = [], {"package": [], "bundled": [], "classical": []}
    for path in sorted(data.glob("*--LIVE.tif")):
        frame = tifffile.imread(path)
        row = {"field": path.name.split("--Z")[0]}
        for name, seg in segmenters.items():
            t0 = time.perf_counter()
            labels = seg.segment(frame)
            seconds[name].append(time.perf_counter() - t0)
            row[name] = int(labels.max())
        t0 = time.perf_counter()
        row["classical"] = int(segment_classical(frame, NUCLEI).max())
        seconds["classical"].append(time.perf_counter() - t0)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows, {k: float(np.median(v)) for k, v in seconds.items()}


def stretched(frame: np.ndarray) -> np.ndarray:
    """The frame contrast-stretched to 0..1 between its 1st and 99.5th percentiles, for display."""
    frame = np.asarray(frame, np.float32)
    low, high = np.percentile(frame, 1), np.percentile(frame, 99.5)
    return np.clip((frame - low) / (high - low), 0, 1)


def figure(package: str, data: Path, field: str, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    frame = tifffile.imread(data / f"{field}--Z00000--T00000--LIVE.tif").astype(np.float32)
    shown = stretched(frame)
    labels = {"BioImage.IO unet2d_nuclei_broad": load_segmenter(package, device="cpu").segment(frame),
              "classical (intensity Otsu)": segment_classical(frame, NUCLEI)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.3))
    for ax, (name, lab) in zip(axes, labels.items()):
        rgb = np.dstack([shown] * 3)
        rgb[find_boundaries(lab, mode="outer")] = (1.0, 0.2, 0.2) if "Bio" in name else (0.2, 1.0, 0.2)
        ax.imshow(rgb)
        ax.set_title(f"{name}: {int(lab.max())} nuclei")
        ax.axis("off")
    fig.suptitle(f"adcc-paired {field}, LIVE channel", y=0.995)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"figure: {out}")


def daemon_fps(model: str, data: Path) -> dict:
    from wellwatch.client import follow  # noqa: F401 (the recorder's subscriber)
    from wellwatch.core.config import load_config
    from wellwatch.harness import free_port, start_daemon

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import StreamRecorder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        for p in data.glob("*.tif"):
            if p.name.endswith(("--BF.tif", "--LIVE.tif")):
                shutil.copy(p, root / p.name)
        n = len(list(root.glob("*--BF.tif")))
        config = load_config(None, {
            "watch.root": str(root), "watch.naming": "scanr", "channels.label_free": "BF",
            "channels.segment_on": "LIVE", "segmentation.method": "model", "models.segmentation.path": model,
            "inference.device": "cpu", "publish.endpoint": f"tcp://127.0.0.1:{free_port()}",
            "publish.snapshot_endpoint": f"tcp://127.0.0.1:{free_port()}", "metrics.port": 0,
            "journal.path": str(Path(tmp) / "journal.sqlite")})
        daemon = start_daemon(config)  # models loaded, pool started: the clock starts when it runs
        t0 = time.perf_counter()
        try:
            rec = StreamRecorder(config)
            rec.start()
            rec.wait_frames(n, timeout=600)
            seconds = time.perf_counter() - t0
        finally:
            daemon.stop()
        return {"frames": n, "seconds": round(seconds, 2), "frames_per_s": round(n / seconds, 2),
                "cells": sum(f["cells"] for f in rec.of_type("frame"))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", default=str(SHARED / "models" / "bioimageio" / "unet2d_nuclei_broad"))
    p.add_argument("--data", default=str(SHARED / "data" / "adcc-paired" / "data"))
    p.add_argument("--figure", default="figs/bioimageio_nuclei_vs_classical.png")
    p.add_argument("--field", default="A2--W00002--P00004")
    p.add_argument("--daemon", action="store_true", help="also frames/s through the daemon, package vs bundled")
    args = p.parse_args(argv)
    data = Path(args.data)
    rows, seconds = per_field(args.package, data)
    package, classical = np.array([r["package"] for r in rows]), np.array([r["classical"] for r in rows])
    summary = {"fields": len(rows), "package_nuclei": int(package.sum()), "classical_nuclei": int(classical.sum()),
               "pearson_r": round(float(np.corrcoef(package, classical)[0, 1]), 3),
               "median_seconds_per_frame": {k: round(v, 3) for k, v in seconds.items()}}
    if args.daemon:
        summary["daemon"] = {"package": daemon_fps(args.package, data),
                             "bundled": daemon_fps(str(BUNDLED_SEGMENTATION_MODEL), data)}
    print(json.dumps(summary, indent=2))
    figure(args.package, data, args.field, Path(args.figure))
    return 0


if __name__ == "__main__":
    sys.exit(main())
