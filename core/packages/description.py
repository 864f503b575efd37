"""BioImage.IO model packages, read with the ecosystem's own library (`bioimageio.spec`).

A package (a folder with bioimageio.yaml / rdf.yaml, the yaml file itself, or a .zip) is read
once at start into a `Package`: what the daemon needs to serve it (the ONNX weights, one 2-D
input and one output with their axes, sizes and halo, the pre- and postprocessing) and what the
stream and the log report (id, version, weights sha256, licence, authors, citations). Anything
the daemon cannot serve faithfully is refused by name (PackageError, one line), never guessed:
weights in other formats only, more than one input or output, a z or time axis, processing that
core/packages/ops.py does not implement.

`bioimageio.spec` is an optional extra (`pip install 'wellwatch[bioimageio]'`); without it a
configured package is refused with a line that names the extra.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wellwatch.core.errors import ContractError
from wellwatch.core.packages.ops import Op, UnsupportedOperation, check_ops
from wellwatch.core.contract import file_sha256

log = logging.getLogger(__name__)

EXTRA = "pip install 'wellwatch[bioimageio]'"
DESCRIPTION_NAMES = ("bioimageio.yaml", "rdf.yaml")
# elementwise operations only after the network: they may run per tile
ELEMENTWISE_POST = ("sigmoid", "clip", "scale_linear", "binarize", "ensure_dtype")


class PackageError(ContractError):
    """A BioImage.IO package that cannot be served; the message names the package and why."""


def is_package(path: str | Path) -> bool:
    """A package folder, its description file, or a zipped package (not an .onnx model)."""
    p = Path(path)
    if p.is_dir():
        return any((p / name).is_file() for name in DESCRIPTION_NAMES)
    return p.name.endswith((".yaml", ".yml", ".zip"))


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: axis ids in order (b, c, y, x), channel names, per-axis size and halo."""
    id: str
    axes: tuple[str, ...]
    channels: tuple[str, ...]
    min_size: dict[str, int]   # spatial axis -> fixed size, or the smallest of a parameterised one
    step: dict[str, int]       # spatial axis -> 0 (fixed) or the step of a parameterised size
    halo: dict[str, int]       # output spatial axis -> pixels at each edge not to be trusted
    ops: tuple[Op, ...]
    batch_size: int = 0        # 0 = any

    @property
    def spatial(self) -> tuple[str, ...]:
        return tuple(a for a in self.axes if a in ("y", "x"))

    def valid_size(self, axis: str, wanted: int) -> int:
        """The smallest size this tensor takes along `axis` that is >= wanted (fixed: its size)."""
        lo, step = self.min_size[axis], self.step[axis]
        if step == 0 or wanted <= lo:
            return lo
        return lo + -(-(wanted - lo) // step) * step


@dataclass(frozen=True)
class Tolerance:
    """bioimageio.spec's defaults for a continuous output when the description states none."""
    relative: float = 1e-3
    absolute: float = 1e-3
    mismatched_per_million: int = 100


@dataclass(frozen=True)
class Package:
    source: str
    id: str
    name: str
    version: str
    weights: Path
    weights_sha256: str
    input: TensorSpec
    output: TensorSpec
    test_input: Path
    test_output: Path
    tolerance: Tolerance
    license: str
    authors: tuple[str, ...]
    citations: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """"segmentation" (a per-pixel output) or "classification" (batch x classes)."""
        return "segmentation" if self.output.spatial else "classification"

    @property
    def identity(self) -> str:
        """The name the stream's `models` map carries: bioimageio:<id>/<version> (beside the weights' sha256)."""
        return f"bioimageio:{self.id}" + (f"/{self.version}" if self.version else "")

    def describe(self) -> str:
        return (f"BioImage.IO package {self.identity} ({self.name!r}, weights sha256 {self.weights_sha256[:12]}), "
                f"{self.kind}, licence {self.license}, by {', '.join(self.authors) or '?'}")


def _bioimageio_spec():
    try:
        import bioimageio.spec as spec
    except ImportError:
        return None
    return spec


def read_package(path: str | Path) -> Package:
    """Read and check a package; PackageError (one line) when it cannot be served."""
    source = str(path)
    spec = _bioimageio_spec()
    if spec is None:
        raise PackageError(source, f"is a BioImage.IO package, which needs the bioimageio extra ({EXTRA})")
    p = Path(path)
    if not p.exists():
        raise PackageError(source, "does not exist")
    if p.is_dir():
        found = [p / n for n in DESCRIPTION_NAMES if (p / n).is_file()]
        if not found:
            raise PackageError(source, f"folder has no {' or '.join(DESCRIPTION_NAMES)}")
        p = found[0]
    try:
        descr = spec.load_model_description(str(p), format_version="latest", perform_io_checks=False)
    except Exception as e:  # the library raises ValueError with a multi-line validation report
        raise PackageError(source, f"not a valid BioImage.IO model description ({_first_error(e)})") from None
    return _package_from(descr, source)


def _first_error(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("!", "|", "-", "=", "#"))] or lines or [type(e).__name__]
    return "; ".join(ln.rstrip(":") for ln in useful[:3])[:400]


_unpacked: dict[str, Path] = {}  # zipped package -> the folder its files were unpacked to


def _local(descr, file_descr, source: str, what: str) -> Path:
    """A package file as a local path, its sha256 checked against the description's (a zipped package's
    files are unpacked to a temporary folder: ONNX Runtime and numpy read files)."""
    rel = str(getattr(file_descr.source, "path", file_descr.source))
    if isinstance(descr.root, Path):
        path = descr.root / rel
    else:  # a zip: the library reads from it
        folder = _unpacked.setdefault(source, Path(tempfile.mkdtemp(prefix="wellwatch-package-")))
        path = folder / Path(rel).name
        try:
            path.write_bytes(file_descr.get_reader().read())
        except Exception as e:  # the library's own reader errors
            raise PackageError(source, f"{what} ({rel}) cannot be read ({_first_error(e)})") from None
    if not path.is_file():
        raise PackageError(source, f"{what} ({rel}) is missing from the package")
    stated = getattr(file_descr, "sha256", None)
    if stated is not None and file_sha256(path) != str(stated):
        raise PackageError(source, f"{what} ({rel}) has sha256 {file_sha256(path)[:12]}..., the description states "
                                   f"{str(stated)[:12]}...: the file was changed")
    return path


def _axis_id(axis) -> str:
    kind = str(getattr(axis, "type", ""))
    if kind == "batch":
        return "b"
    if kind == "channel":
        return "c"
    return str(axis.id)


def _tensor(descr, source: str, sizes_of: dict[tuple[str, str], tuple[int, int]], is_output: bool) -> TensorSpec:
    axes, channels, min_size, step, halo, batch = [], (), {}, {}, {}, 0
    for axis in descr.axes:
        a = _axis_id(axis)
        kind = str(getattr(axis, "type", ""))
        if kind in ("time", "index") or (kind == "space" and a not in ("x", "y")):
            raise PackageError(source, f"tensor {descr.id!r} has a {kind} axis {a!r}; only 2-D (y, x) images "
                                       "are served")
        axes.append(a)
        if kind == "batch":
            batch = int(axis.size or 0)
        elif kind == "channel":
            channels = tuple(str(n) for n in axis.channel_names)
        elif kind == "space":
            size = axis.size
            if isinstance(size, int):
                min_size[a], step[a] = size, 0
            elif hasattr(size, "min") and hasattr(size, "step"):
                min_size[a], step[a] = int(size.min), int(size.step)
            elif hasattr(size, "tensor_id"):  # a size reference: the same as another tensor's axis
                ref = sizes_of.get((str(size.tensor_id), str(size.axis_id)))
                if ref is None:
                    raise PackageError(source, f"tensor {descr.id!r} axis {a!r} refers to "
                                               f"{size.tensor_id}.{size.axis_id}, which is not an input axis")
                if getattr(size, "offset", 0):
                    raise PackageError(source, f"tensor {descr.id!r} axis {a!r}: a size offset is not served")
                min_size[a], step[a] = ref
            else:
                raise PackageError(source, f"tensor {descr.id!r} axis {a!r}: size {size!r} is not served")
            if is_output:
                halo[a] = int(getattr(axis, "halo", 0) or 0)
    if "c" not in axes:
        raise PackageError(source, f"tensor {descr.id!r} has no channel axis; wellwatch serves b, c, y, x tensors")
    ops = tuple((str(op.id), _kwargs(op)) for op in (descr.postprocessing if is_output else descr.preprocessing))
    try:
        check_ops(ops)
        if is_output and (bad := [o for o, _ in ops if o not in ELEMENTWISE_POST]):
            raise UnsupportedOperation(f"{bad[0]!r} after the network (tiles are postprocessed one by one; "
                                       f"allowed there: {', '.join(ELEMENTWISE_POST)})")
    except UnsupportedOperation as e:
        raise PackageError(source, f"tensor {descr.id!r}: unsupported processing {e}") from None
    return TensorSpec(str(descr.id), tuple(axes), channels, min_size, step, halo, ops, batch)


def _slug(name: str) -> str:
    return "-".join("".join(ch if ch.isalnum() else " " for ch in name.lower()).split())


def _tolerance(config: dict, output_id: str) -> Tolerance:
    """The description's reproducibility tolerance for a continuous output (spec 0.5 config), else the
    spec's defaults."""
    for t in (config.get("bioimageio") or {}).get("reproducibility_tolerance") or ():
        ids = t.get("output_ids")
        if ids in ("any_continuous_output", "any") or (isinstance(ids, list) and output_id in ids):
            return Tolerance(float(t.get("relative_tolerance", 1e-3)), float(t.get("absolute_tolerance", 1e-3)),
                             int(t.get("mismatched_elements_per_million", 100)))
    return Tolerance()


def _kwargs(op) -> dict[str, Any]:
    kwargs = getattr(op, "kwargs", None)
    if kwargs is None:
        return {}
    doc = kwargs.model_dump(mode="json") if hasattr(kwargs, "model_dump") else dict(kwargs)
    return {k: v for k, v in doc.items() if v is not None}


def _package_from(descr, source: str) -> Package:
    onnx = getattr(descr.weights, "onnx", None)
    if onnx is None:
        formats = [name for name in ("pytorch_state_dict", "torchscript", "keras_hdf5", "tensorflow_saved_model_bundle",
                                     "tensorflow_js") if getattr(descr.weights, name, None) is not None]
        raise PackageError(source, f"has {', '.join(formats) or 'no'} weights but no onnx weights; wellwatch serves "
                                   "ONNX (convert with bioimageio.core)")
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise PackageError(source, f"has {len(descr.inputs)} inputs and {len(descr.outputs)} outputs; one of each "
                                   "is served")
    inp_descr, out_descr = descr.inputs[0], descr.outputs[0]
    inp = _tensor(inp_descr, source, {}, is_output=False)
    sizes = {(inp.id, a): (inp.min_size[a], inp.step[a]) for a in inp.spatial}
    out = _tensor(out_descr, source, sizes, is_output=True)
    if len(inp.spatial) != 2:
        raise PackageError(source, f"input {inp.id!r} has axes {list(inp.axes)}; a 2-D (y, x) image is needed")

    weights = _local(descr, onnx, source, "the onnx weights")
    config = descr.config.model_dump(mode="json") if hasattr(descr.config, "model_dump") else dict(descr.config or {})
    if inp_descr.test_tensor is None or out_descr.test_tensor is None:
        raise PackageError(source, "has no test tensors; they are needed to check the weights at load")
    version = getattr(descr, "version", None)
    return Package(
        source=source, id=str(descr.id or _slug(descr.name)), name=str(descr.name),
        version=str(version) if version is not None else "",
        weights=weights, weights_sha256=file_sha256(weights), input=inp, output=out,
        test_input=_local(descr, inp_descr.test_tensor, source, "the test input"),
        test_output=_local(descr, out_descr.test_tensor, source, "the test output"),
        tolerance=_tolerance(config, out.id),
        license=str(descr.license or "?"), authors=tuple(str(a.name) for a in descr.authors or ()),
        citations=tuple(str(c.text) + (f" doi:{c.doi}" if getattr(c, "doi", None) else "") for c in descr.cite or ()),
        config=config)
