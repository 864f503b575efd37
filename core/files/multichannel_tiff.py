"""One TIFF holding all of a field's channels: (C, Y, X) pages named by OME-XML or ImageJ labels.

Some software writes a field's channels into one file (an OME-TIFF per field, ImageJ hyperstacks,
multi-page exports). The channel names come from the file itself: OME-XML `<Channel Name=...>`,
else ImageJ's `Labels`, else "1".."C" (1-based, as most vendors number channels). The caller picks
the model's channels by those names (`channels.label_free`).
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import numpy as np
import tifffile

from wellwatch.core.errors import FrameReadError
from wellwatch.core.files.tiff import check_frame


def decode_channels(path: str, data: bytes) -> dict[str, np.ndarray]:
    """Channel name -> 2-D image, from a TIFF whose pages (or first axis) are its channels."""
    if not data:
        raise FrameReadError(path, "file is empty (0 bytes)")
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            stack = tif.series[0].asarray()
            names = _ome_names(tif.ome_metadata) or _imagej_names(tif.imagej_metadata)
    except Exception as e:  # a truncated file lands here; waiting may let the writer finish
        raise FrameReadError(path, f"not a readable TIFF ({type(e).__name__}: {e})") from None
    stack = np.squeeze(stack)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise FrameReadError(path, f"expected (channels, Y, X), got shape {stack.shape}; one field and z "
                                   "plane per file", retryable=False)
    if len(names) != len(stack):
        names = [str(i + 1) for i in range(len(stack))]
    return {name: check_frame(path, plane) for name, plane in zip(names, stack)}


def pick_channels(path: str, planes: dict[str, np.ndarray], wanted: tuple[str, ...]) -> list[np.ndarray]:
    missing = [w for w in wanted if w not in planes]
    if missing:
        raise FrameReadError(path, f"channel(s) {missing} not in the file; it has {list(planes)} "
                                   "(set channels.label_free to these names)", retryable=False)
    return [planes[w] for w in wanted]


def _ome_names(xml: str | None) -> list[str]:
    if not xml:
        return []
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return []
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    pixels = root.find(f"{ns}Image/{ns}Pixels")
    if pixels is None:
        return []
    return [c.get("Name") or str(i + 1) for i, c in enumerate(pixels.findall(f"{ns}Channel"))]


def _imagej_names(meta: dict | None) -> list[str]:
    labels = (meta or {}).get("Labels")
    return [str(x) for x in labels] if isinstance(labels, (list, tuple)) else []
