"""Preparation in worker processes: decode, normalise and the empty filter off the daemon's GIL.

`pipeline.prepare_workers` > 0 starts this pool. Frames never cross a pipe: the read thread copies
a file's bytes (the ones it hashed) into a shared-memory input buffer; a worker decodes them and
writes the normalised planes straight into a shared-memory output buffer; only small things go back
(shape, tile origins, empty mask, or an error). The batcher then copies the kept tiles out of the
shared planes into its batch (a `TileSet`) and hands the buffer back to the ring.

Buffers come from a ring (`SharedBuffers`) of at most `slots` pairs, created on first use and grown
when a bigger frame arrives; a read thread that finds none free prepares that frame itself (so a
batcher waiting for more patches can never stall the ring). The ring bounds the shared memory:
slots x (file bytes + 4 bytes per pixel), pages reserved when a buffer is made, so that a full
/dev/shm (a container's 64 MB) sends frames to the threads, never a SIGBUS.

A worker that dies (the OOM killer, a crash in a native decoder) breaks the executor; it is replaced,
and the frames it held get `WorkerDied`: the read stage retries them like a damaged file (and
quarantines one that kills workers `pipeline.max_retries` + 1 times), so no frame is lost or counted twice.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Callable

import numpy as np

from wellwatch.core.contract import ModelContract
from wellwatch.core.errors import FrameReadError
from wellwatch.daemon.lifeline import hold, lifeline
from wellwatch.core.preprocess import TileSet, prepare_tile_set
from wellwatch.core.files.tiff import FrameLimits, decode_frame

log = logging.getLogger(__name__)


class WorkerDied(Exception):
    """The preparation process holding a frame died (the frame may or may not be the cause)."""


# --- shared buffers (daemon side) -------------------------------------------------------------------

class _Segment:
    """One shared-memory segment, replaced by a bigger one when a frame does not fit."""

    def __init__(self):
        self.shm: shared_memory.SharedMemory | None = None

    @property
    def capacity(self) -> int:
        return self.shm.size if self.shm is not None else 0

    def ensure(self, nbytes: int) -> None:
        if nbytes > self.capacity:
            self.close()
            shm = shared_memory.SharedMemory(create=True, size=max(nbytes, 1))
            try:  # reserve the pages now: a full /dev/shm is an OSError here, not a SIGBUS on first write
                os.posix_fallocate(shm._fd, 0, shm.size)
            except OSError as e:
                shm.close()
                shm.unlink()
                raise OSError(e.errno, f"cannot reserve {nbytes / 1e6:.0f} MB of shared memory for a frame "
                                       f"({e.strerror}); is /dev/shm too small?") from None
            except AttributeError:  # no posix_fallocate on this platform
                pass
            self.shm = shm

    def close(self) -> None:
        if self.shm is None:
            return
        try:
            self.shm.close()
        except BufferError:  # a view is still alive somewhere (shutdown with work in flight)
            pass
        self.shm.unlink()
        self.shm = None


@dataclass(eq=False)
class Slot:
    data: _Segment    # the file's bytes, as hashed
    planes: _Segment  # the normalised float32 planes the worker writes


class SharedBuffers:
    """A ring of at most `slots` (input, output) shared-memory pairs; `acquire` blocks while all are in use."""

    def __init__(self, slots: int):
        self._free: list[Slot] = []
        self._made = 0
        self._slots = slots
        self._lock = threading.Lock()
        self._closed = False
        self._all: list[Slot] = []

    def acquire(self) -> Slot | None:
        """A free slot, a new one while fewer than `slots` exist, else None (all busy)."""
        with self._lock:
            if self._closed:
                return None
            if self._free:
                return self._free.pop()
            if self._made >= self._slots:
                return None
            self._made += 1
            slot = Slot(_Segment(), _Segment())
            self._all.append(slot)
            return slot

    def release(self, slot: Slot) -> None:
        with self._lock:
            self._free.append(slot)

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._made - len(self._free)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for slot in self._all:
                slot.data.close()
                slot.planes.close()


# --- the worker side ------------------------------------------------------------------------------

_contract: ModelContract | None = None
_limits: FrameLimits = FrameLimits()
_attached: dict[str, shared_memory.SharedMemory] = {}


def _init_worker(contract: ModelContract, limits: FrameLimits, line) -> None:
    global _contract, _limits
    hold(line)  # end with the daemon
    _contract, _limits = contract, limits


def _attach(name: str) -> shared_memory.SharedMemory:
    shm = _attached.get(name)
    if shm is None:
        if len(_attached) > 64:  # more than the ring holds: some were replaced by bigger ones
            for old in _attached.values():
                old.close()
            _attached.clear()
        shm = _attached[name] = shared_memory.SharedMemory(name=name)
    return shm


def prepare_shared(path: str, data_name: str, nbytes: int, planes_name: str | None, capacity: int):
    """In a worker: decode the bytes in `data_name`, normalise into `planes_name`.
    -> ("ok", shape, origins, empty) | ("grow", bytes needed) | ("error", reason, retryable)."""
    data = bytes(_attach(data_name).buf[:nbytes])
    try:
        image = decode_frame(path, data, _limits)
    except FrameReadError as e:
        return "error", e.reason, e.retryable
    need = 4 * image.size
    if planes_name is None or need > capacity:
        return "grow", need
    planes = np.ndarray((1, *image.shape), np.float32, buffer=_attach(planes_name).buf)
    try:
        _, origins, empty = prepare_tile_set([image], _contract, planes=planes)
    except Exception as e:  # noqa: BLE001 - a frame the model cannot take; the read stage quarantines it
        return "error", f"cannot be prepared for the model ({type(e).__name__}: {e})", False
    return "ok", image.shape, origins, empty


def _ready() -> int:
    return os.getpid()


# --- the pool -------------------------------------------------------------------------------------

class PreparePool:
    """`workers` processes that turn a file's bytes into a `TileSet` over shared memory."""

    def __init__(self, workers: int, contract: ModelContract, limits: FrameLimits, slots: int,
                 on_rebuild: Callable[[], None] | None = None):
        assert contract.tiling is not None
        self.workers, self.contract, self.limits = workers, contract, limits
        self.buffers = SharedBuffers(slots)
        self.on_rebuild = on_rebuild or (lambda: None)
        self.rebuilds = 0
        self._short_warned = False
        self._context = multiprocessing.get_context("spawn")  # fork is unsafe beside the daemon's threads
        self._lock = threading.Lock()
        self.executor = self._start()

    def _start(self, attempts: int = 5) -> ProcessPoolExecutor:
        for attempt in range(attempts):
            executor = ProcessPoolExecutor(self.workers, mp_context=self._context, initializer=_init_worker,
                                           initargs=(self.contract, self.limits, lifeline()))
            try:
                for f in [executor.submit(_ready) for _ in range(self.workers)]:
                    f.result()  # start the workers now, not on the first frame
                return executor
            except BrokenProcessPool:  # a worker died while starting: start again
                executor.shutdown(wait=False, cancel_futures=True)
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def pids(self) -> list[int]:
        return [p.pid for p in list((getattr(self.executor, "_processes", None) or {}).values())]

    def prepare(self, path: str, data: bytes) -> tuple[TileSet, np.ndarray, np.ndarray] | None:
        """The file's bytes -> (its kept tiles over a shared buffer, all origins, empty mask); None
        when every buffer is busy (the caller prepares the frame itself). Raises FrameReadError for
        a bad frame, WorkerDied when the process preparing it died."""
        slot = self.buffers.acquire()
        if slot is None:
            return None
        try:
            if not self._reserve(slot.data, len(data)):
                self.buffers.release(slot)
                return None
            slot.data.shm.buf[:len(data)] = data
            while True:
                planes = slot.planes.shm.name if slot.planes.shm is not None else None
                result = self._run(prepare_shared, path, slot.data.shm.name, len(data), planes, slot.planes.capacity)
                if result[0] != "grow":
                    break
                if not self._reserve(slot.planes, result[1]):
                    self.buffers.release(slot)
                    return None
            if result[0] == "error":
                raise FrameReadError(path, result[1], retryable=result[2])
        except BaseException:
            self.buffers.release(slot)
            raise
        _, shape, origins, empty = result
        view = np.ndarray((1, *shape), np.float32, buffer=slot.planes.shm.buf)
        return TileSet(view, origins[~empty], self.contract.tiling.tile_size,
                       release=lambda: self.buffers.release(slot)), origins, empty

    def _reserve(self, segment: _Segment, nbytes: int) -> bool:
        """Grow a buffer; False (the frame is prepared in its thread) when shared memory is short."""
        try:
            segment.ensure(nbytes)
            return True
        except OSError as e:
            if not self._short_warned:
                log.warning("%s; frames that do not fit are prepared in the read threads", e)
                self._short_warned = True
            return False

    def _run(self, fn, *args):
        executor = self.executor
        try:
            return executor.submit(fn, *args).result()
        except BrokenProcessPool:
            self._replace(executor)
            raise WorkerDied("a preparation process died while it held this frame") from None

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self.executor is not broken:
                return  # another thread already replaced it
            log.error("a preparation process died; starting a new pool of %d", self.workers)
            broken.shutdown(wait=False, cancel_futures=True)
            self.rebuilds += 1
            self.on_rebuild()
            self.executor = self._start()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.buffers.close()
