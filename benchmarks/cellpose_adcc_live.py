"""A Cellpose network trained on a teacher's masks of adcc-paired's LIVE channel (a live-nuclei stain),
served by the daemon on the experiments it never saw, beside the package, classical and bundled segmenters.

    nice -n 10 python benchmarks/cellpose_adcc_live.py [--epochs N] [--teacher package|classical] [--work DIR]

The loop a lab runs, with the correction by hand skipped (no hand-annotated nuclei here): the teacher
(`wellwatch segment`, the BioImage.IO nuclei package by default) labels the LIVE fields of the
TRAIN_WELLS experiments, `wellwatch dataset masks --mask-suffix` brings them in, `wellwatch cellpose
train` trains a Cellpose network from scratch and exports it. Then `wellwatch run` (the real daemon,
scanR naming, segment_on LIVE) serves it on the other experiments' fields, and again with the package,
the classical pipeline and the bundled segmenter; cells per field are read from each run's journal.
Frames/s: from the moment the files are copied into the watched folder (daemon started, models
loaded) to the journal holding every field; it includes the segmentation workers' first-frame costs
(cellpose and torch imported on a worker's first Cellpose frame). Agreement with the teacher on
experiments not trained on is what this measures, not accuracy: there is no ground truth.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bioimageio_nuclei import NUCLEI, SHARED, stretched  # noqa: E402

from wellwatch.harness import free_port  # noqa: E402

PIXEL_SIZE_UM = 0.3112
# one well per experiment: train on five, serve on the other four (10 of the 22 fields)
TRAIN_WELLS = ("A1", "A3", "A5", "A7", "A9")
WELLWATCH = [sys.executable, "-m", "wellwatch"]


def live_fields(data: Path, wells) -> list[Path]:
    return sorted(p for p in data.glob("*--LIVE.tif") if p.name.split("--")[0] in wells)


def field_name(path: Path) -> str:
    return path.name.split("--Z")[0]


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def classical_toml() -> str:
    """[segmentation.classical] with the nuclei parameters bioimageio_nuclei.py uses."""
    values = dataclasses.asdict(NUCLEI)
    return "[segmentation.classical]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def teacher_labels(teacher: str, package: str, frames: list[Path], folder: Path) -> Path:
    """NAME.tif beside NAME_masks.tif, written by `wellwatch segment` as a lab would start its annotation."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder.parent / "classical.toml"
    config.write_text(classical_toml())
    how = ["--model", package] if teacher == "package" else ["--classical", "--config", config]
    for frame in frames:
        image = folder / f"{field_name(frame)}.tif"
        shutil.copy(frame, image)
        run(WELLWATCH + ["segment", image, *how, "--out", folder / f"{image.stem}_masks.tif"])
    return folder


def train(labels: Path, work: Path, epochs: int, batch: int, parity: Path) -> dict:
    dataset, onnx = work / "ds", work / "cellpose-adcc-live.onnx"
    shutil.rmtree(dataset, ignore_errors=True)
    run(WELLWATCH + ["dataset", "masks", labels, "--mask-suffix", "_masks", "--out", dataset])
    done = run(WELLWATCH + ["cellpose", "train", dataset, "--epochs", epochs, "--batch", batch,
                            "--pixel-size", PIXEL_SIZE_UM, "--parity-image", parity, "--out", onnx],
               stdout=subprocess.PIPE, text=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])  # the command's last line is its JSON report
    print(json.dumps(report), flush=True)
    return report


def segmentation_toml(name: str, model: str) -> str:
    if name == "cellpose":
        return f'[segmentation]\nmethod = "cellpose"\n[segmentation.cellpose]\nmodel = "{model}"\n'
    if name == "classical":
        return '[segmentation]\nmethod = "classical"\n' + classical_toml()
    # the package, or "" = the bundled phase-contrast segmenter
    return f'[segmentation]\nmethod = "model"\n[models.segmentation]\npath = "{model}"\n'


def daemon_counts(name: str, model: str, fields: list[Path], work: Path) -> dict:
    """`wellwatch run` on the held-out fields (BF + LIVE); cells per field from its journal."""
    run_dir = work / f"daemon-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    root = run_dir / "data"
    root.mkdir(parents=True)
    journal = run_dir / "journal.sqlite"
    config = run_dir / "config.toml"
    config.write_text(f"""[watch]
root = "{root}"
naming = "scanr"
[plate]
pixel_size_um = {PIXEL_SIZE_UM}
[channels]
label_free = "BF"
segment_on = "LIVE"
[inference]
device = "cpu"
[publish]
endpoint = "tcp://127.0.0.1:{free_port()}"
snapshot_endpoint = "tcp://127.0.0.1:{free_port()}"
[metrics]
port = 0
[journal]
path = "{journal}"
""" + segmentation_toml(name, model))
    log = open(run_dir / "daemon.log", "w+")
    daemon = subprocess.Popen(WELLWATCH + ["run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "watching " in (run_dir / "daemon.log").read_text(), daemon, 300, run_dir)
        t0 = time.time()
        for live in fields:  # the pair of each field, each file renamed into place whole
            for path in (live, live.with_name(live.name.replace("--LIVE.tif", "--BF.tif"))):
                shutil.copy(path, root / (path.name + ".part"))
                os.replace(root / (path.name + ".part"), root / path.name)
        rows = wait_for(lambda: counted(journal, len(fields)), daemon, 1200, run_dir)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
        log.close()
    seconds = max(t for _, _, t in rows) - t0
    result = {"counts": {f"{well}--P{field:05d}": cells for (well, field), cells, _ in rows},
              "seconds": round(seconds, 1), "frames_per_s": round(len(fields) / seconds, 3),
              "s_per_frame": round(seconds / len(fields), 2)}
    print(f"[{name}] {len(fields)} fields in {seconds:.1f} s: {json.dumps(result['counts'])}", flush=True)
    return result


def counted(journal: Path, n: int):
    """((well, field), cells, t_done) per field once all n fields are journaled with a cell count."""
    if not journal.exists():
        return None
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT well, field, cells, t_done FROM frames WHERE state = 'done' AND cells IS NOT NULL"
                          ).fetchall()
    return [((w, f), c, t) for w, f, c, t in rows] if len(rows) >= n else None


def wait_for(condition, daemon: subprocess.Popen, timeout: float, run_dir: Path):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = condition()
        if got:
            return got
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon stopped (rc {daemon.returncode}); see {run_dir / 'daemon.log'}")
        time.sleep(0.25)
    raise TimeoutError(f"the daemon did not finish in {timeout} s; see {run_dir / 'daemon.log'}")


def figure(onnx: Path, package: str, frame_path: Path, teacher: str, out: Path,
           crop=(slice(150, 406), slice(150, 406))) -> None:
    """The held-out field with both segmentations' outlines, whole and a crop (both by the daemon's code)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from skimage.segmentation import find_boundaries

    from wellwatch.core.segmentation.classical import segment_classical
    from wellwatch.core.segmentation.maps import ServeOptions
    from wellwatch.core.segmentation.segmenters import load_segmenter

    frame = tifffile.imread(frame_path)
    cellpose = load_segmenter(str(onnx), device="cpu", options=ServeOptions(PIXEL_SIZE_UM)).segment(frame)
    taught = (load_segmenter(package, device="cpu").segment(frame) if teacher == "package"
              else segment_classical(frame, NUCLEI))
    rgb = np.dstack([stretched(frame)] * 3)
    colours = {"teacher": (1.0, 0.25, 0.25), "cellpose": (0.25, 1.0, 1.0)}
    rgb[find_boundaries(taught, mode="inner")] = colours["teacher"]
    rgb[find_boundaries(cellpose, mode="inner")] = colours["cellpose"]
    teacher_name = "BioImage.IO unet2d_nuclei_broad" if teacher == "package" else "classical (intensity Otsu)"
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.9))
    axes[0].imshow(rgb)
    y, x = crop
    axes[0].add_patch(matplotlib.patches.Rectangle((x.start, y.start), x.stop - x.start, y.stop - y.start,
                                                   fill=False, edgecolor="yellow", linewidth=1))
    axes[0].set_title(f"whole field: Cellpose {int(cellpose.max())}, teacher {int(taught.max())} nuclei")
    axes[1].imshow(rgb[crop], interpolation="nearest")
    axes[1].set_title("the yellow crop, enlarged")
    for ax in axes:
        ax.axis("off")
    fig.legend([Line2D([], [], color=colours["cellpose"], lw=3), Line2D([], [], color=colours["teacher"], lw=3)],
               ["Cellpose, trained on the teacher's masks of other experiments", f"teacher: {teacher_name}"],
               loc="lower center", ncol=2)
    fig.suptitle(f"adcc-paired {field_name(frame_path)} (an experiment not trained on), LIVE channel", y=0.99)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"figure: {out}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", default=str(SHARED / "models" / "bioimageio" / "unet2d_nuclei_broad"))
    p.add_argument("--data", default=str(SHARED / "data" / "adcc-paired" / "data"))
    p.add_argument("--teacher", choices=("package", "classical"), default="package")
    p.add_argument("--epochs", type=int, default=30)
    # 8 crops an epoch either way: batches of 2 make 4 optimiser steps of each epoch's compute, not 1
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--work", default="runs/cellpose-adcc-live")
    p.add_argument("--model", help="serve this exported Cellpose ONNX instead of training one")
    p.add_argument("--figure", default="docs/results/cellpose_adcc_live.png")
    p.add_argument("--field", default="A2--W00002--P00004", help="the held-out field of the figure")
    args = p.parse_args(argv)
    data, work = Path(args.data), Path(args.work).resolve()
    train_frames = live_fields(data, TRAIN_WELLS)
    held_out = [f for f in sorted(data.glob("*--LIVE.tif")) if f not in train_frames]
    print(f"training on {len(train_frames)} fields of wells {', '.join(TRAIN_WELLS)}; "
          f"serving on {len(held_out)} fields of the other wells", flush=True)
    summary = {"teacher": args.teacher, "train_fields": [field_name(f) for f in train_frames]}
    if args.model:
        onnx = Path(args.model).resolve()
    else:
        labels = teacher_labels(args.teacher, args.package, train_frames, work / "labels")
        summary["training"] = train(labels, work, args.epochs, args.batch, train_frames[0])
        onnx = Path(summary["training"]["onnx"]).resolve()
    served = {name: daemon_counts(name, model, held_out, work)
              for name, model in (("cellpose", str(onnx)), ("package", args.package), ("classical", ""),
                                  ("bundled", ""))}
    fields = sorted(served["cellpose"]["counts"])
    counts = {name: np.array([s["counts"][f] for f in fields]) for name, s in served.items()}
    summary["fields"] = {f: {name: int(c[i]) for name, c in counts.items()} for i, f in enumerate(fields)}
    summary["totals"] = {name: int(c.sum()) for name, c in counts.items()}
    summary["pearson_r_cellpose"] = {other: round(float(np.corrcoef(counts["cellpose"], counts[other])[0, 1]), 3)
                                     for other in ("package", "classical")}
    summary["daemon"] = {name: {k: s[k] for k in ("seconds", "frames_per_s", "s_per_frame")}
                         for name, s in served.items()}
    print(json.dumps(summary, indent=2), flush=True)
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    figure(onnx, args.package, data / f"{args.field}--Z00000--T00000--LIVE.tif", args.teacher, Path(args.figure))
    return 0


if __name__ == "__main__":
    sys.exit(main())
