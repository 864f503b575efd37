"""The inference backend: one object owns the ONNX Runtime session.

The execution provider is chosen explicitly (CUDA, then CPU) and the one the session really got
is reported, because onnxruntime-gpu silently falls back to the CPU when CUDA cannot load.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from .contract import ModelContract, contract_from_metadata, file_sha256
from .errors import ContractError, ProviderError

log = logging.getLogger(__name__)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


class InferenceBackend(Protocol):
    """What the pipeline needs from a model; tests pass a fake."""

    path: str
    contract: ModelContract
    sha256: str
    provider: str

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, classes) probabilities; segmentation: (N, maps, H, W)."""
        ...


def batch_buckets(max_batch: int) -> list[int]:
    """Powers of two up to max_batch, and max_batch itself: the fixed shapes warmed up at start."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class OnnxBackend:
    def __init__(self, path: str | Path, device: str = "auto", require_gpu: bool = False,
                 max_batch: int = 256, intra_op_threads: int = 0, warmup: bool = True):
        import onnxruntime as ort

        self.path = str(path)
        if not Path(path).is_file():
            raise ContractError(self.path, "file does not exist")
        self.sha256 = file_sha256(path)
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        wanted = self._providers(device, ort.get_available_providers())
        # ORT prints a multi-line error when the CUDA provider cannot load; our one line below
        # replaces it (run with --verbose to see ORT's own account of why).
        quiet = not log.isEnabledFor(logging.DEBUG)
        if quiet:
            options.log_severity_level = 3
            ort.set_default_logger_severity(4)
        try:
            self.session = ort.InferenceSession(self.path, options, providers=wanted)
        except Exception as e:  # ORT raises its own exception types for bad graphs
            raise ContractError(self.path, f"ONNX Runtime cannot load it ({e})") from None
        finally:
            if quiet:
                ort.set_default_logger_severity(2)
        try:
            meta = self.session.get_modelmeta().custom_metadata_map
        except UnicodeDecodeError as e:  # a damaged file (a flipped bit) whose graph still loads
            raise ContractError(self.path, f"its metadata is not valid UTF-8 (byte {e.start}): the file is "
                                           "damaged; copy it again and compare its sha256") from None
        self.contract = contract_from_metadata(meta, self.path)
        self.provider = self.session.get_providers()[0]
        self.requested = wanted
        if CUDA in wanted and self.provider != CUDA:
            log.warning("execution provider: CPU (CUDA was requested but ONNX Runtime could not load its CUDA "
                        "provider: no GPU, or CUDA/cuDNN libraries missing)")
        if require_gpu and self.provider != CUDA:
            raise ProviderError(
                f"inference.require_gpu is true but ONNX Runtime gave {self.provider} "
                f"(asked for {', '.join(wanted)}); check the CUDA/cuDNN installation or set require_gpu = false")
        self._check_io()
        seg = self.contract.segmentation
        self.output_shape = ((len(seg.maps), self.contract.height, self.contract.width) if seg
                             else (len(self.contract.classes),))
        self.pad_to_buckets = self.provider == CUDA  # fixed shapes pay off on GPUs, padding costs on CPUs
        self.buckets = batch_buckets(max_batch)
        if warmup:
            self.warmup()

    @staticmethod
    def _providers(device: str, available: list[str]) -> list[str]:
        if device == "cpu" or CUDA not in available:
            return [CPU]
        return [CUDA, CPU]

    def _check_io(self) -> None:
        inputs = self.session.get_inputs()
        c = self.contract
        if len(inputs) != 1 or inputs[0].name != c.input_name:
            raise ContractError(self.path, f"graph inputs {[i.name for i in inputs]} do not match the "
                                           f"contract's input_name {c.input_name!r}")
        shape = inputs[0].shape
        expected = [len(c.channels), c.height, c.width]
        if len(shape) != 4 or list(shape[1:]) != expected:
            raise ContractError(self.path, f"graph input shape {shape} does not match the contract's "
                                           f"[N, {', '.join(map(str, expected))}]")
        out = self.session.get_outputs()[0].shape
        if c.segmentation is not None:
            expected = [len(c.segmentation.maps), c.height, c.width]
            if len(out) != 4 or list(out[1:]) != expected:
                raise ContractError(self.path, f"graph output shape {out} does not give the contract's "
                                               f"[N, {', '.join(map(str, expected))}] segmentation maps")
        elif len(out) != 2 or out[1] != len(c.classes):
            raise ContractError(self.path, f"graph output shape {out} does not give {len(c.classes)} classes")

    def warmup(self) -> None:
        t0 = time.perf_counter()
        c = self.contract
        for b in self.buckets:
            self._run(np.zeros((b, len(c.channels), c.height, c.width), np.float32))
        log.debug("warmed up batch buckets %s in %.2f s", self.buckets, time.perf_counter() - t0)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.contract.input_name: batch})[0]
        return softmax(out) if self.contract.output == "logits" else out

    def infer(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n == 0:
            return np.zeros((0, *self.output_shape), np.float32)
        if not self.pad_to_buckets:
            return self._run(batch)
        bucket = next((b for b in self.buckets if b >= n), None)
        if bucket is None:  # larger than max_batch: split
            return np.concatenate([self.infer(batch[i:i + self.buckets[-1]])
                                   for i in range(0, n, self.buckets[-1])])
        padded = np.zeros((bucket, *batch.shape[1:]), np.float32)
        padded[:n] = batch
        return self._run(padded)[:n]

    def describe(self) -> str:
        c = self.contract
        return (f"model {c.name!r} ({Path(self.path).name}, sha256 {self.sha256[:12]}) task={c.task} "
                f"input={len(c.channels)}x{c.height}x{c.width} provider={self.provider} "
                f"(asked for {', '.join(self.requested)})")
