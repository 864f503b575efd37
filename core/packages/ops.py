"""BioImage.IO pre- and postprocessing operations, in numpy, as the package description states them.

Each operation is (id, kwargs) read from the package by core/packages/description.py; `apply_ops`
runs a list of them on one tensor whose axis ids are given ("b", "c", "y", "x"; "x"/"y" as the
spec names them). Statistics ("per_sample" mode) are taken over the axes the operation names,
over the whole tensor the daemon gives it: a whole frame, before tiling, so that tiles of one
frame share one normalisation (as the package's own test tensor, one sample, does).

Anything not listed in SUPPORTED is refused by name when the package is loaded, never skipped.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

Op = tuple[str, dict[str, Any]]

# the operation ids this reader implements (BioImage.IO spec 0.4/0.5 names)
SUPPORTED = ("ensure_dtype", "zero_mean_unit_variance", "fixed_zero_mean_unit_variance", "scale_range",
             "scale_linear", "clip", "binarize", "sigmoid", "scale_mean_variance")
_DTYPES = ("float32", "float64", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "bool")


_SHORT = {"batch": "b", "channel": "c"}  # spec 0.5 axis ids -> the short ids used here


class UnsupportedOperation(ValueError):
    """An operation (or one of its options) this reader does not implement."""


def _reduce_axes(axes: Sequence[str] | None, tensor_axes: Sequence[str]) -> tuple[int, ...]:
    """The array axes statistics are taken over; None = every axis but batch and channel."""
    if axes is None:
        axes = [a for a in tensor_axes if a not in ("b", "c")]
    axes = [_SHORT.get(str(a), str(a)) for a in axes]
    return tuple(tensor_axes.index(a) for a in axes if a in tensor_axes)


def _per_channel(value, tensor_axes: Sequence[str], ndim: int, along: str | None) -> np.ndarray:
    """A scalar, or a list of values along axis `along` (usually "c"), shaped to broadcast."""
    arr = np.asarray(value, np.float32)
    if arr.ndim == 0 or along is None:
        return arr
    shape = [1] * ndim
    shape[tensor_axes.index(along)] = arr.size
    return arr.reshape(shape)


def apply_op(op_id: str, kwargs: dict[str, Any], x: np.ndarray, tensor_axes: Sequence[str]) -> np.ndarray:
    k = kwargs
    if op_id == "ensure_dtype":
        dtype = str(k.get("dtype"))
        if dtype not in _DTYPES:
            raise UnsupportedOperation(f"ensure_dtype to {dtype!r}")
        return x.astype(dtype, copy=False)
    x = x.astype(np.float32, copy=False)
    if k.get("mode", "per_sample") not in ("per_sample", "fixed"):
        raise UnsupportedOperation(f"{op_id} with mode {k['mode']!r} (only per_sample statistics are served)")
    along = k.get("axis")  # 0.5 per-channel parameters name their axis
    along = _SHORT.get(str(along), str(along)) if along is not None else None
    if op_id == "zero_mean_unit_variance":
        axes = _reduce_axes(k.get("axes"), tensor_axes)
        mean = x.mean(axis=axes, keepdims=True)
        std = x.std(axis=axes, keepdims=True)
        return ((x - mean) / (std + np.float32(k.get("eps", 1e-6)))).astype(np.float32)
    if op_id == "fixed_zero_mean_unit_variance":
        mean = _per_channel(k["mean"], tensor_axes, x.ndim, along)
        std = _per_channel(k["std"], tensor_axes, x.ndim, along)
        return ((x - mean) / (std + np.float32(k.get("eps", 1e-6)))).astype(np.float32)
    if op_id == "scale_range":
        if k.get("reference_tensor"):
            raise UnsupportedOperation("scale_range with a reference_tensor")
        axes = _reduce_axes(k.get("axes"), tensor_axes)
        lo = np.percentile(x, k.get("min_percentile", 0.0), axis=axes, keepdims=True)
        hi = np.percentile(x, k.get("max_percentile", 100.0), axis=axes, keepdims=True)
        return ((x - lo) / (hi - lo + np.float32(k.get("eps", 1e-6)))).astype(np.float32)
    if op_id == "scale_linear":
        gain = _per_channel(k.get("gain", 1.0), tensor_axes, x.ndim, along)
        offset = _per_channel(k.get("offset", 0.0), tensor_axes, x.ndim, along)
        return (x * gain + offset).astype(np.float32)
    if op_id == "clip":
        return np.clip(x, k.get("min"), k.get("max")).astype(np.float32)
    if op_id == "binarize":
        threshold = _per_channel(k["threshold"], tensor_axes, x.ndim, along)
        return (x > threshold).astype(np.float32)
    if op_id == "sigmoid":
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    raise UnsupportedOperation(op_id)


def apply_ops(ops: Sequence[Op], x: np.ndarray, tensor_axes: Sequence[str]) -> np.ndarray:
    for op_id, kwargs in ops:
        x = apply_op(op_id, kwargs, x, tensor_axes)
    return x


def check_ops(ops: Sequence[Op]) -> None:
    """Raise UnsupportedOperation naming the first operation (or option) that cannot be served."""
    for op_id, kwargs in ops:
        if op_id not in SUPPORTED:
            raise UnsupportedOperation(f"{op_id!r} (supported: {', '.join(SUPPORTED)})")
        if op_id == "scale_mean_variance":
            raise UnsupportedOperation("'scale_mean_variance' (it needs a reference tensor)")
        if kwargs.get("mode", "per_sample") not in ("per_sample", "fixed"):
            raise UnsupportedOperation(f"{op_id!r} with mode {kwargs['mode']!r} (only per_sample statistics)")
        if op_id == "scale_range" and kwargs.get("reference_tensor"):
            raise UnsupportedOperation("'scale_range' with a reference_tensor")
