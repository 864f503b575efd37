"""The model contract: a JSON document in every exported ONNX file's metadata.

It says what the model does and how its input must be prepared, so the daemon never has to
guess. `export/` writes it through `ModelContract.to_json`; the daemon reads it with
`read_contract`. Validation lives here, once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wellwatch.core.errors import ContractError
from wellwatch.core.intervals import Calibration

CONTRACT_VERSION = 1
METADATA_KEY = "wellwatch.contract"
TASKS = ("live_dead", "cell_type", "segmentation")
NORMALISATIONS = {
    # (x - frame median) / (1.4826 * frame MAD): background noise ~ N(0, 1) whatever the gain.
    "robust_zscore": set(),
    # (x - mean) / std with fixed parameters.
    "fixed": {"mean", "std"},
    # (x - p_low) / (p_high - p_low) with per-frame percentiles.
    "percentile": {"low", "high"},
    # (x / smooth background - 1) / robust spread: illumination gradients, gain and contrast removed
    # (daemon/preprocess.flatfield_normalise); sigma in px of the image it is applied to.
    "flatfield": {"sigma"},
    # single-cell crops (the cell-type study): zero outside a circular mask, mean inside it = 1.
    "mask_mean": set(),
}
EMPTY_FILTERS = {"none": set(), "std": {"threshold"}}
OUTPUTS = ("probabilities", "logits")
# What each output map of a segmentation network means (all in 0..1 after the network's own
# activations): class probabilities (softmax over background/interior/boundary) and the distance to
# the cell's edge divided by the largest such distance in the cell (1 at the centre of every cell).
SEGMENTATION_MAPS = ("background", "interior", "boundary", "distance")
# A Cellpose network's outputs (core/segmentation/cellpose_flows.py): the flows and the cell-probability logit;
# such a contract stitches with Cellpose's own tile averaging and makes masks with its dynamics.
CELLPOSE_MAPS = ("flow_y", "flow_x", "cellprob")
STITCHES = ("blend", "cellpose")
SEEDS = ("distance", "interior")
# Normalisations that are x * scale + offset per frame and channel: they can run inside the graph.
AFFINE_NORMALISATIONS = ("robust_zscore", "fixed", "percentile")
# A model with the normalisation in its graph (`normalisation_in_graph`) takes raw uint16 tiles in its
# input_name and, in this second input, each tile's (offset, scale) per channel, shape (N, C, 2):
# the daemon computes the frame statistics (a subsample), the graph does the per-pixel arithmetic.
AFFINE_INPUT = "normalisation"


@dataclass(frozen=True)
class Normalisation:
    method: str = "robust_zscore"
    params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Tiling:
    tile_size: int
    stride: int


@dataclass(frozen=True)
class EmptyFilter:
    method: str = "std"
    params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Segmentation:
    """How a segmentation network's input is made and its output turned into labelled cells.

    The frame is reduced by `downsample` (block mean), normalised, cut into tiles of
    tiling.tile_size with tiling.stride (tiles overlap by tile_size - stride and always cover the
    frame; frames smaller than a tile are reflect-padded); the maps of overlapping tiles are
    blended with weights that fall linearly towards tile edges ("blend"); `postprocess` holds the
    watershed's parameters (see core/segmentation/maps.py). `pixel_size_um` is the pixel size of the
    frames it was trained on (0 = unknown): frames of another pixel size are resampled to it first
    (core/segmentation/pixel_size.py).
    """
    downsample: int = 2
    maps: tuple[str, ...] = SEGMENTATION_MAPS
    stitch: str = "blend"
    postprocess: dict[str, Any] = field(default_factory=dict)
    pixel_size_um: float = 0.0


@dataclass(frozen=True)
class CellCrop:
    """Single-cell crops for a cell_type model, or a per-cell live_dead model: `size` square around
    each segmented cell's centroid, zero outside a circle of `mask_radius`, each channel's mean
    inside it scaled to 1 ("mask_mean").
    Cells with an area (full-resolution px) outside [min_area, max_area] are not classified
    (0 = no limit): the model never saw such cells."""
    size: int = 150
    mask_radius: float = 50.0
    min_area: int = 0
    max_area: int = 0


POSTPROCESS_KEYS = {"foreground_threshold", "seed_threshold", "seeds", "min_seed_area", "min_area", "max_area"}
CELLPOSE_POSTPROCESS_KEYS = {"diam_mean", "diam_labels", "tile_overlap", "flow_threshold", "cellprob_threshold",
                             "min_size", "max_size_fraction"}


@dataclass(frozen=True)
class ModelContract:
    name: str
    task: str
    classes: tuple[str, ...]
    positive_class: str
    output: str
    input_name: str
    channels: tuple[str, ...]  # what each input channel must be, e.g. ("brightfield",)
    layout: str
    height: int
    width: int
    normalisation: Normalisation
    tiling: Tiling | None
    empty_filter: EmptyFilter
    decision_threshold: float
    trained_on: dict[str, Any]
    metrics: dict[str, Any]
    created: str = ""
    tool: str = ""
    contract_version: int = CONTRACT_VERSION
    segmentation: Segmentation | None = None
    crop: CellCrop | None = None
    normalisation_in_graph: bool = False  # input is raw uint16 tiles + AFFINE_INPUT (see above)
    # live_dead models from `wellwatch calibrate`: per-well estimator, interval half-widths, verdict
    # (core/intervals.py); absent in older contracts
    calibration: Calibration | None = None

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive_class)

    @property
    def per_cell(self) -> bool:
        """A classifier of single-cell crops (cell type, or per-cell live/dead), not of tiles."""
        return self.crop is not None

    def to_json(self) -> str:
        doc = asdict(self)
        doc["classes"], doc["channels"] = list(self.classes), list(self.channels)
        if self.crop is None:
            del doc["crop"]
        if not self.normalisation_in_graph:
            del doc["normalisation_in_graph"]  # contracts without it stay as they were
        if self.calibration is None:
            del doc["calibration"]  # uncalibrated contracts stay as they were
        if self.segmentation is None:
            del doc["segmentation"]  # classifier contracts stay as they were
        else:
            doc["segmentation"]["maps"] = list(self.segmentation.maps)
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "<contract>") -> "ModelContract":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ContractError(source, f"contract is not valid JSON ({e})") from None
        return cls.from_dict(doc, source)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "<contract>") -> "ModelContract":
        if not isinstance(doc, dict):
            raise ContractError(source, "contract is not a JSON object")
        version = doc.get("contract_version")
        if version != CONTRACT_VERSION:
            raise ContractError(source, f"contract_version {version!r} is not supported "
                                        f"(this wellwatch reads version {CONTRACT_VERSION})")
        try:
            tiling = doc["tiling"]
            seg = doc.get("segmentation")
            contract = cls(
                name=str(doc["name"]), task=doc["task"], classes=tuple(doc["classes"]),
                positive_class=doc["positive_class"], output=doc["output"],
                input_name=doc["input_name"], channels=tuple(doc["channels"]),
                layout=doc["layout"], height=int(doc["height"]), width=int(doc["width"]),
                normalisation=Normalisation(**doc["normalisation"]),
                tiling=Tiling(**tiling) if tiling else None,
                empty_filter=EmptyFilter(**doc["empty_filter"]),
                decision_threshold=float(doc["decision_threshold"]),
                trained_on=dict(doc.get("trained_on", {})), metrics=dict(doc.get("metrics", {})),
                created=doc.get("created", ""), tool=doc.get("tool", ""), contract_version=version,
                segmentation=Segmentation(**{**seg, "maps": tuple(seg.get("maps", SEGMENTATION_MAPS))})
                if seg else None,
                crop=CellCrop(**doc["crop"]) if doc.get("crop") else None,
                normalisation_in_graph=doc.get("normalisation_in_graph", False),
                calibration=Calibration.from_dict(doc["calibration"], source) if doc.get("calibration") else None,
            )
        except KeyError as e:
            raise ContractError(source, f"contract lacks the field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ContractError(source, f"contract field has the wrong type ({e})") from None
        contract.validate(source)
        return contract

    def validate(self, source: str = "<contract>") -> None:
        def bad(reason: str) -> ContractError:
            return ContractError(source, f"invalid contract: {reason}")

        if self.task not in TASKS:
            raise bad(f"task {self.task!r}; allowed: {', '.join(TASKS)}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise bad(f"classes {list(self.classes)} must be two or more distinct names")
        if self.task == "live_dead" and set(self.classes) != {"live", "dead"}:
            raise bad(f"a live_dead model must have classes live and dead, got {list(self.classes)}")
        if self.positive_class not in self.classes:
            raise bad(f"positive_class {self.positive_class!r} is not one of {list(self.classes)}")
        if self.output not in OUTPUTS:
            raise bad(f"output {self.output!r}; allowed: {', '.join(OUTPUTS)}")
        if self.layout != "NCHW":
            raise bad(f"layout {self.layout!r}; only NCHW is supported")
        if not self.channels:
            raise bad("channels is empty")
        if self.height < 1 or self.width < 1:
            raise bad(f"input size {self.height}x{self.width}")
        need = NORMALISATIONS.get(self.normalisation.method)
        if need is None:
            raise bad(f"normalisation {self.normalisation.method!r}; allowed: {', '.join(NORMALISATIONS)}")
        if missing := need - set(self.normalisation.params):
            raise bad(f"normalisation {self.normalisation.method!r} lacks parameters {sorted(missing)}")
        need = EMPTY_FILTERS.get(self.empty_filter.method)
        if need is None:
            raise bad(f"empty_filter {self.empty_filter.method!r}; allowed: {', '.join(EMPTY_FILTERS)}")
        if missing := need - set(self.empty_filter.params):
            raise bad(f"empty_filter {self.empty_filter.method!r} lacks parameters {sorted(missing)}")
        if self.task == "live_dead" and self.crop is not None:
            if self.tiling is not None:
                raise bad("a live_dead model has tiling (tiles) or a crop section (single cells), not both")
        elif self.task == "live_dead":
            if self.tiling is None:
                raise bad("a live_dead model needs tiling (tile_size, stride), or a crop section for per-cell calls")
            if self.tiling.tile_size != self.height or self.tiling.tile_size != self.width:
                raise bad(f"tile_size {self.tiling.tile_size} differs from input {self.height}x{self.width}")
            if not 1 <= self.tiling.stride:
                raise bad(f"stride {self.tiling.stride} must be >= 1")
        if not 0.0 <= self.decision_threshold <= 1.0:
            raise bad(f"decision_threshold {self.decision_threshold} outside 0..1")
        if self.crop is not None:
            self._validate_crop(bad)
        elif self.normalisation.method == "mask_mean":
            raise bad("normalisation 'mask_mean' is for single-cell crops; the contract has no crop section")
        if self.normalisation_in_graph is not False:
            self._validate_in_graph(bad)
        if self.calibration is not None and self.task != "live_dead":
            raise bad(f"a {self.task} model has no calibration section (it is for live_dead models)")
        if self.task == "segmentation":
            self._validate_segmentation(bad)
        elif self.segmentation is not None:
            raise bad(f"a {self.task} model has no segmentation section")

    def _validate_in_graph(self, bad) -> None:
        if self.normalisation_in_graph is not True:
            raise bad(f"normalisation_in_graph {self.normalisation_in_graph!r} must be true or false")
        if self.task != "live_dead" or self.tiling is None:
            raise bad("normalisation_in_graph is for tile live_dead models only")
        if self.normalisation.method not in AFFINE_NORMALISATIONS:
            raise bad(f"normalisation {self.normalisation.method!r} cannot run in the graph; allowed there: "
                      f"{', '.join(AFFINE_NORMALISATIONS)}")

    def _validate_crop(self, bad) -> None:
        c = self.crop
        if self.task not in ("cell_type", "live_dead"):
            raise bad(f"a {self.task} model has no crop section (crops are for cell_type and live_dead models)")
        if c.size != self.height or c.size != self.width:
            raise bad(f"crop.size {c.size} differs from input {self.height}x{self.width}")
        if not 0 < c.mask_radius <= c.size:
            raise bad(f"crop.mask_radius {c.mask_radius} must be in (0, crop.size]")
        if c.min_area < 0 or c.max_area < 0 or (c.max_area and c.min_area > c.max_area):
            raise bad(f"crop area range {c.min_area}..{c.max_area} (0 = no limit)")

    def _validate_segmentation(self, bad) -> None:
        seg = self.segmentation
        if seg is None:
            raise bad("a segmentation model needs a segmentation section")
        if self.tiling is None or self.tiling.tile_size != self.height or self.tiling.tile_size != self.width:
            raise bad(f"a segmentation model needs tiling with tile_size equal to its input {self.height}x{self.width}")
        if not 1 <= self.tiling.stride <= self.tiling.tile_size:
            raise bad(f"stride {self.tiling.stride} must be 1..tile_size")
        if seg.downsample not in (1, 2, 4):
            raise bad(f"segmentation.downsample {seg.downsample}; allowed: 1, 2, 4")
        if tuple(seg.maps) == CELLPOSE_MAPS:
            return self._validate_cellpose(bad)
        if tuple(seg.maps) != SEGMENTATION_MAPS:
            raise bad(f"segmentation.maps {list(seg.maps)}; this wellwatch reads {list(SEGMENTATION_MAPS)} "
                      f"or {list(CELLPOSE_MAPS)}")
        if not isinstance(seg.pixel_size_um, (int, float)) or seg.pixel_size_um < 0:
            raise bad(f"segmentation.pixel_size_um {seg.pixel_size_um!r} must be a number >= 0 (0 = unknown)")
        if seg.stitch != "blend":
            raise bad(f"segmentation.stitch {seg.stitch!r}; allowed for these maps: blend")
        if unknown := set(seg.postprocess) - POSTPROCESS_KEYS:
            raise bad(f"segmentation.postprocess has unknown keys {sorted(unknown)}; allowed: {sorted(POSTPROCESS_KEYS)}")
        if seg.postprocess.get("seeds", "distance") not in SEEDS:
            raise bad(f"segmentation.postprocess.seeds {seg.postprocess['seeds']!r}; allowed: {', '.join(SEEDS)}")


    def _validate_cellpose(self, bad) -> None:
        seg = self.segmentation
        if seg.stitch != "cellpose" or seg.downsample != 1:
            raise bad(f"a Cellpose network needs segmentation.stitch 'cellpose' and downsample 1, "
                      f"not {seg.stitch!r} and {seg.downsample}")
        if not isinstance(seg.pixel_size_um, (int, float)) or seg.pixel_size_um < 0:
            raise bad(f"segmentation.pixel_size_um {seg.pixel_size_um!r} must be a number >= 0 (0 = unknown)")
        if unknown := set(seg.postprocess) - CELLPOSE_POSTPROCESS_KEYS:
            raise bad(f"segmentation.postprocess has unknown keys {sorted(unknown)}; "
                      f"allowed for a Cellpose network: {sorted(CELLPOSE_POSTPROCESS_KEYS)}")
        for key in ("diam_mean", "diam_labels"):
            if not seg.postprocess.get(key, 30.0) > 0:
                raise bad(f"segmentation.postprocess.{key} {seg.postprocess[key]!r} must be > 0 (px)")

    @property
    def is_cellpose(self) -> bool:
        return self.segmentation is not None and tuple(self.segmentation.maps) == CELLPOSE_MAPS


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def contract_from_metadata(metadata: dict[str, str], source: str) -> ModelContract:
    """Find and validate the contract in an ONNX model's custom metadata map."""
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise ContractError(source, f"has no wellwatch model contract (metadata key {METADATA_KEY!r}); "
                                    "export it with `wellwatch export` or add the contract")
    return ModelContract.from_json(text, source)
