"""The inference backend: one object owns the ONNX Runtime session.

The execution providers are asked for explicitly (TensorRT when enabled, CUDA, then CPU; see
providers.py) and the one the session really got is read back and reported, because
onnxruntime-gpu silently falls back to the CPU when CUDA cannot load. On a GPU the model's
float16 twin (NAME.fp16.onnx) is used when it exists (inference.precision), and batches run
through I/O binding on fixed, warmed batch sizes with pinned host buffers (bound_session.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from wellwatch.core.inference.bound_session import BoundSession
from wellwatch.core.config import InferenceConfig
from wellwatch.core.contract import AFFINE_INPUT, ModelContract, contract_from_metadata, file_sha256
from wellwatch.core.errors import ContractError, ProviderError
from wellwatch.core.inference.providers import CPU, CUDA, TENSORRT, is_gpu, provider_chain
from wellwatch.core.raw_tiles import raw_tile_dtype

log = logging.getLogger(__name__)

FP16_SUFFIX = ".fp16.onnx"  # export/fp16.py writes the twin beside the float32 model
PRECISION_KEY = "wellwatch.precision"


class InferenceBackend(Protocol):
    """What the pipeline needs from a model; tests pass a fake."""

    path: str
    contract: ModelContract
    sha256: str
    provider: str

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, classes) probabilities; segmentation: (N, maps, H, W).
        A model with normalisation_in_graph takes raw tiles (see core/raw_tiles.py)."""
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


def fp16_twin(path: str | Path) -> Path:
    """model.onnx -> model.fp16.onnx beside it (whether or not it exists)."""
    path = Path(path)
    stem = path.name[:-len(".onnx")] if path.name.endswith(".onnx") else path.name
    return path.with_name(stem + FP16_SUFFIX)


def export_parity(model: str | Path) -> str:
    """The export's parity check of `model` in words, from the manifest beside it ('' without one):
    for a float16 twin, the tolerance it was held to against PyTorch and what it reached."""
    try:
        doc = json.loads(Path(f"{model}.manifest.json").read_text())
        p = doc["parity"]
        text = (f"max |diff| {p['max_abs_diff']:.3g} vs {p.get('against', 'PyTorch')} within atol {p['atol']:g} "
                f"rtol {p['rtol']:g} on {p.get('provider', '?')}")
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    decisions = doc.get("decisions")
    if isinstance(decisions, dict) and "disagreements" in decisions:
        text += f", {decisions['disagreements']} of {decisions.get('samples', '?')} decisions changed"
    return text


class OnnxBackend:
    def __init__(self, path: str | Path, device: str = "auto", require_gpu: bool = False,
                 max_batch: int = 256, intra_op_threads: int = 0, warmup: bool = True,
                 inference: InferenceConfig | None = None):
        """`inference` (the [inference] table) overrides device, require_gpu, intra_op_threads and warmup."""
        cfg = inference or InferenceConfig(device=device, require_gpu=require_gpu,
                                           intra_op_threads=intra_op_threads, warmup=warmup)
        self.inference = cfg
        if not Path(path).is_file():
            raise ContractError(str(path), "file does not exist")
        # the configured sizes below this model's largest batch, and that largest batch itself
        self.buckets = ([b for b in cfg.batch_sizes if b < max_batch] + [max_batch] if cfg.batch_sizes
                        else batch_buckets(max_batch))
        self.path, self.session, self.provider, self.requested = self._open_preferred(Path(path))
        self.sha256 = file_sha256(self.path)
        self.precision = self._metadata().get(PRECISION_KEY, "float32")
        self.parity = export_parity(self.path)
        if cfg.require_gpu and not is_gpu(self.provider):
            raise ProviderError(
                f"inference.require_gpu is true but ONNX Runtime gave {self.provider} "
                f"(asked for {', '.join(self.requested)}); check the CUDA/cuDNN installation or set require_gpu = false")
        c = self.contract
        seg = c.segmentation
        self.output_shape = ((len(seg.maps), c.height, c.width) if seg else (len(c.classes),))
        on_gpu = is_gpu(self.provider)
        self.io_binding = cfg.io_binding == "on" or (cfg.io_binding == "auto" and on_gpu)
        self.pad_to_buckets = self.io_binding or on_gpu  # fixed shapes pay off on GPUs, padding costs on CPUs
        self.bound: BoundSession | None = None
        if self.io_binding:
            self.bound = BoundSession(self.session, self._input_specs(), (self.session.get_outputs()[0].name,
                                      self.output_shape), self.buckets, pin=on_gpu)
        self.pinned = bool(self.bound and self.bound.pinned)
        if cfg.warmup:
            self.warmup()

    # --- opening: which file, which provider ------------------------------------------------

    def _open_preferred(self, path: Path):
        """The float16 twin on a GPU when precision allows and it exists, else the float32 model."""
        cfg = self.inference
        twin = fp16_twin(path)
        if cfg.precision == "fp16" and not twin.is_file():
            raise ContractError(str(path), f"inference.precision = 'fp16' but there is no {twin.name} beside it "
                                           "(make one with `wellwatch export ... --fp16`)")
        import onnxruntime as ort

        gpu_possible = cfg.device != "cpu" and CUDA in ort.get_available_providers()
        if cfg.precision == "fp16" or (cfg.precision == "auto" and gpu_possible and twin.is_file()):
            session, provider, requested = self._open(twin)
            if is_gpu(provider):
                return str(twin), session, provider, requested
            if cfg.precision == "fp16":
                raise ProviderError(f"inference.precision = 'fp16' but ONNX Runtime gave {provider} (asked for "
                                    f"{', '.join(requested)}); float16 models are for GPUs: set precision to auto")
            log.info("%s: float16 twin not used: the session runs on %s", path.name, provider)
        session, provider, requested = self._open(path)
        return str(path), session, provider, requested

    def _open(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.inference.intra_op_threads:
            options.intra_op_num_threads = self.inference.intra_op_threads
        if not self.inference.spin_wait:  # idle ORT threads sleep, not spin: the CPU goes to preparation
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        trt = self.inference.tensorrt.enable and self.inference.device != "cpu" and TENSORRT in available
        if trt:  # TensorRT's shape profile needs the contract's input shapes before its session exists
            self._read_contract(self._session(ort, path, ort.SessionOptions(), [CPU]), path)
        chain = provider_chain(self.inference, available, self._input_shapes() if trt else [], self.buckets)
        names = [name for name, _ in chain]
        # ORT prints a multi-line error when the CUDA provider cannot load; our one line below
        # replaces it (run with --verbose to see ORT's own account of why).
        quiet = not log.isEnabledFor(logging.DEBUG)
        if quiet:
            options.log_severity_level = 3
            ort.set_default_logger_severity(4)
        try:
            session = self._session(ort, path, options, chain)
        finally:
            if quiet:
                ort.set_default_logger_severity(2)
        self._read_contract(session, path)
        provider = session.get_providers()[0]
        if len(names) > 1 and provider != names[0]:
            log.warning("execution provider: %s (%s was requested but ONNX Runtime could not use it: no GPU, or "
                        "CUDA/cuDNN/TensorRT libraries missing)", provider, names[0])
        self._check_io(session, str(path))
        return session, provider, names

    @staticmethod
    def _session(ort, path: Path, options, providers):
        # when a provider raises (TensorRT without its libraries), ORT's Python wrapper prints a banner
        # on stdout and retries without it; stdout may carry a program's JSON, so the banner becomes one
        # log line (and the provider really got is reported by the caller)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # ORT raises its own exception types for bad graphs
            raise ContractError(str(path), f"ONNX Runtime cannot load it ({e})") from None
        error = next((line for line in printed.getvalue().splitlines() if line.startswith("EP Error ")), "")
        if error:
            log.warning("%s: %s; ONNX Runtime retried without that provider", path.name,
                        error.split(" when using ")[0][:300])
        return session

    def _read_contract(self, session, path: Path) -> None:
        try:
            meta = session.get_modelmeta().custom_metadata_map
        except UnicodeDecodeError as e:  # a damaged file (a flipped bit) whose graph still loads
            raise ContractError(str(path), f"its metadata is not valid UTF-8 (byte {e.start}): the file is "
                                           "damaged; copy it again and compare its sha256") from None
        contract = contract_from_metadata(meta, str(path))
        previous = getattr(self, "contract", None)
        if previous is not None and previous.to_json() != contract.to_json():
            raise ContractError(str(path), "its contract differs from the float32 model's: export the pair again")
        self.contract = contract

    def _metadata(self) -> dict[str, str]:
        return self.session.get_modelmeta().custom_metadata_map

    def _input_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(name, shape) for name, _, shape in self._input_specs()]

    def _input_specs(self) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
        """(name, dtype, per-sample shape) of each graph input, as the contract defines them."""
        c = self.contract
        if c.normalisation_in_graph:
            return [(c.input_name, np.dtype(np.uint16), (len(c.channels), c.height, c.width)),
                    (AFFINE_INPUT, np.dtype(np.float32), (len(c.channels), 2))]
        return [(c.input_name, np.dtype(np.float32), (len(c.channels), c.height, c.width))]

    def _check_io(self, session, path: str) -> None:
        c = self.contract
        inputs = {i.name: i for i in session.get_inputs()}
        specs = self._input_specs()
        if sorted(inputs) != sorted(name for name, _, _ in specs):
            raise ContractError(path, f"graph inputs {sorted(inputs)} do not match the contract's "
                                      f"{[name for name, _, _ in specs]}")
        for name, dtype, shape in specs:
            got = inputs[name]
            want_type = "tensor(uint16)" if dtype == np.uint16 else "tensor(float)"
            if got.type != want_type:
                raise ContractError(path, f"graph input {name!r} is {got.type}; the contract needs {want_type}")
            if len(got.shape) != len(shape) + 1 or list(got.shape[1:]) != list(shape):
                raise ContractError(path, f"graph input shape {got.shape} does not match the contract's "
                                          f"[N, {', '.join(map(str, shape))}]")
        out = session.get_outputs()[0].shape
        if c.segmentation is not None:
            expected = [len(c.segmentation.maps), c.height, c.width]
            if len(out) != 4 or list(out[1:]) != expected:
                raise ContractError(path, f"graph output shape {out} does not give the contract's "
                                          f"[N, {', '.join(map(str, expected))}] segmentation maps")
        elif len(out) != 2 or out[1] != len(c.classes):
            raise ContractError(path, f"graph output shape {out} does not give {len(c.classes)} classes")

    # --- running ---------------------------------------------------------------------------

    def warmup(self) -> None:
        """Run every fixed batch size once: cuDNN's algorithm search, arena growth and TensorRT's
        engine build happen here, not on the first frames."""
        t0 = time.perf_counter()
        for b in self.buckets:
            self._run(self._feeds(self.zeros(b)))
        log.debug("warmed up batch sizes %s in %.2f s", self.buckets, time.perf_counter() - t0)

    def zeros(self, n: int) -> np.ndarray:
        """A batch of n all-zero inputs in the form infer() takes."""
        c = self.contract
        shape = (n, len(c.channels), c.height, c.width)
        if not c.normalisation_in_graph:
            return np.zeros(shape, np.float32)
        return np.zeros(n, raw_tile_dtype(len(c.channels), c.height))

    def _feeds(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.contract.normalisation_in_graph:
            return {self.contract.input_name: np.ascontiguousarray(batch["raw"]),
                    AFFINE_INPUT: np.ascontiguousarray(batch["affine"])}
        return {self.contract.input_name: batch}

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self.bound is not None:
            out = self.bound.run(feeds)
        else:
            out = self.session.run(None, feeds)[0]
        return softmax(out) if self.contract.output == "logits" else out

    def infer(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n == 0:
            return np.zeros((0, *self.output_shape), np.float32)
        largest = self.buckets[-1]
        if self.pad_to_buckets and n > largest:  # larger than the largest fixed size: split
            return np.concatenate([self.infer(batch[i:i + largest]) for i in range(0, n, largest)])
        if self.bound is not None:  # pads to its fixed sizes itself
            return self._run(self._feeds(batch))
        if not self.pad_to_buckets:
            return self._run(self._feeds(batch))
        bucket = next(b for b in self.buckets if b >= n)
        padded = self.zeros(bucket)
        padded[:n] = batch
        return self._run(self._feeds(padded))[:n]

    def close(self) -> None:
        if self.bound is not None:
            self.bound.close()
            self.bound = None

    def describe(self) -> str:
        c = self.contract
        binding = ("io binding " + ("(pinned host buffers)" if self.pinned else "(pageable host buffers)")
                   if self.io_binding else "no io binding")
        return (f"model {c.name!r} ({Path(self.path).name}, sha256 {self.sha256[:12]}) task={c.task} "
                f"input={len(c.channels)}x{c.height}x{c.width}{' raw uint16 (normalised in graph)' if c.normalisation_in_graph else ''} "
                f"provider={self.provider} (asked for {', '.join(self.requested)}) precision={self.precision} "
                f"{binding}, batch sizes {self.buckets}"
                + (f"; export parity {self.parity}" if self.parity and self.precision != "float32" else ""))

