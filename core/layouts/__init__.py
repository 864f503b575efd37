"""The plate layout as the microscope's own software describes it.

Vendor software writes what it will acquire (or has acquired) into a metadata file beside the
images: ImageXpress `.HTD`, Yokogawa CV8000 `MeasurementData.mlf`, scanR
`experiment_descriptor.xml`, Operetta/Phenix `Index.idx.xml`, OME-XML in an OME-TIFF, the ND2
file's own metadata. Each reader (layouts/<vendor>.py) turns its file into one PlateLayout, so the
daemon knows which wells, fields, channels and timepoints to expect instead of guessing, and the
pixel size the segmentation's rescaling needs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from wellwatch.core.layouts.base import LayoutError, PlateLayout
from wellwatch.core.layouts.cv8000 import read_mlf
from wellwatch.core.layouts.imagexpress import read_htd
from wellwatch.core.layouts.ome import read_ome
from wellwatch.core.layouts.operetta import read_index_xml
from wellwatch.core.layouts.scanr import read_experiment_descriptor

__all__ = ["LayoutError", "PlateLayout", "detect_layout", "find_layout_file", "find_layout_files"]

log = logging.getLogger(__name__)


def _readers() -> list[tuple[str, Callable[[Path], PlateLayout]]]:
    return [("MeasurementData.mlf", read_mlf), ("Index.idx.xml", read_index_xml), ("Index.xml", read_index_xml),
            ("experiment_descriptor.xml", read_experiment_descriptor), ("*.HTD", read_htd),
            ("*.companion.ome", read_ome), ("*.ome.tif", read_ome), ("*.ome.tiff", read_ome)]


def find_layout_file(root: str | Path, max_depth: int = 3) -> tuple[Path, Callable[[Path], PlateLayout]] | None:
    """The vendor layout file nearest the top of `root` (or in its parent: scanR's data/ folder)."""
    root = Path(root)
    readers = _readers()
    for folder in (root, root.parent):
        for depth in range(max_depth + 1):
            for pattern, reader in readers:
                glob = "/".join(["*"] * (depth + 1))  # vendors differ in case (.HTD, .htd): match by hand
                hits = sorted(p for p in folder.glob(glob) if _case_match(p.name, pattern) and p.is_file())
                if hits:
                    return hits[0], reader
        if folder.name != "data":  # scanR keeps its descriptor beside data/, not above anything else
            break
    return None


def find_layout_files(root: str | Path, max_depth: int = 3) -> list[tuple[Path, Callable[[Path], PlateLayout]]]:
    """Every plate's vendor layout file under `root`: at the depth of the nearest one, one per folder
    (a folder of exported plates holds one plate folder each, e.g. three ImageXpress plates)."""
    first = find_layout_file(root, max_depth)
    if first is None:
        return []
    path, reader = first
    depth = len(path.relative_to(Path(root) if path.is_relative_to(root) else Path(root).parent).parts)
    folder = Path(root) if path.is_relative_to(root) else Path(root).parent
    readers = _readers()
    found: dict[Path, tuple[Path, Callable[[Path], PlateLayout]]] = {}
    for pattern, reader_ in readers:
        for hit in sorted(folder.glob("/".join(["*"] * depth))):
            if _case_match(hit.name, pattern) and hit.is_file() and hit.parent not in found:
                found[hit.parent] = (hit, reader_)
    return [found[k] for k in sorted(found)] or [first]


def _case_match(name: str, pattern: str) -> bool:
    return name.upper().endswith(pattern.lstrip("*").upper())


def detect_layout(root: str | Path) -> PlateLayout | None:
    """Read the vendor layout under `root`; None when there is none. A broken file raises LayoutError."""
    found = find_layout_file(root)
    if found is None:
        return None
    path, reader = found
    layout = reader(path)
    log.info("plate layout from %s: %d wells, fields %s, channels %s, %d timepoints, %d z planes, pixel %s um",
             os.path.relpath(path, root), len(layout.wells), sorted({len(f) for f in layout.fields.values()}),
             list(layout.channels), len(layout.timepoints), len(layout.z_planes), layout.pixel_size_um)
    return layout
