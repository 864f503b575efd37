"""`wellwatch dataset masks`: images with hand-drawn label masks, for training segmentation.

On disk: DIR/masks.npz (no pickle) with, per image k, `image_k` (the raw frame, as read) and
`labels_k` (int32, 0 = background, one id per cell), and DIR/dataset.json (format, kind "masks",
the image names, their groups and provenance). Raw frames are kept, not normalised copies: the
model's input is made from them by the daemon's own functions at training time.

Source layouts: a folder per image holding the image and its mask (the Usiigaci sets:
`setN/raw.tif` + `setN/instances_ids.png`), chosen by --image-name / --mask-name; or, with
--mask-suffix, one flat folder of images beside their label images as annotation tools export them
(`NAME.tif` + `NAME_masks.tif` / `NAME_cp_masks.png` (Cellpose), `NAME_labels.tif` (napari),
`NAME-labels.png` (QuPath)): uint8/16/32 integer label TIFF or PNG, 0 = background.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wellwatch.core.files.tiff import read_frame

from .progress import Progress


MASKS_FORMAT = 1
NPZ, JSON = "masks.npz", "dataset.json"


@dataclass
class MaskSet:
    names: list[str]
    images: list[np.ndarray]
    labels: list[np.ndarray]
    meta: dict

    def __len__(self) -> int:
        return len(self.names)

    def select(self, names: list[str]) -> "MaskSet":
        missing = [n for n in names if n not in self.names]
        if missing:
            raise ValueError(f"images {missing} are not in the dataset (it has {self.names})")
        idx = [self.names.index(n) for n in names]
        return MaskSet([self.names[i] for i in idx], [self.images[i] for i in idx],
                       [self.labels[i] for i in idx], self.meta)


def frames_to_score(names: list[str], trained: list[str], score: str | None) -> list[str]:
    """The frames `--score` names (`rest`: every frame not trained on), checked before any training: a
    frame both trained on and scored would say nothing about the acquisition's others."""
    if not score:
        return []
    chosen = [n for n in names if n not in set(trained)] if score == "rest" else [s for s in score.split(",") if s]
    if not chosen:
        raise ValueError("--score rest: every annotated frame is trained on, none is left to score "
                         "(annotate a few more frames than you train on)")
    overlap = sorted(set(chosen) & set(trained))
    if overlap:
        raise ValueError(f"--score {','.join(overlap)}: frames trained on say nothing about the others")
    return chosen


def read_labels(path: Path) -> np.ndarray:
    """A label image (PNG or TIFF) as int32; colour label images are refused, not guessed."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile
        labels = tifffile.imread(path)  # as stored: the frame reader would make colour grey
    else:
        from skimage.io import imread
        labels = imread(path)
    if labels.ndim != 2:
        raise ValueError(f"{path}: a label mask must be one 2-D plane of integer ids, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: a label mask must hold integers, got {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > np.iinfo(np.int32).max):
        raise ValueError(f"{path}: label ids must be 0 (background) .. 2**31-1, got {labels.min()}..{labels.max()}")
    return labels.astype(np.int32)


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def find_mask_pairs(folders: list[str | Path], image_name: str, mask_name: str) -> list[tuple[str, Path, Path]]:
    """(name, image, mask) for every sub-folder holding both files, in natural order."""
    pairs = []
    for root in map(Path, folders):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a folder")
        for sub in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: _natural_key(p.name)):
            image, mask = sub / image_name, sub / mask_name
            if image.is_file() and mask.is_file():
                pairs.append((sub.name, image, mask))
    if not pairs:
        raise FileNotFoundError(f"no sub-folder of {', '.join(map(str, folders))} holds both {image_name} and {mask_name}")
    return pairs


LABEL_SUFFIXES = ("_cp_masks", "_masks", "_labels", "-labels", "_label", "_mask")
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png")


def find_flat_pairs(folders: list[str | Path], suffixes: tuple[str, ...] = LABEL_SUFFIXES) -> list[tuple[str, Path, Path]]:
    """(name, image, mask) for every NAME.tif/png beside a NAME<suffix>.tif/png label image, in natural order."""
    pairs = []
    for root in map(Path, folders):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a folder")
        files = {p.name: p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}
        masks = {p for p in files.values() if any(p.stem.endswith(sfx) for sfx in suffixes)}
        for image in sorted(set(files.values()) - masks, key=lambda p: _natural_key(p.name)):
            found = [files[n] for sfx in suffixes for ext in IMAGE_EXTENSIONS
                     for n in (f"{image.stem}{sfx}{ext}",) if n in files]
            if found:
                pairs.append((image.stem, image, found[0]))
    if not pairs:
        raise FileNotFoundError(f"no image in {', '.join(map(str, folders))} has a label image beside it named "
                                f"NAME{{{','.join(suffixes)}}}.tif/.png")
    return pairs


def build_mask_set(pairs: list[tuple[str, Path, Path]], progress: bool = True) -> MaskSet:
    names, images, labels = [], [], []
    report = Progress("dataset masks", progress)
    for i, (name, image_path, mask_path) in enumerate(pairs, 1):
        image, mask = read_frame(str(image_path)), read_labels(mask_path)
        if image.ndim != 2 or image.shape != mask.shape:
            raise ValueError(f"{image_path}: image shape {image.shape} differs from its mask {mask_path} {mask.shape}")
        names.append(name)
        images.append(image)
        labels.append(mask)
        report.update(f"{i}/{len(pairs)} {name}: {len(np.unique(mask)) - 1} cells")
    meta = {"format": MASKS_FORMAT, "kind": "masks", "names": names,
            "cells": [int(len(np.unique(m)) - 1) for m in labels],
            "provenance": {"images": [str(p[1]) for p in pairs], "masks": [str(p[2]) for p in pairs]}}
    report.line(f"{len(pairs)} images, {sum(meta['cells'])} cells")
    return MaskSet(names, images, labels, meta)


def save_mask_set(ds: MaskSet, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for k, (image, labels) in enumerate(zip(ds.images, ds.labels)):
        arrays[f"image_{k}"], arrays[f"labels_{k}"] = image, labels
    np.savez_compressed(out / NPZ, **arrays)
    (out / JSON).write_text(json.dumps(ds.meta, indent=1))
    return out


def load_mask_set(folder: str | Path) -> MaskSet:
    folder = Path(folder)
    try:
        meta = json.loads((folder / JSON).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: no {JSON}; build one with `wellwatch dataset masks`") from None
    if meta.get("kind") != "masks" or meta.get("format") != MASKS_FORMAT:
        raise ValueError(f"{folder / JSON}: not a masks dataset (kind {meta.get('kind')!r}, format {meta.get('format')!r})")
    with np.load(folder / NPZ, allow_pickle=False) as z:
        n = len(meta["names"])
        images = [z[f"image_{k}"] for k in range(n)]
        labels = [z[f"labels_{k}"] for k in range(n)]
    return MaskSet(list(meta["names"]), images, labels, meta)
