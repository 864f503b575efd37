"""`wellwatch reprocess`: archived acquisitions through the daemon's own stages, on Ray Data or in-process.

    file list (archive.list_frames)
      -> read + prepare tasks           (stages.read_prepare: reader + prepare_frame + segmentation)
      -> actor pool, one ORT session    (stages.FrameScorer: pooled batches, core.scoring.frame_counts)
         per model per actor
      -> per-frame rows -> per-well aggregates (aggregate.PlateAggregate) -> Parquet

`--engine local` runs the same steps in this process, in the same order, without Ray.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from wellwatch.core.aggregate import PlateAggregate, TileCounts
from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.core.config import Config

from .archive import list_frames
from .stages import ContractOnly, FrameScorer, model_paths, read_prepare

log = logging.getLogger(__name__)


@dataclass
class ReprocessResult:
    frames: list[dict]   # one row per frame, sorted by (root, path)
    wells: list[dict]    # one row per (plate, well, timepoint)
    seconds: float       # read + prepare + score, file list to last row
    skipped: list[str]   # names the naming scheme did not match


def contracts(config: Config) -> dict:
    """What the read tasks need of the models, read from the ONNX files on the driver: the live/dead
    contract, a cell-type model's crop geometry, a segmentation network's contract."""
    live_dead, seg, cell_type, cell_live_dead = model_paths(config)
    seg_backend = OnnxBackend(seg, device="cpu", warmup=False) if seg else None
    crop_model = cell_type or cell_live_dead  # as the daemon: the first crop model's geometry
    return {"contract": OnnxBackend(live_dead, device="cpu", warmup=False).contract,
            "crop": OnnxBackend(crop_model, device="cpu", warmup=False).contract.crop if crop_model else None,
            "seg": ContractOnly(seg, seg_backend.contract) if seg_backend else None}


def run_local(frames: list[dict], config: Config, batch_frames: int, threads: int) -> list[dict]:
    models = contracts(config)
    scorer = FrameScorer(config, intra_op_threads=threads, device=config.inference.device)
    rows: list[dict] = []
    for start in range(0, len(frames), batch_frames):
        prepared = [read_prepare(f, config, **models) for f in frames[start:start + batch_frames]]
        batch = {k: [p[k] for p in prepared] for k in prepared[0]}
        out = scorer(batch)
        rows += [dict(zip(out, values)) for values in zip(*out.values())]
        progress(len(rows), len(frames))
    return rows


def run_ray(frames: list[dict], config: Config, batch_frames: int, threads: int, workers: int,
            address: str | None) -> list[dict]:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    gpus = ray.cluster_resources().get("GPU", 0)
    workers = workers or max(1, int(gpus) if gpus else int(ray.cluster_resources().get("CPU", 1) // threads))
    models = contracts(config)
    ds = ray.data.from_items(frames, override_num_blocks=max(1, min(len(frames), 4 * workers)))
    # Read tasks; with GPUs they stay separate CPU tasks feeding the actors through the object store;
    # on CPU-only nodes Ray Data fuses them into the actors (no copy of the patches in between).
    ds = ds.map(partial(read_prepare, config=config, **models))
    ds = ds.map_batches(FrameScorer, fn_constructor_kwargs={
        "config": config, "intra_op_threads": threads, "device": "cuda" if gpus else "cpu"},
        compute=ray.data.ActorPoolStrategy(size=workers), batch_size=batch_frames, num_cpus=threads, num_gpus=1 if gpus else 0,
        batch_format="numpy")
    log.info("ray: %d frames, %d scoring actors (%d ORT threads each, %s)", len(frames), workers, threads,
             f"{int(gpus)} GPUs" if gpus else "CPU")
    rows = []
    for row in ds.iter_rows():
        rows.append({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
        if len(rows) % 50 == 0 or len(rows) == len(frames):
            progress(len(rows), len(frames))
    return rows


def progress(done: int, total: int) -> None:
    if sys.stderr.isatty() or done == total:
        print(f"\rreprocess: {done}/{total} frames", end="\n" if done == total else "", file=sys.stderr, flush=True)


def well_rows(frames: list[dict], fields_expected: int) -> list[dict]:
    """Per-well, per-timepoint aggregates with the daemon's own aggregation (frames in path order)."""
    # every timepoint stays (a table, not the daemon's bounded memory); a z plane is an image of its own
    aggregate = PlateAggregate(fields_expected, keep_timepoints=len(frames) + 1)
    for f in frames:
        if f["state"] != "done":
            continue
        types = json.loads(f["cell_types"]) if f["cell_types"] else None
        aggregate.add(f["plate"], f["well"], f["timepoint"], f["field"], TileCounts(
            f["live"], f["dead"], f["empty"], f["cells"], f["cell_live"], f["cell_dead"], types), z=f.get("z") or 0)
    rows = []
    for (plate, well, timepoint), state in sorted(aggregate.wells.items()):
        s = aggregate.summary(state)
        cell_counts = s["cell_counts"] or {}
        rows.append({"plate": plate, "well": well, "timepoint": timepoint, "frames": s["frames"],
                     "fields_expected": s["fields_expected"], "complete": s["complete"], **s["counts"],
                     "live_fraction": s["live_fraction"], "cells": s["cells"],
                     "cell_live": cell_counts.get("live"), "cell_dead": cell_counts.get("dead"),
                     "cell_live_fraction": s["cell_live_fraction"],
                     "cell_types": json.dumps(s["cell_types"]) if s["cell_types"] is not None else None})
    return rows


def reprocess(roots: list[str], config: Config, engine: str = "local", address: str | None = None,
              workers: int = 0, threads: int = 1, batch_frames: int = 16) -> ReprocessResult:
    frames, skipped = list_frames(roots, config)
    if not frames:
        raise FileNotFoundError(f"reprocess: no frames of channel(s) {list(config.channels.label_free)} under "
                                f"{', '.join(roots)} with naming {config.watch.naming!r}")
    t0 = time.perf_counter()
    if engine == "local":
        rows = run_local(frames, config, batch_frames, threads)
    elif engine == "ray":
        rows = run_ray(frames, config, batch_frames, threads, workers, address)
    else:
        raise ValueError(f"reprocess: engine {engine!r}; allowed: local, ray")
    seconds = time.perf_counter() - t0
    rows.sort(key=lambda r: (r["root"], r["path"]))
    return ReprocessResult(rows, well_rows(rows, config.plate.fields_per_well), seconds, skipped)


def wells_path(out: Path) -> Path:
    """results.parquet -> results.wells.parquet."""
    return out.with_name(out.stem + ".wells" + out.suffix)


def write_parquet(result: ReprocessResult, out: Path, models: dict[str, str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {b"wellwatch.models": json.dumps(models).encode()}
    for rows, path in ((result.frames, out), (result.wells, wells_path(out))):
        table = pa.Table.from_pylist(rows)
        pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **meta}), path)
