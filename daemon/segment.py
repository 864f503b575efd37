"""Cell segmentation as the daemon, `wellwatch segment` and the benchmark all run it.

Two methods behind one small interface (`segment(frame) -> int32 labels`):
- ClassicalSegmenter: the seed study's threshold + distance-transform watershed
  (daemon/segment_classical.py), for images where it suffices.
- ModelSegmenter: a segmentation network with a contract (task "segmentation"), in three steps the
  daemon runs on different threads: `prepare` (reduce, normalise, tile), the network (the shared
  batched inference path), `finish` (blend the tiles' maps, seeded watershed).
- PackageSegmenter (daemon/package_segment.py): a BioImage.IO segmentation package, the same three
  steps with the package's own processing and halo, then threshold + distance-transform watershed.

The CPU-heavy steps (classical segmentation, `finish`, and cutting single-cell crops for a
cell-type model) are module-level functions so a process pool can run them on every core
(`SegmentationPool`); the GIL would hold threads to about one.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import threading
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from .contract import CellCrop, ModelContract
from .crops import cells_of, prepare_crops
from .errors import ContractError
from .lifeline import hold, lifeline
from .segment_classical import ClassicalParams, segment_classical
from .package_segment import PackageParams, PackageSegmenter, PackageServing, package_labels
from .segment_maps import ServeOptions, labels_from_served, serve_tiles

log = logging.getLogger(__name__)

def bundled_model(name: str) -> Path:
    """A model shipped inside the installed package (wellwatch/models/), wherever it is installed."""
    from importlib.resources import files

    return Path(str(files("wellwatch") / "models" / name))


BUNDLED_SEGMENTATION_MODEL = bundled_model("phase-segmentation.onnx")


class Segmenter(Protocol):
    name: str

    def segment(self, frame: np.ndarray) -> np.ndarray:
        """One 2-D frame -> int32 labels of its shape (0 = background, 1..n cells)."""
        ...


class ClassicalSegmenter:
    def __init__(self, params: ClassicalParams = ClassicalParams()):
        self.params = params.validate()
        self.name = "classical"

    def segment(self, frame: np.ndarray) -> np.ndarray:
        return segment_classical(frame, self.params)


class ModelSegmenter:
    """`options`: the acquisition's pixel size (frames are resampled to the model's) and TTA."""

    def __init__(self, backend, options: ServeOptions = ServeOptions()):
        contract = backend.contract
        if contract.task != "segmentation":
            raise ContractError(backend.path, f"is a {contract.task} model; a segmentation model is needed here")
        self.backend = backend
        self.contract: ModelContract = contract
        self.options = options
        self.name = contract.name

    def options_for(self, frame_pixel_size_um: float | None) -> ServeOptions:
        """The options for one frame: a configured pixel size wins; else the frame's own (vendor metadata)."""
        if self.options.frame_pixel_size_um > 0 or not frame_pixel_size_um:
            return self.options
        return dataclasses.replace(self.options, frame_pixel_size_um=float(frame_pixel_size_um))

    def prepare(self, frame: np.ndarray, frame_pixel_size_um: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(tiles (N, 1, t, t) float32 (4N with TTA), their origins at model resolution)."""
        return serve_tiles(frame, self.contract, self.options_for(frame_pixel_size_um))

    def finish(self, outputs: np.ndarray, origins: np.ndarray, shape: tuple[int, int],
               frame_pixel_size_um: float | None = None) -> np.ndarray:
        return labels_from_served(outputs, origins, shape, self.contract, self.options_for(frame_pixel_size_um))

    def segment(self, frame: np.ndarray) -> np.ndarray:
        tiles, origins = self.prepare(frame)
        return self.finish(self.backend.infer(tiles), origins, frame.shape)


def model_segmenter(backend, options: ServeOptions = ServeOptions(),
                    package: PackageParams = PackageParams()) -> "ModelSegmenter | PackageSegmenter":
    """The segmenter for a loaded network: a BioImage.IO package's (PackageBackend), or a contract's."""
    if hasattr(backend, "package"):
        return PackageSegmenter(backend, package, options)
    return ModelSegmenter(backend, options)


def load_segmenter(model_path: str | None, classical: ClassicalParams | None = None, threads: int = 0,
                   device: str = "cpu", options: ServeOptions = ServeOptions(),
                   package: PackageParams = PackageParams()) -> Segmenter:
    """A model segmenter for `model_path` ("" = the bundled phase-contrast model; a BioImage.IO package
    is served as one), else classical."""
    if model_path is None:
        return ClassicalSegmenter(classical or ClassicalParams())
    from .backend import OnnxBackend
    from .bioimageio_package import is_package
    from .config import InferenceConfig

    path = model_path or str(BUNDLED_SEGMENTATION_MODEL)
    inference = InferenceConfig(device=device, intra_op_threads=threads, warmup=False)
    if is_package(path):
        from .package_loading import open_package

        backend = open_package(path, "segmentation", inference)
    else:
        backend = OnnxBackend(path, max_batch=16, inference=inference)
    return model_segmenter(backend, options, package)


# --- the process pool: module-level functions, picklable arguments --------------------------

CellsAndCrops = tuple  # (Cells, crops (K, C, size, size) or None, kept-cell index (N,) or None)


def _cells_and_crops(labels: np.ndarray, frame: np.ndarray | None, crop: CellCrop | None) -> CellsAndCrops:
    cells = cells_of(labels)
    if crop is None or frame is None:
        return cells, None, None
    crops, keep = prepare_crops([frame], cells, crop)
    return cells, crops, keep


def classical_cells(frame: np.ndarray, params: ClassicalParams, crop: CellCrop | None = None,
                    crop_from: np.ndarray | None = None) -> CellsAndCrops:
    """Cells segmented on `frame`; crops cut from `crop_from` (default `frame`), e.g. the label-free
    channel when `frame` is a nuclear stain."""
    return _cells_and_crops(segment_classical(frame, params), frame if crop_from is None else crop_from, crop)


def model_cells(outputs: np.ndarray, origins: np.ndarray, shape: tuple[int, int],
                contract: ModelContract | PackageServing, frame: np.ndarray | None = None,
                crop: CellCrop | None = None, options: ServeOptions = ServeOptions()) -> CellsAndCrops:
    if isinstance(contract, PackageServing):  # a BioImage.IO package's map: threshold + watershed
        return _cells_and_crops(package_labels(outputs, origins, shape, contract), frame, crop)
    return _cells_and_crops(labels_from_served(outputs, origins, shape, contract, options), frame, crop)


class FrameFault(RuntimeError):
    """A frame killed a segmentation worker while it ran alone, twice: the frame's fault, not the machine's."""


@dataclass(eq=False)
class _Task:
    fn: Callable
    args: tuple
    result: Future
    solo_deaths: int = 0


class SegmentationPool:
    """Processes that run segmentation's CPU-heavy steps, one frame per task, on every core.

    A worker that dies (the OOM killer, a crash in native code) breaks a ProcessPoolExecutor for
    good; this pool replaces it and retries the tasks it held, one at a time in a one-worker "solo"
    executor, where a death can only be the running task's. A task that dies there twice fails
    with FrameFault; every other task gets its result as if nothing had happened.
    """

    SOLO_DEATHS = 2

    def __init__(self, workers: int = 0, on_rebuild: Callable[[], None] | None = None):
        self.workers = workers or os.cpu_count() or 1
        self.on_rebuild = on_rebuild or (lambda: None)  # e.g. a metric
        self._context = multiprocessing.get_context("spawn")  # fork is unsafe beside the daemon's threads
        self._lock = threading.Lock()
        self._closed = False
        self.rebuilds = 0  # executors replaced after a worker died
        self.executor = self._executor(self.workers)
        self._solo: ProcessPoolExecutor | None = None
        self._solo_waiting: deque[_Task] = deque()
        self._solo_busy = False
        for f in [self.submit(int, 0) for _ in range(self.workers)]:
            f.result()  # start the workers now, not on the first frame (a death here is retried too)

    def _executor(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=self._context, initializer=hold, initargs=(lifeline(),))

    def classical(self, frame: np.ndarray, params: ClassicalParams, crop: CellCrop | None = None,
                  crop_from: np.ndarray | None = None) -> Future:
        """-> (Cells, crops or None, kept index or None); crops when a cell-type model needs them."""
        return self.submit(classical_cells, frame, params, crop, crop_from)

    def finish(self, outputs: np.ndarray, origins: np.ndarray, shape: tuple[int, int], contract: ModelContract,
               frame: np.ndarray | None = None, crop: CellCrop | None = None,
               options: ServeOptions = ServeOptions()) -> Future:
        return self.submit(model_cells, outputs, origins, shape, contract, frame, crop, options)

    def submit(self, fn: Callable, *args) -> Future:
        task = _Task(fn, args, Future())
        task.result.set_running_or_notify_cancel()
        self._run_shared(task)
        return task.result

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            solo = self._solo
        self.executor.shutdown(wait=True, cancel_futures=False)
        if solo is not None:
            solo.shutdown(wait=True, cancel_futures=False)

    # --- supervision ---------------------------------------------------------------------------

    def _run_shared(self, task: _Task) -> None:
        while True:
            executor = self.executor
            try:
                future = executor.submit(task.fn, *task.args)
            except BrokenProcessPool:
                self._replace(executor)
                continue
            except RuntimeError as e:  # shut down
                task.result.set_exception(e)
                return
            future.add_done_callback(lambda f: self._shared_done(task, f, executor))
            return

    def _shared_done(self, task: _Task, future: Future, executor: ProcessPoolExecutor) -> None:
        error = future.exception()
        if not isinstance(error, BrokenProcessPool):
            _settle(task.result, future)
            return
        self._replace(executor)
        self._run_solo(task)  # a suspect now: alone, so that a second death names the culprit

    def _run_solo(self, task: _Task) -> None:
        with self._lock:
            self._solo_waiting.append(task)
            if self._solo_busy:
                return
            self._solo_busy = True
        self._solo_next()

    def _solo_next(self) -> None:
        with self._lock:
            if not self._solo_waiting:
                self._solo_busy = False
                return
            task = self._solo_waiting.popleft()
            if self._closed:
                task.result.set_exception(RuntimeError("segmentation pool shut down"))
                self._solo_busy = False
                return
            if self._solo is None:
                self._solo = self._executor(1)
            solo = self._solo
        future = solo.submit(task.fn, *task.args)  # the only task in it: nothing queued behind
        future.add_done_callback(lambda f: self._solo_done(task, f, solo))

    def _solo_done(self, task: _Task, future: Future, solo: ProcessPoolExecutor) -> None:
        error = future.exception()
        if isinstance(error, BrokenProcessPool):
            with self._lock:
                if self._solo is solo:
                    self._solo = None  # a fresh one for the next task
                self.rebuilds += 1
            self.on_rebuild()
            solo.shutdown(wait=False)
            task.solo_deaths += 1
            if task.solo_deaths >= self.SOLO_DEATHS:
                log.error("a segmentation worker died %d times running one frame alone: the frame's fault",
                          task.solo_deaths)
                task.result.set_exception(FrameFault(
                    f"a segmentation worker died {task.solo_deaths} times on this frame alone "
                    "(out of memory, or a crash in native code)"))
            else:
                with self._lock:
                    self._solo_waiting.appendleft(task)
        else:
            _settle(task.result, future)
        self._solo_next()

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Replace the shared executor if it is still the broken one (many callbacks race here)."""
        with self._lock:
            if self.executor is not broken or self._closed:
                return
            self.executor = self._executor(self.workers)
            self.rebuilds += 1
        self.on_rebuild()
        log.warning("a segmentation worker died; the pool is rebuilt and its frames retried one at a time")
        broken.shutdown(wait=False)


def _settle(out: Future, done: Future) -> None:
    error = done.exception()
    if error is None:
        out.set_result(done.result())
    else:
        out.set_exception(error)
