"""Revvity (PerkinElmer) Operetta / Opera Phenix: Harmony's `Index.idx.xml` (or `Index.xml`).

    <Plates><Plate><PlateRows>16</PlateRows><PlateColumns>24</PlateColumns>...
    <Images><Image><URL>r01c01f01p01-ch1sk1fk1fl1.tiff</URL><Row>1</Row><Col>1</Col><FieldID>1</FieldID>
        <PlaneID>1</PlaneID><TimepointID>0</TimepointID><ChannelID>1</ChannelID><ChannelName>Brightfield</ChannelName>
        <ImageResolutionX Unit="m">6.5E-07</ImageResolutionX>...
The namespace changes with Harmony's version (HarmonyV5, V6...), so tags are matched without it.
File names count timepoints from 1 (sk1 = TimepointID 0); fields, planes and channels as in the XML.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from wellwatch.core.layouts.base import LayoutError, PlateLayout
from wellwatch.core.plate import well_name

_TO_UM = {"m": 1e6, "mm": 1e3, "um": 1.0, "µm": 1.0, "nm": 1e-3}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(elem: ET.Element) -> dict[str, ET.Element]:
    return {_local(c.tag): c for c in elem}


def read_index_xml(path: Path) -> PlateLayout:
    try:
        root = ET.parse(path).getroot()
    except OSError as e:
        raise LayoutError(path, f"cannot be read ({e.strerror})") from None
    except ET.ParseError as e:
        raise LayoutError(path, f"not well-formed XML ({e})") from None
    rows = cols = 0
    fields: dict[str, set[int]] = {}
    channels: dict[str, str] = {}
    timepoints, planes, pixel = set(), set(), set()
    for elem in root.iter():
        tag = _local(elem.tag)
        if tag == "Plate":
            c = _children(elem)
            rows, cols = _number(c, "PlateRows", path), _number(c, "PlateColumns", path)
        elif tag == "Image" and any(_local(c.tag) == "URL" for c in elem):
            c = _children(elem)
            well = well_name(_number(c, "Row", path) - 1, _number(c, "Col", path) - 1)
            fields.setdefault(well, set()).add(_number(c, "FieldID", path))
            planes.add(_number(c, "PlaneID", path))
            timepoints.add(_number(c, "TimepointID", path) + 1)
            ch = str(_number(c, "ChannelID", path))
            channels[ch] = (c["ChannelName"].text or "").strip() if "ChannelName" in c else ch
            if "ImageResolutionX" in c:
                unit = c["ImageResolutionX"].get("Unit", "m")
                pixel.add(round(float(c["ImageResolutionX"].text) * _TO_UM.get(unit, 1e6), 6))
    if not fields:
        raise LayoutError(path, "lists no images (no <Image> with a <URL>)")
    return PlateLayout("operetta", str(path), rows or 16, cols or 24,
                       {w: tuple(sorted(f)) for w, f in sorted(fields.items())},
                       tuple(sorted(channels, key=int)), tuple(sorted(timepoints)), tuple(sorted(planes)),
                       channels, pixel.pop() if len(pixel) == 1 else None)


def _number(children: dict[str, ET.Element], key: str, path: Path) -> int:
    elem = children.get(key)
    try:
        return int((elem.text or "").strip())
    except (AttributeError, ValueError):
        raise LayoutError(path, f"<{key}> is missing or not an integer") from None
