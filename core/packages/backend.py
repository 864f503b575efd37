"""A BioImage.IO package's ONNX weights on the daemon's ONNX Runtime session, checked at load.

`PackageBackend.infer` takes (N, C, H, W) float32 tiles already preprocessed (the statistics of
the package's preprocessing are a whole frame's, taken before tiling: core/segmentation/package.py)
and returns the network's output with the package's elementwise postprocessing applied. At load
the package's own test input goes through the package's preprocessing, this very session and the
postprocessing; if the result is not the package's test output within its tolerance, the model
is refused with one line naming the package and the worst deviation.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from wellwatch.core.packages.description import Package, PackageError
from wellwatch.core.config import InferenceConfig, TensorrtConfig
from wellwatch.core.packages.ops import apply_ops
from wellwatch.core.inference.providers import CPU, provider_chain

log = logging.getLogger(__name__)

CANONICAL = ("b", "c", "y", "x")


@dataclasses.dataclass(frozen=True)
class Deviation:
    worst_abs: float         # the largest |output - expected|
    worst_index: tuple[int, ...]
    mismatched: int          # elements outside atol + rtol * |expected|
    elements: int

    @property
    def per_million(self) -> float:
        return 1e6 * self.mismatched / max(1, self.elements)


def deviation(got: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> Deviation:
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    bad = diff > atol + rtol * np.abs(expected.astype(np.float64))
    worst = np.unravel_index(int(np.nanargmax(diff)), diff.shape) if diff.size else ()
    return Deviation(float(diff.max()) if diff.size else 0.0, tuple(int(i) for i in worst), int(bad.sum()), diff.size)


def check_test_tensors(package: Package, run, provider: str) -> Deviation:
    """The package's test input through its preprocessing, `run` (the session the daemon really got,
    then the postprocessing) must give its test output within the package's tolerance; else
    PackageError naming the package and the worst deviation."""
    try:
        test_in, expected = np.load(package.test_input), np.load(package.test_output)
    except (OSError, ValueError) as e:
        raise PackageError(package.source, f"its test tensors cannot be read as .npy ({e})") from None
    x = apply_ops(package.input.ops, test_in, package.input.axes)
    try:
        got = run(x)
    except Exception as e:  # ORT's own exception types: shape or type mismatch
        raise PackageError(package.source, f"its weights fail on its own test input {test_in.shape} "
                                           f"({str(e).splitlines()[0][:200]})") from None
    if got.shape != expected.shape:
        raise PackageError(package.source, f"its test input gives an output of shape {got.shape}, its test output "
                                           f"is {expected.shape}")
    tol = package.tolerance
    d = deviation(got, expected, tol.relative, tol.absolute)
    if d.per_million > tol.mismatched_per_million:
        raise PackageError(package.source, f"{package.identity}: its test input does not reproduce its test output "
                                           f"on {provider}: worst |difference| {d.worst_abs:.3g} at "
                                           f"{list(d.worst_index)}, {d.mismatched} of {d.elements} elements outside "
                                           f"atol {tol.absolute:g} + rtol {tol.relative:g} (allowed "
                                           f"{tol.mismatched_per_million} per million)")
    log.info("%s: test tensors reproduced on %s (worst |difference| %.3g, %d of %d outside tolerance)",
             package.identity, provider, d.worst_abs, d.mismatched, d.elements)
    return d


class PackageBackend:
    """What the pipeline needs from a model (path, sha256, provider, infer), for a package."""

    def __init__(self, package: Package, inference: InferenceConfig | None = None, check: bool = True):
        self.package = package
        self.path = package.source
        self.sha256 = package.weights_sha256
        self.name = package.identity
        cfg = dataclasses.replace(inference or InferenceConfig(device="cpu"), tensorrt=TensorrtConfig(enable=False))
        self.session, self.provider = self._open(cfg)
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.fixed_batch = graph_input.shape[0] if isinstance(graph_input.shape[0], int) else 0
        self.to_package = tuple(CANONICAL.index(a) for a in package.input.axes)  # canonical -> package order
        self.from_package = tuple(package.output.axes.index(a) for a in CANONICAL if a in package.output.axes)
        self.deviation: Deviation | None = None
        if check:
            self.deviation = self.check_test_tensors()

    def _open(self, cfg: InferenceConfig):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if cfg.intra_op_threads:
            options.intra_op_num_threads = cfg.intra_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg.spin_wait else "0")
        chain = provider_chain(cfg, ort.get_available_providers(), [], [1])
        try:
            session = ort.InferenceSession(str(self.package.weights), options, providers=chain)
        except Exception as e:  # ORT's own exception types
            raise PackageError(self.path, f"ONNX Runtime cannot load its weights ({str(e).splitlines()[0][:300]})") \
                from None
        provider = session.get_providers()[0]
        if cfg.require_gpu and provider == CPU:
            raise PackageError(self.path, "inference.require_gpu is true but ONNX Runtime gave the CPU")
        return session, provider

    # --- running -----------------------------------------------------------------------------

    def run_package_order(self, x: np.ndarray) -> np.ndarray:
        """The network and the postprocessing on a batch in the package's own axis order."""
        x = np.ascontiguousarray(x, np.float32)
        if self.fixed_batch and len(x) != self.fixed_batch:
            step = self.fixed_batch
            parts = [self.session.run(None, {self.input_name: x[i:i + step]})[0] for i in range(0, len(x), step)]
            out = np.concatenate(parts)
        else:
            out = self.session.run(None, {self.input_name: x})[0]
        return apply_ops(self.package.output.ops, out, self.package.output.axes)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) preprocessed tiles -> the postprocessed output, (N, C, H, W) or (N, classes)."""
        if len(batch) == 0:
            return np.zeros((0,), np.float32)
        out = self.run_package_order(np.transpose(batch, self.to_package))
        return np.ascontiguousarray(np.transpose(out, self.from_package))

    def check_test_tensors(self) -> Deviation:
        return check_test_tensors(self.package, self.run_package_order, self.provider)

    def describe(self) -> str:
        check = (f"; test tensors reproduced, worst |difference| {self.deviation.worst_abs:.3g}"
                 if self.deviation is not None else "")
        return f"{self.package.describe()}, provider={self.provider}{check}"

    def close(self) -> None:
        pass
