"""The daemon's segmentation processes: the CPU-heavy steps of core/segmentation/segmenters.py on
every core, surviving workers that die (the OOM killer, a crash in native code)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable

import numpy as np

from wellwatch.core.contract import CellCrop, ModelContract
from wellwatch.core.segmentation.classical import ClassicalParams
from wellwatch.core.segmentation.maps import ServeOptions
from wellwatch.core.segmentation.segmenters import classical_cells, model_cells
from wellwatch.daemon.lifeline import hold, lifeline

log = logging.getLogger(__name__)


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
