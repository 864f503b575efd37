"""Open a BioImage.IO package for a model slot: read, checked on the real session, ready to serve.

Two kinds of package reach the daemon:
- one wellwatch wrote (`wellwatch export ... --bioimageio`): its weights.onnx still carries the
  model contract, so it is served exactly as that ONNX file would be (OnnxBackend, any slot);
- any other: a semantic-segmentation package is served as the segmenter (PackageBackend +
  core/segmentation/package.py). A classification package without a wellwatch contract is refused:
  its tile or crop geometry is not something the description states.
Either way the package's test tensors are run through the session the daemon got, first.
"""

from __future__ import annotations

import dataclasses
import logging

from wellwatch.core.packages.description import Package, PackageError, read_package
from wellwatch.core.config import InferenceConfig
from wellwatch.core.packages.ops import apply_ops
from wellwatch.core.packages.backend import PackageBackend, check_test_tensors
from wellwatch.core.inference.backend import OnnxBackend

log = logging.getLogger(__name__)


def is_wellwatch_package(package: Package) -> bool:
    return isinstance(package.config.get("wellwatch"), dict)


def open_package(path: str, task: str, inference: InferenceConfig, max_batch: int = 16):
    """A backend for the package at `path` in a slot that needs `task` (live_dead, cell_type, segmentation)."""
    package = read_package(path)
    if is_wellwatch_package(package):
        return _open_wellwatch(package, inference, max_batch)
    if task != "segmentation":
        raise PackageError(path, f"{package.identity} is a {package.kind} package without a wellwatch contract; "
                                 f"only segmentation packages made elsewhere are served (as [models.segmentation])")

    return PackageBackend(package, inference)


def _open_wellwatch(package: Package, inference: InferenceConfig, max_batch: int):
    backend = OnnxBackend(package.weights, max_batch=max_batch, inference=inference)
    name = backend.session.get_inputs()[0].name

    def run(x):
        out = backend.session.run(None, {name: x.astype("float32")})[0]
        return apply_ops(package.output.ops, out, package.output.axes)

    backend.deviation = check_test_tensors(package, run, backend.provider)
    backend.package_identity = package.identity
    backend.contract = dataclasses.replace(backend.contract, name=package.identity)  # the stream names the package
    return backend
