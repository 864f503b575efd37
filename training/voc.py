"""Hand-drawn boxes (Pascal VOC XML, as LabelImg and CVAT export them) -> a crop dataset.

Each image is normalised as a whole with the daemon's own `normalise_frame` (the contract's
normalisation, as the daemon normalises a frame), then each box becomes a square crop centred on
the box (reflect-padded at the image border), cut one of two ways (`scale`):

- "native": a `size` x `size` window at the image's own scale, nothing resized. The daemon sees
  cells this way (tiles and per-cell crops are cut from the frame at native scale), so the model
  is served on cells of the size it was trained on: it fits frames whose cells are about as many
  px across as the boxes were (the dataset records box sizes).
- "box": a window of `context` x the box's longer edge, resized to `size`. Every cell then fills
  the same share of the crop, which uses the box's size: a served model has no box, so this suits
  only frames where the boxes are about `size / context` px across.

Class names come from the boxes; the LDC names "Living Cell"/"Dead Cell" (and live/dead
spellings) map to the contract's live/dead, which makes the task live_dead.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.transform import resize

from wellwatch.core.contract import EmptyFilter, Normalisation, Tiling
from wellwatch.core.preprocess import normalise_frame

from .dataset import Dataset, contract_fields

log = logging.getLogger(__name__)

LIVE_DEAD_NAMES = {"living cell": "live", "live cell": "live", "live": "live", "alive": "live",
                   "dead cell": "dead", "dead": "dead"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class Box:
    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float


def parse_voc(path: str | Path) -> tuple[str, list[Box]]:
    """(image file name, boxes) from one VOC XML file."""
    root = ET.parse(path).getroot()
    filename = (root.findtext("filename") or "").strip()
    boxes = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        vals = [float(bb.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")]
        if not all(np.isfinite(vals)) or vals[2] <= vals[0] or vals[3] <= vals[1]:
            log.warning("%s: skipping a degenerate box %s", path, vals)
            continue
        boxes.append(Box((obj.findtext("name") or "").strip(), *vals))
    return filename, boxes


def read_grey(path: str | Path) -> np.ndarray:
    """Any 8/16-bit image as a 2-D float32 array; RGB/RGBA/palette images with grey content -> mean of RGB."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        img = tifffile.imread(path)
    else:
        import imageio.v3 as iio

        img = iio.imread(path)
        if img.ndim == 2 and getattr(img, "dtype", None) is not None and img.dtype == np.uint8:
            pass
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].astype(np.float32).mean(axis=-1)
    elif img.ndim == 3 and img.shape[0] in (3, 4):
        img = img[:3].astype(np.float32).mean(axis=0)
    if img.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D grey image, got shape {img.shape}")
    return img.astype(np.float32)


def crop_box(image: np.ndarray, box: Box, size: int, context: float | None) -> np.ndarray:
    """A square crop centred on the box: `context` x its longer side resized to `size`, or with
    context None a `size` px window at the image's own scale (no resizing)."""
    cy, cx = (box.ymin + box.ymax) / 2, (box.xmin + box.xmax) / 2
    if context is None:
        side = size
    else:
        side = max(2, int(round(context * max(box.xmax - box.xmin, box.ymax - box.ymin))))
    y0, x0 = int(round(cy - side / 2)), int(round(cx - side / 2))
    pad = side + 2
    padded = np.pad(image, pad, mode="reflect")
    window = padded[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
    if side == size:
        return np.ascontiguousarray(window, np.float32)
    return resize(window, (size, size), order=1, anti_aliasing=side > size, preserve_range=True).astype(np.float32)


def find_image(xml_path: Path, filename: str) -> Path:
    candidates = [xml_path.with_name(filename)] if filename else []
    candidates += [xml_path.with_suffix(s) for s in IMAGE_SUFFIXES]
    for c in candidates:
        if c.exists():
            return c
    raise FileNotFoundError(f"{xml_path}: its image {filename or xml_path.stem + '.*'} is not beside it")


def duplicate_groups(images: list[np.ndarray], threshold: float = 0.95, thumb: int = 16) -> np.ndarray:
    """Cluster ids: images whose thumbnails correlate above `threshold` under any of the 8 rotations
    and flips of the square fall in one cluster (connected components). Public datasets often hold
    rotated/flipped copies of one field; splitting them apart would leak."""
    t = np.stack([resize(im, (thumb, thumb), anti_aliasing=True) for im in images]).astype(np.float64)

    def z(a: np.ndarray) -> np.ndarray:
        a = a.reshape(len(a), -1)
        return (a - a.mean(1, keepdims=True)) / (a.std(1, keepdims=True) + 1e-9)

    base, best = z(t), np.full((len(t), len(t)), -1.0)
    for k in range(4):
        for flip in (False, True):
            v = np.rot90(t, k, axes=(1, 2))
            best = np.maximum(best, base @ z(v[:, :, ::-1] if flip else v).T / base.shape[1])
    parent = np.arange(len(t))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(best, 1) > threshold)):
        parent[find(i)] = find(j)
    return np.array([find(i) for i in range(len(t))])


def class_mapping(names: set[str], class_map: dict[str, str] | None) -> tuple[dict[str, str], tuple[str, ...], str]:
    """(box name -> class, classes in output order, task)."""
    if class_map:
        mapping = {n: class_map[n] for n in names if n in class_map}
    elif names and all(n.lower() in LIVE_DEAD_NAMES for n in names):
        mapping = {n: LIVE_DEAD_NAMES[n.lower()] for n in names}
    else:
        mapping = {n: n for n in names}
    classes = tuple(sorted(set(mapping.values())))
    task = "cell_type"
    if set(classes) == {"live", "dead"}:
        classes, task = ("live", "dead"), "live_dead"
    return mapping, classes, task


SCALES = ("native", "box")


def build_voc_dataset(folders: list[str | Path], size: int = 32, context: float = 1.5,
                      norm: Normalisation = Normalisation("robust_zscore", {}),
                      class_map: dict[str, str] | None = None, group_pattern: str | None = None,
                      limit: int = 0, duplicate_threshold: float | None = 0.95, scale: str = "native",
                      describe: str | None = None) -> Dataset:
    """All VOC XML files under `folders` -> crops. group_pattern: a regex with optional named groups
    `plate` and `well`, searched in each image's file stem (default: plate = folder name). scale:
    "native" (size px at the image's scale; context unused) or "box" (context x box side -> size).
    describe: what the images show, in words; with the crop scale it becomes meta["fits"], which a
    model's contract carries as `trained_on.fits` (which images the model fits)."""
    if scale not in SCALES:
        raise ValueError(f"crop scale {scale!r}; allowed: {', '.join(SCALES)}")
    xmls = sorted(p for f in folders for p in Path(f).rglob("*.xml"))
    if limit:
        xmls = xmls[:limit]
    if not xmls:
        raise FileNotFoundError(f"no VOC .xml files under {', '.join(map(str, folders))}")
    parsed = [(x, *parse_voc(x)) for x in xmls]
    names = {b.name for _, _, boxes in parsed for b in boxes}
    mapping, classes, task = class_mapping(names, class_map)
    regex = re.compile(group_pattern) if group_pattern else None
    xs, ys, ids, sources, wells, plates, box_sides = [], [], [], [], [], [], []
    skipped = 0
    image_paths = [find_image(x, fn) for x, fn, _ in parsed]
    raw = [read_grey(p) for p in image_paths]
    cluster = duplicate_groups(raw, duplicate_threshold) if duplicate_threshold else np.arange(len(raw))
    members: dict[int, list[str]] = {}
    for c, p in zip(cluster, image_paths):
        members.setdefault(int(c), []).append(p.stem)
    group_name = {c: "+".join(sorted(m)) for c, m in members.items()}
    for (xml_path, filename, boxes), image_path, image, c in zip(parsed, image_paths, raw, cluster):
        frame = normalise_frame(image, norm)
        stem = image_path.stem
        plate, well = xml_path.parent.name, ""
        if regex and (m := regex.search(stem)):
            plate = m.groupdict().get("plate") or plate
            well = m.groupdict().get("well") or well
        for k, b in enumerate(boxes):
            if b.name not in mapping:
                skipped += 1
                continue
            xs.append(crop_box(frame, b, size, context if scale == "box" else None))
            ys.append(classes.index(mapping[b.name]))
            ids.append(f"{stem}#{k}")
            sources.append(group_name[int(c)])
            wells.append(well)
            plates.append(plate)
            box_sides.append(max(b.xmax - b.xmin, b.ymax - b.ymin))
    if not xs:
        raise ValueError("no boxes with a known class name")
    sides = np.array(box_sides)
    meta = {"kind": "crops", "task": task, "positive_class": "dead" if task == "live_dead" else classes[-1],
            "channels": ["brightfield"],
            **contract_fields(norm, Tiling(size, size), EmptyFilter("none", {})),
            "crop": {"size": size, "scale": scale, "context": context if scale == "box" else None,
                     "resize": "bilinear" if scale == "box" else "none",
                     "box_side_px": {"median": float(np.median(sides)), "p5": float(np.percentile(sides, 5)),
                                     "p95": float(np.percentile(sides, 95))},
                     "serving_note": (f"crops at the images' own scale: served on frames whose cells are about "
                                      f"{np.median(sides):.0f} px across (boxes: median {np.median(sides):.0f}, "
                                      f"5-95% {np.percentile(sides, 5):.0f}-{np.percentile(sides, 95):.0f} px)")
                                     if scale == "native" else
                                     "tiling = (size, size): the daemon tiles whole frames at native scale; crops "
                                     f"were resized from boxes, so served frames should show cells about "
                                     f"{size / context:.0f} px across"},
            "class_map": mapping, "boxes_skipped": skipped,
            "fits": None,  # set below from the serving note
            "provenance": {"source": "Pascal VOC boxes", "folders": [str(f) for f in folders],
                           "images": len(parsed), "group_pattern": group_pattern},
            "duplicates": {"threshold": duplicate_threshold, "groups": len(members),
                           "images_in_duplicate_groups": int(sum(len(m) for m in members.values() if len(m) > 1)),
                           "rule": "thumbnail correlation over the 8 rotations/flips; a group is one split unit"}}
    note = meta["crop"]["serving_note"]
    meta["fits"] = f"{describe.rstrip('. ')}; {note}" if describe else note
    return Dataset(np.stack(xs)[:, None], np.array(ys, np.int64), np.array(ids), np.array(sources),
                   np.array(wells), np.array(plates), classes, meta)
