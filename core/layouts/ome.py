"""OME-XML in an OME-TIFF (or a .companion.ome file): the plate, its wells and fields, channels, pixel size.

    <Plate Rows="8" Columns="12"><Well Row="0" Column="1"><WellSample Index="0"><ImageRef ID="Image:0"/>
    <Image ID="Image:0"><Pixels SizeC="2" SizeZ="1" SizeT="3" PhysicalSizeX="0.65" PhysicalSizeXUnit="µm">
        <Channel Name="DIC"/>...
Fields are numbered 1.. in the order of each well's WellSample elements; without a <Plate> the file
still gives channels, z, timepoints and pixel size (wells stay unknown). The XML is read with the
standard library, so the daemon needs no ome-types.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import tifffile

from wellwatch.core.layouts.base import LayoutError, PlateLayout
from wellwatch.core.plate import well_name

_TO_UM = {"m": 1e6, "mm": 1e3, "µm": 1.0, "um": 1.0, "nm": 1e-3}


def ome_xml_of(path: Path) -> str:
    """The OME-XML text of an OME-TIFF (first page's description) or of a companion file."""
    try:
        if path.name.lower().endswith((".ome", ".xml")):
            return path.read_text(encoding="utf-8")
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
    except OSError as e:
        raise LayoutError(path, f"cannot be read ({e.strerror or e})") from None
    except Exception as e:  # tifffile raises many types on a damaged file
        raise LayoutError(path, f"not a readable TIFF ({type(e).__name__}: {e})") from None
    if not xml:
        raise LayoutError(path, "holds no OME-XML (not an OME-TIFF)")
    return xml


def read_ome(path: Path) -> PlateLayout:
    try:
        root = ET.fromstring(ome_xml_of(path))
    except ET.ParseError as e:
        raise LayoutError(path, f"OME-XML is not well-formed ({e})") from None
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    pixels = root.find(f"{ns}Image/{ns}Pixels")
    if pixels is None:
        raise LayoutError(path, "OME-XML has no Image/Pixels element")
    try:
        size_z, size_t = int(pixels.get("SizeZ", 1)), int(pixels.get("SizeT", 1))
        size_c = int(pixels.get("SizeC", 1))
        px = pixels.get("PhysicalSizeX")
        pixel = float(px) * _TO_UM.get(pixels.get("PhysicalSizeXUnit", "µm"), 1.0) if px else None
    except ValueError as e:
        raise LayoutError(path, f"Pixels has a non-numeric size ({e})") from None
    names = [c.get("Name") or str(i) for i, c in enumerate(pixels.findall(f"{ns}Channel"))] or \
        [str(i) for i in range(size_c)]
    plate = root.find(f"{ns}Plate")
    fields: dict[str, tuple[int, ...]] = {}
    rows, cols = 8, 12
    if plate is not None:
        rows, cols = int(plate.get("Rows", rows)), int(plate.get("Columns", cols))
        for well in plate.findall(f"{ns}Well"):
            samples = well.findall(f"{ns}WellSample")
            fields[well_name(int(well.get("Row", 0)), int(well.get("Column", 0)))] = \
                tuple(range(1, len(samples) + 1))
    return PlateLayout("ome-tiff", str(path), rows, cols, fields, tuple(names), tuple(range(size_t)),
                       tuple(range(size_z)), {n: n for n in names}, pixel)
