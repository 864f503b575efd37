"""`wellwatch bench`: the daemon end to end beside the model alone and a naive loop, in one run.

1. end to end, burst: frames rendered beforehand are written as fast as the disk takes them
   (temp name + rename) into the folder a running daemon watches; frames/s from the first file
   to the last frame message;
2. end to end, steady: frames written at half that rate (or --steady-rate); latency from each
   file's last write to its frame message being published (p50, p99);
3. model only: the same patches through the same ONNX session in a tight loop of full batches;
4. naive: one file at a time, read, tile, infer each patch with a batch of 1.

Before them, preparation alone (decode, normalise, tile, empty filter) in ms per megapixel, and
during the burst the CPU seconds of each daemon thread and preparation process
(`bench/prepare.py`): where the cores go.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import tifffile

from wellwatch.client import follow
from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.core.preprocess import prepare_tiles
from wellwatch.core.bundled_models import bundled_demo_model
from wellwatch.harness import local_config, start_daemon
from wellwatch.simulator.plate import iter_fields
from wellwatch.simulator.spec import SimulationSpec, parse_wells
from wellwatch.simulator.writer import frame_name, tiff_bytes, write_frame

from .models import resolve_model
from .prepare import CpuSampler, preparation_ms_per_mpx


def _say(args, text: str) -> None:
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


def render_files(spec: SimulationSpec) -> list[tuple[str, bytes]]:
    """Render before timing: the simulator must not be what the benchmark measures."""
    return [(frame_name(spec, f.well, f.field, f.timepoint, ch), tiff_bytes(f.images[ch]))
            for f in iter_fields(spec) for ch in spec.channels]


def write_files(files: list[tuple[str, bytes]], folder: Path, interval_s: float = 0.0,
                staging: Path | None = None) -> None:
    """Temp name, then rename, as acquisition software does; optionally at a steady rate. With
    `staging` (a folder outside the watched one, same filesystem), the temp file is written there."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, (name, data) in enumerate(files):
        if interval_s:
            time.sleep(max(0.0, start + i * interval_s - time.perf_counter()))
        if staging is None:
            write_frame(folder / name, data, "rename")
        else:
            staging.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
            os.replace(staging / name, folder / name)


class Collector(threading.Thread):
    """Subscribes before frames are written and records every frame message."""

    def __init__(self, config):
        super().__init__(daemon=True, name="collector")
        self.config, self.frames, self.ready = config, [], threading.Event()
        self.stop_flag = threading.Event()

    def run(self) -> None:
        for kind, message, _ in follow(self.config.publish.endpoint, self.config.publish.snapshot_endpoint,
                                       topics=("frame/",), timeout_s=600):
            self.ready.set()
            if kind == "update":
                self.frames.append((time.time(), message))
        self.ready.set()

    def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.frames) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        if len(self.frames) < n:
            raise TimeoutError(f"only {len(self.frames)} of {n} frame messages arrived within {timeout:.0f} s")


def run_bench(args: argparse.Namespace) -> int:
    spec = SimulationSpec(wells=parse_wells(args.wells, 96), fields=args.fields, timepoints=args.timepoints,
                          size=args.size, channels=("BF",), write_mode="rename", treatment="dose_series",
                          plate_name="bench-burst", seed=3)
    n = len(spec.wells) * spec.fields * spec.timepoints
    model = resolve_model(args.model, lambda text: _say(args, text))
    work = Path(tempfile.mkdtemp(prefix="wellwatch-bench-"))
    config = local_config(work, spec, model, **{"batching.max_batch": args.max_batch,
                                                       "batching.max_delay_ms": args.max_delay_ms,
                                                       "pipeline.read_workers": args.read_workers,
                                                       "pipeline.prepare_workers": args.prepare_workers,
                                                       "watch.reconcile_s": 5.0,
                                                       "watch.settle_s": args.settle_s,
                                                       "watch.completeness": args.completeness,
                                                       "segmentation.method": args.segmentation,
                                                       "segmentation.workers": args.segmentation_workers})
    _say(args, f"bench: {n} simulated {spec.size}x{spec.size} frames per phase, in {work}")
    burst_files = render_files(spec)
    if args.prepare_only:
        contract = OnnxBackend(config.models.live_dead.path or bundled_demo_model(), "cpu").contract
        result = {"frames": n, "frame_size": spec.size, "model": contract.name,
                  "prepare_ms_per_mpx": preparation_ms_per_mpx(burst_files[:16], contract)}
        print(json.dumps(result) if args.json else result)
        return 0
    running = start_daemon(config)
    backend = running.daemon.backend
    _say(args, "[0/4] preparation alone, ms per megapixel ...")
    prepare_ms = preparation_ms_per_mpx(burst_files[:16], backend.contract)
    collector = Collector(config)
    collector.start()
    collector.ready.wait(10)

    steady_spec = replace(spec, plate_name="bench-steady", seed=4)
    steady_files = render_files(steady_spec)
    _say(args, "[1/4] end to end, burst ...")
    data = work / "acquisition" / "data"
    cpu = CpuSampler(worker_pids(running.daemon.pipeline))
    cpu.start()
    t0 = time.time()
    write_files(burst_files, data / "burst")
    collector.wait_for(n, timeout=600)
    burst_cpu = cpu.stop()
    burst_s = collector.frames[n - 1][0] - t0
    patches_scored = sum(m["counts"]["live"] + m["counts"]["dead"] for _, m in collector.frames[:n])
    e2e_fps = n / burst_s

    _say(args, "[2/4] end to end, steady rate (half the burst rate) ...")
    steady_interval = 1.0 / args.steady_rate if args.steady_rate > 0 else 2.0 / e2e_fps
    write_files(steady_files, data / "steady", steady_interval, work / "staging" if args.stage_outside else None)
    collector.wait_for(2 * n, timeout=600)
    latencies = np.array([m["latency_s"] for _, m in collector.frames[n:2 * n]])
    stages = stage_means_ms(running.daemon.registry)
    running.stop()
    collector.join(timeout=5)

    _say(args, "[3/4] model only, tight batched loop ...")
    files = sorted((data / "burst").glob("*.tif"))
    images = [tifffile.imread(f) for f in files[:n]]
    patches = np.concatenate([prepare_tiles([im], backend.contract)[0] for im in images])
    model_cpu = CpuSampler()
    model_cpu.start()
    model_s = _time_model(backend, patches, args.max_batch)
    seg_model = running.daemon.pipeline.seg_model
    seg_s = 0.0
    if seg_model is not None:  # the segmentation network's tiles too: both networks are the model's share
        seg_tiles = np.concatenate([seg_model.prepare(im)[0] for im in images])
        seg_s = _time_model(seg_model.backend, seg_tiles, config.segmentation.max_batch)
    model_cpu_s = sum(model_cpu.stop()["cpu_s"].values())

    _say(args, "[4/4] naive loop: one file at a time, batch of 1 ...")
    naive_fps = _naive(config, files[:args.naive_frames], backend)

    result = {
        "frames": n, "frame_size": spec.size, "patches": int(patches_scored),
        "e2e_frames_per_s": e2e_fps, "e2e_patches_per_s": patches_scored / burst_s,
        "model_only_patches_per_s": len(patches) / model_s,
        "model_only_frames_per_s": len(images) / (model_s + seg_s),
        "segmentation_model_s_per_frame": seg_s / len(images),
        "naive_frames_per_s": naive_fps,
        "latency_p50_s": float(np.percentile(latencies, 50)), "latency_p99_s": float(np.percentile(latencies, 99)),
        "latency_max_s": float(latencies.max()), "steady_rate_frames_per_s": 1.0 / steady_interval,
        "settle_s": config.watch.settle_s, "completeness": config.watch.completeness,
        "staged_outside": args.stage_outside, "provider": backend.provider, "max_batch": args.max_batch,
        "model": backend.contract.name, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "segmentation": running.daemon.pipeline.segmentation_name,
        "stage_mean_ms": stages, "prepare_ms_per_mpx": prepare_ms, "burst_cpu": burst_cpu,
        "prepare_workers": config.pipeline.prepare_workers,
    }
    # frames/s against frames/s: with a segmentation network, model only is both networks' time
    result["e2e_vs_model_only"] = e2e_fps / result["model_only_frames_per_s"]
    # the same comparison in CPU seconds per frame, which other load on a shared machine disturbs
    # less than wall time: the daemon's threads and processes (not the bench's writer and subscriber)
    daemon_cpu_s = sum(v for k, v in burst_cpu["cpu_s"].items() if k not in ("MainThread", "collector"))
    result["cpu_ms_per_frame"] = {"end_to_end_daemon": round(1000 * daemon_cpu_s / n, 2),
                                  "model_only": round(1000 * model_cpu_s / len(images), 2)}
    result["model_only_cpu_share"] = model_cpu_s / len(images) / (daemon_cpu_s / n)
    result["e2e_vs_naive"] = e2e_fps / naive_fps
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


def worker_pids(pipeline) -> dict[str, int]:
    """The daemon's worker processes: preparation (pipeline.prepare_workers) and segmentation."""
    pids = pipeline.reader.worker_pids()
    if pipeline.seg_pool is not None:
        processes = getattr(pipeline.seg_pool.executor, "_processes", None) or {}
        pids.update({f"segment_process_{i}": p.pid for i, p in enumerate(list(processes.values()))})
    return pids


def stage_means_ms(registry) -> dict[str, float]:
    """Mean time per call of each pipeline stage, from the daemon's own histograms."""
    sums, counts = {}, {}
    for metric in registry.collect():
        if metric.name == "wellwatch_stage_seconds":
            for s in metric.samples:
                if s.name.endswith("_sum"):
                    sums[s.labels["stage"]] = s.value
                elif s.name.endswith("_count"):
                    counts[s.labels["stage"]] = s.value
    return {k: round(1000 * sums[k] / counts[k], 3) for k in sums if counts.get(k)}


def _time_model(backend: OnnxBackend, patches: np.ndarray, max_batch: int) -> float:
    backend.infer(patches[:max_batch])  # warm
    t0 = time.perf_counter()
    for i in range(0, len(patches), max_batch):
        backend.infer(patches[i:i + max_batch])
    return time.perf_counter() - t0


def _naive(config, files: list[Path], backend: OnnxBackend) -> float:
    t0 = time.perf_counter()
    for f in files:
        patches, _, _ = prepare_tiles([tifffile.imread(f)], backend.contract)
        for p in patches:
            backend.infer(p[None])
    return len(files) / (time.perf_counter() - t0)


def print_table(r: dict) -> None:
    print(f"\nwellwatch bench: {r['frames']} frames of {r['frame_size']}x{r['frame_size']} px, "
          f"model {r['model']!r} on {r['provider']} ({r['machine']})"
          + (f", segmentation: {r['segmentation']}" if r["segmentation"] else ""))
    print(f"  end to end (burst)      {r['e2e_frames_per_s']:8.1f} frames/s  {r['e2e_patches_per_s']:9.0f} patches/s")
    print(f"  model only (batch {r['max_batch']:<4}) {r['model_only_frames_per_s']:8.1f} frames/s  "
          f"{r['model_only_patches_per_s']:9.0f} patches/s"
          + (f" (+ segmentation network {1000 * r['segmentation_model_s_per_frame']:.0f} ms/frame)"
             if r["segmentation_model_s_per_frame"] else ""))
    print(f"  naive (1 file, batch 1) {r['naive_frames_per_s']:8.1f} frames/s"
          + (" (live/dead model only, no segmentation: not comparable)" if r["segmentation"] else ""))
    print(f"  latency file->published at {r['steady_rate_frames_per_s']:.1f} frames/s: p50 {r['latency_p50_s'] * 1000:.0f} ms, "
          f"p99 {r['latency_p99_s'] * 1000:.0f} ms, max {r['latency_max_s'] * 1000:.0f} ms "
          f"(completeness: {r['completeness']}; "
          + ("moved in from outside: a creation to the watcher" if r["staged_outside"] else
             "renamed in the folder: no settle wait") + f"; settle_s = {r['settle_s'] * 1000:.0f} ms)")
    print("  mean ms per call by stage: " + ", ".join(f"{k} {v:.2f}" for k, v in r["stage_mean_ms"].items())
          + " (read/prepare per frame, infer per batch, commit per group)")
    print("  preparation alone, ms per megapixel: " + ", ".join(f"{k} {v:.2f}" for k, v in r["prepare_ms_per_mpx"].items()))
    c = r["burst_cpu"]
    print(f"  CPU during the burst ({c['wall_s']:.2f} s, {c['cores_busy']:.2f} cores busy; prepare_workers "
          f"{r['prepare_workers']}): " + ", ".join(f"{k} {v:.2f} s" for k, v in c["cpu_s"].items()))
    print(f"  CPU ms per frame: daemon end to end {r['cpu_ms_per_frame']['end_to_end_daemon']:.1f}, "
          f"model only {r['cpu_ms_per_frame']['model_only']:.1f} (the model's share: {r['model_only_cpu_share']:.2f})")
    print(f"  ratios: end to end / model only = {r['e2e_vs_model_only']:.2f}; "
          f"end to end / naive = {r['e2e_vs_naive']:.1f}x")
