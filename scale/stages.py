"""The reprocessing plan's steps, each a thin shell over the core functions the daemon's stages call.

    read_prepare  (a task per frame)  core.files.tiff.decode_frame + core.model_inputs.prepare_frame
                                      (+ classical segmentation and cell crops, or a segmentation
                                      network's tiles)
    FrameScorer   (an actor)          one ONNX Runtime session per model (`Models` of OnnxBackend);
                                      a batch of frames' inputs pooled into one run per model, like
                                      the daemon's lanes; segmenters.model_cells turns a network's maps
                                      into cells; core.scoring.frame_counts, the daemon's own scoring
                                      function, makes the frame's counts
    frame rows -> aggregate.PlateAggregate (per well and timepoint) in `reprocess.py`

Rows carry only numpy arrays and scalars, so Ray Data can move them between nodes; the same
functions run in-process for `--engine local`.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from wellwatch.core.aggregate import live_fraction
from wellwatch.core.bundled_models import BUNDLED_SEGMENTATION_MODEL, bundled_demo_model
from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.core.inference.models import Models
from wellwatch.core.config import Config
from wellwatch.core.contract import CellCrop, ModelContract
from wellwatch.core.crops import Cells
from wellwatch.core.errors import FrameReadError
from wellwatch.core.model_inputs import prepare_frame
from wellwatch.core.scoring import FrameOutputs, frame_counts
from wellwatch.core.files.tiff import decode_frame
from wellwatch.core.segmentation.segmenters import ModelSegmenter, model_cells

META = ("root", "path", "plate", "well", "field", "timepoint", "z", "channel")


def model_paths(config: Config) -> tuple[str, str | None, str | None, str | None]:
    """(live/dead model, segmentation model, cell-type model, per-cell live/dead model; None where not
    used), as the daemon chooses them."""
    seg = (config.models.segmentation.path or str(BUNDLED_SEGMENTATION_MODEL)
           if config.segmentation.method == "model" else None)
    return (config.models.live_dead.path or str(bundled_demo_model()), seg, config.models.cell_type.path or None,
            config.models.cell_live_dead.path or None)


class ContractOnly:
    """What `ModelSegmenter.prepare` needs of a backend (its contract), without an ORT session."""

    def __init__(self, path: str, contract: ModelContract):
        self.path, self.contract = path, contract


def read_prepare(row: dict, config: Config, contract: ModelContract, crop: CellCrop | None,
                 seg: ContractOnly | None = None) -> dict:
    """One frame file -> its model inputs (or the reason it cannot be used), as the daemon's read worker."""
    out = {k: row[k] for k in META}
    out.update(sha256="", error="", shape=np.zeros(2, np.int64), n_empty=0,
               patches=np.zeros((0, len(contract.channels), contract.height, contract.width), np.float32),
               tile_origins=np.zeros((0, 2), np.int64), has_cells=False,
               cell_centroids=np.zeros((0, 2), np.float64), cell_areas=np.zeros(0, np.float64),
               crops=np.zeros((0, 1, 1, 1), np.float32), crop_keep=np.zeros(0, bool),
               seg_tiles=np.zeros((0, 1, 1, 1), np.float32), seg_origins=np.zeros((0, 2), np.int64),
               image=np.zeros((0, 0), np.float32))
    try:
        with open(row["abspath"], "rb") as f:
            data = f.read()
    except OSError as e:
        out["error"] = f"cannot read ({e.strerror})"
        return out
    out["sha256"] = hashlib.sha256(data).hexdigest()
    try:
        image = decode_frame(row["abspath"], data)
        prepared = prepare_frame(image, contract, segmentation=config.segmentation.method,
                                 classical=config.segmentation.classical, crop=crop,
                                 seg_model=ModelSegmenter(seg) if seg is not None else None)
    except FrameReadError as e:
        out["error"] = e.reason
        return out
    except Exception as e:  # as the daemon: a frame the model cannot take is recorded, not fatal
        out["error"] = f"cannot be prepared for the model ({type(e).__name__}: {e})"
        return out
    out.update(shape=np.asarray(prepared.shape, np.int64), n_empty=prepared.n_empty, patches=prepared.patches,
               tile_origins=np.asarray(prepared.tile_origins, np.int64))
    if prepared.cells is not None:
        out.update(has_cells=True, cell_centroids=np.asarray(prepared.cells.centroids, np.float64),
                   cell_areas=np.asarray(prepared.cells.areas, np.float64))
        if prepared.crops is not None:
            out.update(crops=prepared.crops, crop_keep=prepared.crop_keep)
    if prepared.seg_input is not None:
        out.update(seg_tiles=prepared.seg_input[0], seg_origins=np.asarray(prepared.seg_input[1], np.int64))
        if prepared.image is not None:  # the crops are cut once the network's cells are known
            out["image"] = prepared.image
    return out


def _column(batch: dict, key: str, i: int):
    value = batch[key][i]
    return value.item() if isinstance(value, np.generic) else value


class FrameScorer:
    """Holds one ONNX Runtime session per model; scores a batch of prepared frames into frame rows.

    `intra_op_threads` is set explicitly: Ray gives each worker OMP_NUM_THREADS = its num_cpus, and
    ORT's own default (all cores) would oversubscribe a node running several actors."""

    def __init__(self, config: Config, intra_op_threads: int = 1, device: str = "cpu"):
        live_dead, seg, cell_type, cell_live_dead = model_paths(config)

        def session(path: str, max_batch: int) -> OnnxBackend:
            return OnnxBackend(path, device=device, max_batch=max_batch, intra_op_threads=intra_op_threads,
                               warmup=False)

        self.networks = Models(session(live_dead, config.batching.max_batch),
                               session(seg, config.segmentation.max_batch) if seg else None,
                               session(cell_type, config.batching.max_batch) if cell_type else None,
                               session(cell_live_dead, config.batching.max_batch) if cell_live_dead else None)
        # the crop models, as the daemon's crop lanes: each cell's crop goes to all of them
        self.crop_models = self.networks.crop_models()
        self.crop = next(iter(self.crop_models.values())).contract.crop if self.crop_models else None
        self.models = {b.contract.name: b.sha256 for b in (self.networks.live_dead, self.networks.segmentation,
                                                           *self.crop_models.values()) if b is not None}

    def __call__(self, batch: dict) -> dict:
        n = len(batch["path"])
        live = [i for i in range(n) if not _column(batch, "error", i)]
        tile_scores = self._pooled(self.networks.live_dead, [np.asarray(batch["patches"][i], np.float32) for i in live])
        cells, crops, keep = {}, {}, {}  # frame index -> its cells, their crops, which were cropped
        for i in live:
            if _column(batch, "has_cells", i):
                cells[i] = Cells(np.asarray(batch["cell_centroids"][i]).reshape(-1, 2),
                                 np.asarray(batch["cell_areas"][i]))
                crops[i], keep[i] = np.asarray(batch["crops"][i], np.float32), np.asarray(batch["crop_keep"][i], bool)
        if self.networks.segmentation is not None:
            tiles = [np.asarray(batch["seg_tiles"][i], np.float32) for i in live]
            for i, maps in zip(live, self._pooled(self.networks.segmentation, tiles)):
                image = np.asarray(batch["image"][i]) if self.crop is not None else None
                cells[i], crops[i], keep[i] = model_cells(
                    maps, np.asarray(batch["seg_origins"][i]).reshape(-1, 2), tuple(batch["shape"][i]),
                    self.networks.segmentation.contract, image, self.crop)
        cropped = [i for i in live if i in cells]
        crop_scores = {slot: dict(zip(cropped, self._pooled(model, [crops[i] for i in cropped])))
                       for slot, model in self.crop_models.items()}
        rows: dict[str, list] = {k: [] for k in (*META, "sha256", "state", "reason", "live", "dead", "empty",
                                                  "live_fraction", "cells", "cell_live", "cell_dead", "cell_types")}
        scored = dict(zip(live, tile_scores))
        for i in range(n):
            for k in META:
                rows[k].append(_column(batch, k, i))
            rows["sha256"].append(_column(batch, "sha256", i))
            if i not in scored:
                rows["state"].append("quarantined")
                rows["reason"].append(_column(batch, "error", i))
                for k in ("live", "dead", "empty", "live_fraction", "cells", "cell_live", "cell_dead", "cell_types"):
                    rows[k].append(None)
                continue
            outputs = FrameOutputs(tuple(batch["shape"][i]), np.asarray(batch["tile_origins"][i]).reshape(-1, 2),
                                   int(batch["n_empty"][i]), scored[i], cells=cells.get(i), crop_keep=keep.get(i),
                                   cell_type_scores=crop_scores.get("cell_type", {}).get(i),
                                   cell_dead_scores=crop_scores.get("cell_live_dead", {}).get(i))
            counts = frame_counts(outputs, self.networks.live_dead.contract, self.networks.contract("cell_type"),
                                  self.networks.contract("cell_live_dead"))
            rows["state"].append("done")
            rows["reason"].append(None)
            for k in ("live", "dead", "empty", "cells"):
                rows[k].append(getattr(counts, k))
            rows["cell_live"].append(counts.cell_live)
            rows["cell_dead"].append(counts.cell_dead)
            rows["live_fraction"].append(live_fraction(counts.live, counts.dead))
            rows["cell_types"].append(json.dumps(counts.cell_types) if counts.cell_types is not None else None)
        return rows

    @staticmethod
    def _pooled(backend: OnnxBackend, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Every frame's inputs in one run (as the daemon pools patches across frames), split back."""
        sizes = [len(x) for x in inputs]
        if not sum(sizes):
            return [backend.infer(np.zeros((0,), np.float32)) for _ in inputs]
        out = backend.infer(np.concatenate([x for x in inputs if len(x)]))
        return np.split(out, np.cumsum(sizes)[:-1])
