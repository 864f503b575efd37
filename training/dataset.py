"""A dataset on disk: DIR/dataset.npz (the patches) + DIR/dataset.json (what they are).

dataset.npz (compressed; loads without pickle):
    x             (N, C, H, W) float32, already normalised with the contract's normalisation
    y             (N,) int64 class index into `classes`
    ids           (N,) str, unique per patch ("<source>@y,x" for tiles, "<source>#k" for crops,
                  "<source>/t<T>/z<Z>#<label>@y<Y>x<X>" for segmented cells)
    source, well, plate   (N,) str group ids: a split never puts one group on both sides
    fluorescence  (N,) float32 mean fluorescence of the same window (paired data only)
    area          (N,) int64 the cell's segmented area in full-resolution px (cell crops only;
                  optional, absent from older datasets)
    classes       (K,) str
dataset.json: format, kind ("tiles" | "crops"), task, classes, positive_class, channels,
    input_size, normalisation / tiling / empty_filter (the model contract's fields, as JSON;
    tiling null for single-cell crops), cell_crop (the contract's crop section, cell crops only),
    thresholds, counts, provenance.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wellwatch.core.contract import CellCrop, EmptyFilter, Normalisation, Tiling

DATASET_FORMAT = 1
NPZ, JSON = "dataset.npz", "dataset.json"


def well_ids(plate: np.ndarray, well: np.ndarray) -> np.ndarray:
    """'PLATE/WELL' per sample: a well (a dish) is one experiment, the unit of grouped splits."""
    return np.char.add(np.char.add(np.asarray(plate).astype(str), "/"), np.asarray(well).astype(str))


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    source: np.ndarray
    well: np.ndarray
    plate: np.ndarray
    classes: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    fluorescence: np.ndarray | None = None
    area: np.ndarray | None = None  # segmented cell area, full-resolution px (cell crops)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, mask: np.ndarray) -> "Dataset":
        return Dataset(self.x[mask], self.y[mask], self.ids[mask], self.source[mask], self.well[mask],
                       self.plate[mask], self.classes, self.meta,
                       None if self.fluorescence is None else self.fluorescence[mask],
                       None if self.area is None else self.area[mask])

    def groups(self, by: str) -> np.ndarray:
        """Group ids for splitting: 'source', 'well' (plate/well) or 'plate'."""
        if by == "source":
            return self.source
        if by == "well":
            return well_ids(self.plate, self.well)
        if by == "plate":
            return self.plate
        raise ValueError(f"group {by!r}; allowed: source, well, plate")

    def counts(self) -> dict[str, int]:
        return {c: int((self.y == i).sum()) for i, c in enumerate(self.classes)}

    @property
    def positive_class(self) -> str:
        return self.meta.get("positive_class", self.classes[-1])

    @property
    def normalisation(self) -> Normalisation:
        return Normalisation(**self.meta["normalisation"])

    @property
    def tiling(self) -> Tiling | None:
        """None for single-cell crops (meta tiling null): they are cut around segmented cells."""
        t = self.meta.get("tiling")
        return Tiling(**t) if t else None

    @property
    def cell_crop(self) -> CellCrop | None:
        c = self.meta.get("cell_crop")
        return CellCrop(**c) if c else None

    @property
    def empty_filter(self) -> EmptyFilter:
        return EmptyFilter(**self.meta["empty_filter"])


def save_dataset(ds: Dataset, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"x": np.ascontiguousarray(ds.x, np.float32), "y": ds.y.astype(np.int64),
              "ids": ds.ids.astype(str), "source": ds.source.astype(str), "well": ds.well.astype(str),
              "plate": ds.plate.astype(str), "classes": np.array(ds.classes, dtype=str)}
    if ds.fluorescence is not None:
        arrays["fluorescence"] = ds.fluorescence.astype(np.float32)
    if ds.area is not None:
        arrays["area"] = ds.area.astype(np.int64)
    if len(set(arrays["ids"].tolist())) != len(ds):
        raise ValueError("patch ids are not unique")
    np.savez_compressed(out / NPZ, **arrays)
    meta = dict(ds.meta)
    meta["fingerprint"] = fingerprint(arrays["ids"], arrays["y"])
    meta.update(format=DATASET_FORMAT, classes=list(ds.classes), n=len(ds), counts=ds.counts(),
                groups={"source": len(set(ds.source.tolist())), "well": len(set(ds.groups("well").tolist())),
                        "plate": len(set(ds.plate.tolist()))},
                has_fluorescence=ds.fluorescence is not None, has_area=ds.area is not None,
                input_size=int(ds.x.shape[-1]),
                channels=meta.get("channels", ["brightfield"] * ds.x.shape[1]))
    (out / JSON).write_text(json.dumps(meta, indent=1, default=_json_default) + "\n")
    return out


def load_dataset(path: str | Path) -> Dataset:
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not (path / NPZ).exists() or not (path / JSON).exists():
        raise FileNotFoundError(f"{path}: not a wellwatch dataset (needs {NPZ} and {JSON}); "
                                "make one with `wellwatch dataset live-dead` or `wellwatch dataset voc`")
    meta = json.loads((path / JSON).read_text())
    if meta.get("format") != DATASET_FORMAT:
        raise ValueError(f"{path / JSON}: dataset format {meta.get('format')!r}, expected {DATASET_FORMAT}")
    with np.load(path / NPZ, allow_pickle=False) as z:
        return Dataset(z["x"], z["y"], z["ids"], z["source"], z["well"], z["plate"],
                       tuple(z["classes"].tolist()), meta, z["fluorescence"] if "fluorescence" in z else None,
                       z["area"] if "area" in z else None)


def fingerprint(ids: np.ndarray, y: np.ndarray) -> str:
    """Identity of a dataset's patches and labels (evaluate uses it to find a run's test split)."""
    import hashlib

    h = hashlib.sha256()
    h.update("\n".join(np.asarray(ids).astype(str).tolist()).encode())
    h.update(np.asarray(y, np.int64).tobytes())
    return h.hexdigest()[:16]


def contract_fields(norm: Normalisation, tiling: Tiling | None, qc: EmptyFilter) -> dict[str, Any]:
    return {"normalisation": asdict(norm), "tiling": asdict(tiling) if tiling else None, "empty_filter": asdict(qc)}


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))
