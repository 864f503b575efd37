"""`wellwatch bench segment`: segmentation quality and speed on real annotated frames.

For each method (classical: the tuned ClassicalParams defaults; model: a segmentation ONNX model)
on image/mask pairs (default: Usiigaci phase-contrast sets 25-30, the first bundled model's test
split; the bundled model now trains on 25-29, and the per-group lines say how many frames it saw):

- quality: F1 and AP (= TP / (TP + FP + FN), the DSB 2018 / StarDist / Cellpose sense) at IoU 0.5
  and 0.75, one-to-one matching, summed over frames; mean absolute cell-count error per frame;
- speed on one core: frames one after another in this process, pinned to one CPU where the OS
  allows it, ONNX Runtime with 1 intra-op thread;
- speed on all cores: a process pool with one worker per core, each frame one task, each worker
  building its own segmenter (1 thread each); for the model also one process with all threads.
  The faster of the two is reported as the model's all-core figure.

Progress goes to stderr, one line per method and phase. Exit status: 0 when at least one method
ran, 1 when none could, 2 for bad arguments or missing data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from wellwatch.core.errors import WellwatchError
from wellwatch.core.segmentation.classical import ClassicalParams
from wellwatch.core.segmentation.classical_overrides import classical_params
from wellwatch.core.segmentation.maps import ServeOptions
from wellwatch.core.segmentation.segmenters import load_segmenter
from wellwatch.overlay import overlay_png
from wellwatch.training.masks import read_labels
from wellwatch.training.seg_groups import usiigaci_groups
from wellwatch.training.seg_metrics import aggregate_scores, match_scores

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "phase-segmentation.onnx"
DATASET = "usiigaci-phase"
THRESHOLDS = (0.5, 0.75)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help=f"folder holding {DATASET}/setN/ (or the {DATASET} folder itself); "
                             "default: ../shared/data from the repository root")
    parser.add_argument("--sets", default="25-30",
                        help="set numbers, e.g. 25-30 or 1-20,22 (default 25-30; the bundled model trained on 25-29, "
                             "not on 24 or 30)")
    parser.add_argument("--methods", default="classical,model", help="comma-separated: classical, model")
    parser.add_argument("--model", default=None,
                        help="segmentation ONNX model (default: the bundled wellwatch/models/"
                             "phase-segmentation.onnx; the method is skipped if that is absent)")
    parser.add_argument("--classical", action="append", default=[], metavar="KEY=VALUE",
                        help="override one ClassicalParams default, e.g. downsample=1 (repeatable)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for the all-cores phase (default: os.cpu_count())")
    parser.add_argument("--repeat", type=int, default=2,
                        help="passes over the frames in each timed phase (default 2)")
    parser.add_argument("--overlays", metavar="DIR",
                        help="also write DIR/METHOD-setN.png: each frame with the annotated outlines (red) and the "
                             "method's (green)")
    parser.add_argument("--tta", action="store_true",
                        help="model: test-time augmentation (each tile also flipped 3 ways, maps averaged)")
    parser.add_argument("--pixel-size", type=float, default=0.0, metavar="UM",
                        help="um per pixel of the frames; the model resamples them to its own (0 = as they are)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="write the results as JSON to PATH; without PATH print JSON instead of the table")


# --- arguments and data ------------------------------------------------------------------------

def parse_sets(text: str) -> list[int]:
    """'25-30' / '1-20,22' -> sorted set numbers."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"--sets: {part!r} is not a number or a range like 25-30") from None
        if a < 1 or b < a:
            raise ValueError(f"--sets: {part!r} is not a range of positive set numbers")
        out.update(range(a, b + 1))
    if not out:
        raise ValueError("--sets: no set numbers given")
    return sorted(out)


def _dataset_root(data: str) -> Path:
    root = Path(data)
    return root / DATASET if (root / DATASET).is_dir() else root


def load_pairs(data: str, sets: list[int]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(name, frame, ground-truth labels)] for setN/raw.tif + setN/instances_ids.png."""
    root = _dataset_root(data)
    pairs = []
    for n in sets:
        folder = root / f"set{n}"
        raw, mask = folder / "raw.tif", folder / "instances_ids.png"
        if not raw.is_file() or not mask.is_file():
            raise FileNotFoundError(f"{folder}: needs raw.tif and instances_ids.png")
        frame, gt = tifffile.imread(raw), read_labels(mask)
        if frame.shape != gt.shape:
            raise ValueError(f"{folder}: raw.tif {frame.shape} and instances_ids.png {gt.shape} differ in shape")
        pairs.append((f"set{n}", frame, gt))
    return pairs


def _groups(data: str, say) -> dict[str, str]:
    """setN -> acquisition group from the frames' NIS-Elements metadata; {} when it cannot be read."""
    try:
        return usiigaci_groups(_dataset_root(data))[0]
    except (OSError, ValueError) as e:
        say(f"no acquisition groups ({e}); scores are not broken down by group")
        return {}


# --- segmenters (built inside each worker: sessions are never pickled) --------------------------

def make_segmenter(method: str, params: ClassicalParams, model_path: str | None, threads: int, options=None):
    if method == "classical":
        return load_segmenter(None, params)
    return load_segmenter(model_path, None, threads=threads, options=options or ServeOptions())


_worker_segmenter = None


def _worker_init(method: str, params: ClassicalParams, model_path: str | None, options=None) -> None:
    global _worker_segmenter
    _worker_segmenter = make_segmenter(method, params, model_path, threads=1, options=options)


def _worker_ready(_: int) -> int:
    time.sleep(0.2)  # hold the worker so the other warm-up tasks land on the other workers
    return os.getpid()


def _worker_count(frame: np.ndarray) -> int:
    return int(_worker_segmenter.segment(frame).max())


# --- phases --------------------------------------------------------------------------------------

def _pin_one_core():
    """Pin this process to one CPU (Linux); returns the old affinity to restore, or None."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(old)})
    return old


def _serial(segmenter, frames: list[np.ndarray], repeat: int, keep: bool):
    segmenter.segment(frames[0])  # warm-up (first-call allocations, ONNX Runtime arenas)
    labels = []
    t0 = time.perf_counter()
    for r in range(repeat):
        for frame in frames:
            out = segmenter.segment(frame)
            if keep and r == 0:
                labels.append(out)
    seconds = time.perf_counter() - t0
    return labels, len(frames) * repeat / seconds


def _pool(method: str, params: ClassicalParams, model_path: str | None, frames: list[np.ndarray],
          workers: int, repeat: int, options=None) -> tuple[list[int], float]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_worker_init, initargs=(method, params, model_path, options)) as pool:
        pool.map(_worker_ready, range(workers), chunksize=1)  # every worker started and initialised
        pool.map(_worker_count, frames[:workers], chunksize=1)  # warm-up
        tasks = frames * repeat
        t0 = time.perf_counter()
        counts = pool.map(_worker_count, tasks, chunksize=1)
        seconds = time.perf_counter() - t0
    return counts[:len(frames)], len(tasks) / seconds


def _summary(agg: dict) -> dict:
    out = {"mean_abs_count_error": agg["mean_abs_count_error"], "mean_count_error": agg["mean_count_error"],
           "mean_rel_count_error": agg["mean_rel_count_error"], "n_gt": agg["n_gt"], "n_pred": agg["n_pred"]}
    for t in THRESHOLDS:
        s = agg["iou"][t]
        out[f"f1@{t:g}"], out[f"ap@{t:g}"] = s["f1"], s["ap"]
        out[f"precision@{t:g}"], out[f"recall@{t:g}"] = s["precision"], s["recall"]
    return out


def bench_method(method: str, pairs, params: ClassicalParams, model_path: str | None, workers: int,
                 repeat: int, say, overlays: str | None = None, options=None, groups: dict | None = None) -> dict:
    frames = [frame for _, frame, _ in pairs]
    result: dict = {"method": method}
    if method == "classical":
        result["params"] = dataclasses.asdict(params)
    else:
        result["model"] = model_path
        result["options"] = dataclasses.asdict(options) if options is not None else {}

    # one core: quality from this pass too
    say(f"{method}: one core, {len(frames)} frames x {repeat} ...")
    old = _pin_one_core()
    try:
        segmenter = make_segmenter(method, params, model_path, threads=1, options=options)
        result["name"] = segmenter.name
        labels, fps1 = _serial(segmenter, frames, repeat, keep=True)
    finally:
        if old is not None:
            os.sched_setaffinity(0, old)
    per_image = [match_scores(gt, lab, THRESHOLDS) for (_, _, gt), lab in zip(pairs, labels)]
    if overlays:
        for (name, frame, gt), lab in zip(pairs, labels):
            overlay_png(frame, lab, Path(overlays) / f"{method}-{name}.png", truth=gt, scale=2)
        say(f"{method}: overlays in {overlays}")
    result["scores"] = _summary(aggregate_scores(per_image))
    if groups:
        seen = set(segmenter.contract.trained_on.get("images", [])) if method == "model" else set()
        result["by_group"] = scores_by_group([name for name, _, _ in pairs], per_image, groups, seen)
        if method == "model":
            result["contract_metrics"] = segmenter.contract.metrics
    result["per_frame"] = [{"frame": name, "n_gt": s["n_gt"], "n_pred": s["n_pred"],
                            **{f"f1@{t:g}": s["iou"][t]["f1"] for t in THRESHOLDS}}
                           for (name, _, _), s in zip(pairs, per_image)]
    result["fps_one_core"] = fps1
    say(f"{method}: one core {fps1:.2f} frames/s; F1@0.5 {result['scores']['f1@0.5']:.3f}")

    speeds = {}
    if method == "model":
        say(f"{method}: one process, {os.cpu_count()} threads ...")
        segmenter = make_segmenter(method, params, model_path, threads=os.cpu_count() or 1, options=options)
        _, speeds[f"1 process x {os.cpu_count()} threads"] = _serial(segmenter, frames, repeat, keep=False)
        del segmenter
    say(f"{method}: {workers} processes x 1 thread ...")
    counts, speeds[f"{workers} processes x 1 thread"] = _pool(method, params, model_path, frames, workers, repeat,
                                                              options)
    expected = [int(lab.max()) for lab in labels]
    if counts != expected:  # the same code on the same frames must give the same cells
        say(f"{method}: WARNING: pool counts {counts} differ from the one-core run {expected}")
    best = max(speeds, key=speeds.get)
    result["fps_all_cores_by_mode"] = speeds
    result["fps_all_cores"], result["all_cores_mode"] = speeds[best], best
    say(f"{method}: all cores {speeds[best]:.2f} frames/s ({best})")
    return result


def scores_by_group(names: list[str], per_image: list[dict], groups: dict[str, str], seen: set[str]) -> dict:
    """Scores per acquisition group; `trained_on`: how many of its frames the model was trained on."""
    out = {}
    for group in sorted({groups.get(n, "?") for n in names}):
        idx = [i for i, n in enumerate(names) if groups.get(n, "?") == group]
        out[group] = {"frames": [names[i] for i in idx],
                      "trained_on": sum(names[i] in seen for i in idx),
                      **_summary(aggregate_scores([per_image[i] for i in idx]))}
    return out


def print_groups(report: dict, out=sys.stdout) -> None:
    """Per-group scores of this run, and the leave-group-out figures the model's contract records."""
    for name, r in report["methods"].items():
        if "by_group" not in r:
            continue
        print(f"{name} by acquisition group (groups: {report.get('grouping', '')}):", file=out)
        for group, g in r["by_group"].items():
            seen = f"{g['trained_on']}/{len(g['frames'])} frames trained on" if name == "model" else ""
            print(f"  {group}: F1@0.5 {g['f1@0.5']:.3f}  F1@0.75 {g['f1@0.75']:.3f}  AP@0.5 {g['ap@0.5']:.3f}  "
                  f"AP@0.75 {g['ap@0.75']:.3f}  ({len(g['frames'])} frames{'; ' + seen if seen else ''})", file=out)
        logo = r.get("contract_metrics", {}).get("leave_group_out")
        if logo:
            rec = logo.get("recipe", {})
            how = (f"; recipe --augment {rec.get('augment')}, {rec.get('base')} wide, {rec.get('steps')} steps, which "
                   "may be less compute than the model's own" if rec else "")
            print(f"  the model's contract, leave-group-out (each group scored by a model trained without it{how}):",
                  file=out)
            for group, g in logo.get("groups", {}).items():
                print(f"  {group}: F1@0.5 {g['f1_iou50']:.3f}  F1@0.75 {g['f1_iou75']:.3f}  "
                      f"AP@0.5 {g['ap_iou50']:.3f}  AP@0.75 {g['ap_iou75']:.3f}  ({len(g['images'])} frames)", file=out)


# --- output ------------------------------------------------------------------------------------

def print_table(report: dict, out=sys.stdout) -> None:
    print(f"segmentation benchmark: {report['frames']} frames ({report['dataset']} sets "
          f"{report['sets_text']}), {report['machine']}", file=out)
    head = (f"{'method':<12}{'F1@0.5':>8}{'AP@0.5':>8}{'F1@0.75':>9}{'AP@0.75':>9}{'|count err|':>13}"
            f"{'fps 1 core':>12}{'fps all cores':>15}  all-cores mode")
    print(head, file=out)
    print("-" * len(head), file=out)
    for name, r in report["methods"].items():
        if "skipped" in r:
            print(f"{name:<12}skipped: {r['skipped']}", file=out)
            continue
        s = r["scores"]
        print(f"{name:<12}{s['f1@0.5']:>8.3f}{s['ap@0.5']:>8.3f}{s['f1@0.75']:>9.3f}{s['ap@0.75']:>9.3f}"
              f"{s['mean_abs_count_error']:>13.1f}{r['fps_one_core']:>12.2f}{r['fps_all_cores']:>15.2f}"
              f"  {r['all_cores_mode']}", file=out)
        for mode, fps in r["fps_all_cores_by_mode"].items():
            if mode != r["all_cores_mode"]:
                print(f"{'':<12}(also {mode}: {fps:.2f} frames/s)", file=out)
    print("AP = TP/(TP+FP+FN) at the IoU threshold (one-to-one matching); |count err| = mean |cells found - "
          "cells annotated| per frame.", file=out)


def run(args: argparse.Namespace) -> int:
    def say(text: str) -> None:
        print(f"bench segment: {text}", file=sys.stderr, flush=True)

    try:
        sets = parse_sets(args.sets)
        params = classical_params(args.classical)
    except (ValueError, WellwatchError) as e:
        say(str(e))
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in ("classical", "model")]
    if bad or not methods:
        say(f"--methods: unknown {bad or methods}; allowed: classical, model")
        return 2
    if args.pixel_size < 0:
        say(f"--pixel-size {args.pixel_size}: must be >= 0 (0 = frames as they are)")
        return 2
    if args.workers < 1 or args.repeat < 1:
        say("--workers and --repeat must be at least 1")
        return 2
    if args.model is not None and "model" in methods and not Path(args.model).is_file():
        say(f"--model {args.model}: no such file")
        return 2
    try:
        say(f"reading sets {args.sets} from {_dataset_root(args.data)} ...")
        pairs = load_pairs(args.data, sets)
    except (OSError, ValueError) as e:
        say(f"cannot read the data: {e}")
        return 2

    report = {
        "dataset": DATASET, "data": str(_dataset_root(args.data)), "sets": sets, "sets_text": args.sets,
        "frames": len(pairs), "repeat": args.repeat, "workers": args.workers,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
                   f"{platform.python_version()}",
        "methods": {},
    }
    options = ServeOptions(frame_pixel_size_um=args.pixel_size, tta=args.tta)
    groups = _groups(args.data, say)
    if groups:
        report["grouping"] = "NIS-Elements stage positions, clusters > 3 mm apart (training/seg_groups.py)"
        report["groups"] = groups
    for method in methods:
        model_path = None
        if method == "model":
            model_path = args.model or str(DEFAULT_MODEL)
            if not Path(model_path).is_file():
                note = f"no segmentation model at {model_path} (give one with --model PATH)"
                say(f"model: skipped: {note}")
                report["methods"][method] = {"skipped": note}
                continue
        try:
            report["methods"][method] = bench_method(method, pairs, params, model_path, args.workers,
                                                     args.repeat, say, args.overlays, options, groups)
        except (WellwatchError, ImportError, OSError) as e:
            say(f"{method}: skipped: {e}")
            report["methods"][method] = {"skipped": str(e)}
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
        print_groups(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            say(f"wrote {args.json}")
    return 0 if any("skipped" not in r for r in report["methods"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wellwatch.bench.segment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
