"""`wellwatch dataset live-dead|voc|masks|cells`, `wellwatch train`, `wellwatch evaluate`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _class_map(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    out = {}
    for item in text.split(","):
        if "=" not in item:
            raise SystemExit(f"--class-map: {item!r} is not NAME=CLASS")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def cmd_live_dead(args: argparse.Namespace) -> int:
    from wellwatch.core.contract import Normalisation

    from .dataset import save_dataset
    from .livedead import build_live_dead_dataset, find_pairs, read_pairs
    from .stain_labels import StainFitError, StainLabelling

    pairs = find_pairs(args.folders, args.naming, args.label_free, args.fluorescence, args.plate_format, args.pattern)
    print(f"{len(pairs)} paired fields ({args.label_free} + {args.fluorescence})", file=sys.stderr)
    labelling = StainLabelling(background=args.stain_background == "subtract", statistic=args.stain_statistic,
                               scale=args.stain_scale, min_separation=args.min_separation)
    fields = list(read_pairs(pairs))
    reference = {"wells": _csv(args.reference_wells), "plates": _csv(args.reference_plates)}
    out = Path(args.out)
    histogram = out / "fluorescence_histogram.png"
    try:
        ds = build_live_dead_dataset(fields, args.tile, args.stride or args.tile // 2,
                                     Normalisation(args.normalisation, {}), args.empty_filter, args.empty_threshold,
                                     reference if any(reference.values()) else None, histogram=histogram,
                                     labelling=labelling, acquisition=", ".join(map(str, args.folders)))
    except StainFitError as e:
        print(f"wellwatch dataset live-dead: {e} ({histogram})", file=sys.stderr)
        return 2
    ds.meta["provenance"].update(folders=[str(f) for f in args.folders], naming=args.naming,
                                 label_free=args.label_free, fluorescence=args.fluorescence)
    save_dataset(ds, out)
    print(json.dumps({"out": str(out), "counts": ds.meta["label_counts"], "separation": ds.meta["separation"],
                      "thresholds": {k: ds.meta["thresholds"][k] for k in ("live_below", "dead_above", "equal_posterior",
                                                                           "empty_std", "unit")}}, indent=1))
    return 0


def cmd_voc(args: argparse.Namespace) -> int:
    from wellwatch.core.contract import Normalisation

    from .dataset import save_dataset
    from .voc import build_voc_dataset

    ds = build_voc_dataset(args.folders, args.size, args.context, Normalisation(args.normalisation, {}),
                           _class_map(args.class_map), args.group_pattern, args.limit,
                           None if args.no_duplicate_groups else args.duplicate_threshold, args.scale,
                           args.describe)
    save_dataset(ds, args.out)
    print(json.dumps({"out": args.out, "n": len(ds), "counts": ds.counts(), "task": ds.meta["task"],
                      "groups": len(set(ds.source.tolist())), "duplicates": ds.meta["duplicates"]}, indent=1))
    return 0


def cmd_cells(args: argparse.Namespace) -> int:
    from wellwatch.core.segmentation.classical_overrides import classical_params
    from wellwatch.core.contract import CellCrop
    from wellwatch.core.segmentation.segmenters import load_segmenter

    from .cells import CellDatasetError, build_cell_dataset, find_fields, read_fields, stderr_progress
    from .dataset import save_dataset

    label_free = _csv(args.label_free)
    dead_stain = args.dead_stain
    if dead_stain and (args.marker or args.classes):
        raise CellDatasetError("--dead-stain labels cells live/dead: --marker and --classes are for marker labels")
    classes = tuple(_csv(args.classes or "LMPP,pro-B"))
    marker = dead_stain or args.marker or "CD19"
    method = args.segmentation or ("model" if args.model is not None else "classical")
    if method == "classical" and args.model is not None:
        raise CellDatasetError(f"--model {args.model!r} is for --segmentation model")
    if method == "model" and args.classical:
        raise CellDatasetError("--classical KEY=VALUE is for --segmentation classical")
    if len(classes) != 2 and not dead_stain:
        raise CellDatasetError(f"--classes {args.classes!r}: give two names NEG,POS (marker-negative first)")
    if args.crop < 8:
        raise CellDatasetError(f"--crop {args.crop}: at least 8 px")
    if not 0 < args.mask_radius <= args.crop:
        raise CellDatasetError(f"--mask-radius {args.mask_radius}: must be in (0, --crop {args.crop}]")
    if args.min_area < 0 or args.max_area < 0 or (args.max_area and args.min_area > args.max_area):
        raise CellDatasetError(f"--min-area {args.min_area} / --max-area {args.max_area}: need 0 <= min <= max "
                               "(max 0 = no limit)")
    segment_on = args.segment_on or label_free[0]
    if segment_on.lower() == marker.lower():
        raise CellDatasetError(f"--segment-on {segment_on!r} is the labelling stain itself: segment on a label-free "
                               "channel or a stain that shows every cell (e.g. a nuclear stain)")
    crop = CellCrop(args.crop, float(args.mask_radius), args.min_area, args.max_area)
    seg_meta: dict = {"method": method}
    if method == "classical":
        # the segmenter's own area filter defaults to the crop's range (the study keeps 2000-8000 px regions);
        # --classical min_area=/max_area= override it
        given = {item.partition("=")[0].strip() for item in args.classical}
        defaults = [f"min_area={args.min_area}"] if "min_area" not in given else []
        if "max_area" not in given:
            defaults.append(f"max_area={args.max_area or 10**9}")
        params = classical_params(defaults + list(args.classical))
        segmenter = load_segmenter(None, params)
        from dataclasses import asdict

        seg_meta["classical"] = asdict(params)
    else:
        segmenter = load_segmenter(args.model or "", None)
        seg_meta["model"] = args.model or "bundled phase-segmentation.onnx"
    files = find_fields(args.folders, args.naming, label_free, marker, args.plate_format, args.pattern,
                        extra=[segment_on], marker_option="--dead-stain" if dead_stain else "--marker")
    # the channel's name as the files spell it (names compare case-insensitively)
    segment_channel = next(c for c in [*files[0].label_free, *files[0].extra] if c.lower() == segment_on.lower())
    print(f"{len(files)} fields ({'+'.join(label_free)} + {'dead stain' if dead_stain else 'marker'} {marker}); "
          f"segmenting {segment_channel} ({method})", file=sys.stderr, flush=True)
    out = Path(args.out)
    if dead_stain:
        return _cells_live_dead(args, files, segmenter, label_free, segment_channel, crop, seg_meta, out)
    ds = build_cell_dataset(read_fields(files), segmenter, label_free, segment_channel=segment_channel, crop=crop,
                            marker_radius=args.marker_radius, posterior=args.posterior, classes=classes,
                            balance=args.balance, seed=args.seed, histogram=out / "marker_histogram.png",
                            segmentation=seg_meta, marker_channel=marker, progress=stderr_progress,
                            total_fields=len(files))
    ds.meta["provenance"].update(folders=[str(f) for f in args.folders], naming=args.naming,
                                 label_free=label_free, marker=marker)
    save_dataset(ds, out)
    c = ds.meta["label_counts"]
    print(f"cells: {c['segmented']} segmented, {c['in_size_range']} in the size range, {c['ambiguous']} ambiguous, "
          f"{c['kept']} kept ({', '.join(f'{k} {v}' for k, v in ds.counts().items())})", file=sys.stderr, flush=True)
    print(json.dumps({"out": str(out), "counts": c, "classes": list(ds.classes),
                      "thresholds": {k: ds.meta["thresholds"][k] for k in ("negative_below", "positive_above",
                                                                           "equal_posterior")},
                      "groups": {"fields": len(set(ds.source.tolist())), "wells": len(set(ds.groups("well").tolist()))}},
                     indent=1))
    return 0


def _cells_live_dead(args, files, segmenter, label_free, segment_channel, crop, seg_meta, out: Path) -> int:
    from .cells import read_fields, stderr_progress
    from .cells_live_dead import StainMeasure, build_live_dead_cell_dataset
    from .dataset import save_dataset

    measure = StainMeasure(args.stain_statistic, args.stain_radius, args.background_block)
    ds = build_live_dead_cell_dataset(read_fields(files), segmenter, label_free, segment_channel=segment_channel,
                                      crop=crop, measure=measure, balance=args.balance, seed=args.seed,
                                      histogram=out / "stain_histogram.png", segmentation=seg_meta,
                                      stain_channel=args.dead_stain, progress=stderr_progress,
                                      total_fields=len(files))
    ds.meta["provenance"].update(folders=[str(f) for f in args.folders], naming=args.naming,
                                 label_free=label_free, dead_stain=args.dead_stain)
    save_dataset(ds, out)
    c = ds.meta["label_counts"]
    print(f"cells: {c['segmented']} segmented, {c['in_size_range']} in the size range, {c['ambiguous']} ambiguous, "
          f"{c['kept']} kept (live {c['live']}, dead {c['dead']})", file=sys.stderr, flush=True)
    t = ds.meta["thresholds"]
    print(json.dumps({"out": str(out), "counts": c, "classes": list(ds.classes),
                      "thresholds": {k: t[k] for k in ("live_below", "dead_above", "unit")},
                      "separation": ds.meta["separation"],
                      "groups": {"fields": len(set(ds.source.tolist())), "wells": len(set(ds.groups("well").tolist()))}},
                     indent=1))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .models import PretrainedUnavailable
    from .training_run import SplitError, train_run

    fractions = tuple(float(f) for f in args.split.split("/"))
    if len(fractions) != 3:
        raise SystemExit(f"--split {args.split!r}: give train/val/test, e.g. 80/10/10")
    try:
        summary = train_run(args.dataset, args.out, args.arch, args.epochs, args.batch_size, args.lr, args.patience,
                            args.seed, args.pretrained, args.group_by, fractions, args.folds, args.threshold,
                            args.device, args.name, progress=not args.quiet, label_smoothing=args.label_smoothing,
                            photometric=args.photometric, schedule=args.schedule, weight_decay=args.weight_decay)
    except (PretrainedUnavailable, SplitError) as e:
        print(f"wellwatch train: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("arch", "metrics", "threshold", "train_seconds", "epochs_run",
                                              "best_epoch", "device")}, indent=1))
    return 0


def cmd_masks(args: argparse.Namespace) -> int:
    from .masks import build_mask_set, find_flat_pairs, find_mask_pairs, save_mask_set

    try:
        if args.mask_suffix:
            pairs = find_flat_pairs(args.folders, tuple(_csv(args.mask_suffix)))
        else:
            pairs = find_mask_pairs(args.folders, args.image_name, args.mask_name)
        ds = build_mask_set(pairs)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"wellwatch dataset masks: {e}") from None
    save_mask_set(ds, args.out)
    print(json.dumps({"out": args.out, "images": len(ds), "cells": int(sum(ds.meta["cells"]))}, indent=1))
    return 0


def _names(text: str) -> tuple[str, ...]:
    """'set1-20' or 'set1,set5' -> names; a range is prefix + first..last."""
    import re

    out = []
    for part in _csv(text):
        m = re.fullmatch(r"(\D*)(\d+)-(\d+)", part)
        out += [f"{m[1]}{i}" for i in range(int(m[2]), int(m[3]) + 1)] if m else [part]
    return tuple(out)


def cmd_train_segmentation(args: argparse.Namespace) -> int:
    from wellwatch.core.contract import Normalisation

    from .seg_train import SegTrainConfig, train_segmentation

    if not args.train_images or not args.val_images:
        raise SystemExit("wellwatch train --task segmentation: give --train-images and --val-images "
                         "(e.g. set1-20 and set21-24); keep test images out of both")
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("base", args.width), ("crop", args.crop), ("seed", args.seed),
                                   ("name", args.name), ("threads", args.threads), ("augment", args.augment),
                                   ("init", args.init), ("pixel_size_um", args.pixel_size),
                                   ("eval_every", args.eval_every)) if v is not None}
    if args.normalisation == "flatfield":
        overrides["normalisation"] = Normalisation("flatfield", {"sigma": args.flatfield_sigma})
    if args.test_images:
        overrides["test"] = _names(args.test_images)
    if args.tta:
        overrides["tta"] = True
    if args.balance_groups:
        if not args.groups_from:
            raise SystemExit("wellwatch train --task segmentation: --balance-groups needs --groups-from DIR "
                             "(each image's acquisition group)")
        overrides["balance_groups"] = True
    try:
        if args.leave_group_out:
            logo = json.loads(Path(args.leave_group_out).read_text())
            overrides["leave_group_out"] = {k: logo[k] for k in ("grouping", "groups", "pooled", "recipe") if k in logo}
        if args.groups_from:
            from .seg_groups import usiigaci_groups

            overrides["groups"] = usiigaci_groups(args.groups_from)[0]
        cfg = SegTrainConfig(train=_names(args.train_images), val=_names(args.val_images), **overrides)
        summary = train_segmentation(args.dataset, args.out, cfg, progress=not args.quiet)
    except (ValueError, KeyError, OSError) as e:
        raise SystemExit(f"wellwatch train --task segmentation: {e}") from None
    print(json.dumps({k: summary[k] for k in ("metrics", "postprocess", "train_seconds", "steps")}, indent=1))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from wellwatch.core.errors import UsageError

    from .evaluate import evaluate

    if not Path(args.model).exists():
        raise UsageError(f"wellwatch evaluate: {args.model}: no such run folder, checkpoint or .onnx file")

    m = evaluate(args.model, args.dataset, args.out, args.split, args.bootstrap, args.tsne_max, args.gradcam)
    print(json.dumps({k: m[k] for k in ("n", "auc", "auc_ci95", "balanced_accuracy", "balanced_accuracy_ci95",
                                        "confusion_matrix", "patches", "baseline_cell_size_svm") if k in m}, indent=1))
    print(f"report: {Path(args.out) / 'report.md'}", file=sys.stderr)
    return 0


def _acquisition_arguments(p: argparse.ArgumentParser) -> None:
    """Where paired acquisitions are and how their files are named."""
    p.add_argument("folders", nargs="+", help="acquisition folders (searched recursively)")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--naming", default="scanr", help="naming preset (scanr, nis, metaxpress, operetta, incucyte, "
                                                     "cellomics, regex)")
    p.add_argument("--pattern", default="", help="regex for --naming regex")
    p.add_argument("--plate-format", type=int, default=96)


def register(sub) -> None:
    ds = sub.add_parser("dataset", help="build a training dataset (live-dead from paired fluorescence, voc from boxes, "
                                        "masks for segmentation, cells from paired marker fluorescence)")
    dsub = ds.add_subparsers(dest="dataset_command", required=True)

    p = dsub.add_parser("live-dead", help="tile paired label-free + PI acquisitions, label tiles by a 2-component GMM")
    _acquisition_arguments(p)
    p.add_argument("--label-free", default="BF", help="label-free channel name (default BF)")
    p.add_argument("--fluorescence", default="PI", help="propidium-iodide channel name (default PI)")
    p.add_argument("--tile", type=int, default=224, help="patch size in px (default 224, the seed study's)")
    p.add_argument("--stride", type=int, default=0, help="stride in px (default tile/2 = 50%% overlap)")
    p.add_argument("--normalisation", default="robust_zscore", choices=["robust_zscore"])
    p.add_argument("--empty-filter", default="std", choices=["std", "none"],
                   help="std (default; chosen on measured evidence, see training/empty_filter.py) or none")
    p.add_argument("--empty-threshold", type=float, default=None, help="std threshold (default: fitted without labels)")
    p.add_argument("--reference-wells", help="fit the mixture on these wells only, e.g. A1,B1 (the untreated set)")
    p.add_argument("--reference-plates", help="fit the mixture on these plates only")
    p.add_argument("--stain-background", default="subtract", choices=["subtract", "none"],
                   help="subtract each field's smooth background and divide by its noise (default), or use raw values")
    p.add_argument("--stain-statistic", default="p99", choices=["p99", "mean"],
                   help="a tile's stain value: its 99th percentile (default: a dead nucleus covers part of a tile) "
                        "or its mean (the seed study's)")
    p.add_argument("--stain-scale", default="log", choices=["log", "linear"],
                   help="fit the mixture on log(1 + value) (default) or on the values")
    p.add_argument("--min-separation", type=float, default=2.0,
                   help="refuse a mixture whose components' Ashman's D is below this (default 2)")
    p.set_defaults(func=cmd_live_dead)

    p = dsub.add_parser("voc", help="import Pascal VOC boxes (LabelImg/CVAT) as labelled crops")
    p.add_argument("folders", nargs="+", help="folders with image + .xml pairs (searched recursively)")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=32,
                   help="crop side in px (default 32: the LDC cells, 14-33 px across, with some background)")
    p.add_argument("--scale", default="native", choices=["native", "box"],
                   help="native: SIZE px windows at the image's own scale, as the daemon sees cells; "
                        "box: CONTEXT x the box side resized to SIZE")
    p.add_argument("--context", type=float, default=1.5,
                   help="with --scale box: crop side / box's longer side (default 1.5)")
    p.add_argument("--describe", help="what the images show, e.g. 'bright-field cells in a counting chamber'; "
                                      "a model's contract carries it (trained_on.fits) with the cell size it fits")
    p.add_argument("--normalisation", default="robust_zscore", choices=["robust_zscore"])
    p.add_argument("--class-map", help="box name to class, e.g. 'Living Cell=live,Dead Cell=dead' "
                                       "(default: LDC names map to live/dead, others kept)")
    p.add_argument("--group-pattern", help="regex with named groups plate/well searched in the image name")
    p.add_argument("--duplicate-threshold", type=float, default=0.95,
                   help="images that are rotated/flipped near-copies (thumbnail correlation above this) share a group")
    p.add_argument("--no-duplicate-groups", action="store_true", help="every image its own group")
    p.add_argument("--limit", type=int, default=0, help="read only the first N xml files")
    p.set_defaults(func=cmd_voc)

    p = dsub.add_parser("masks", help="import images with label masks (e.g. the Usiigaci sets) for segmentation")
    p.add_argument("folders", nargs="+", help="folders whose sub-folders each hold one image and its mask")
    p.add_argument("--out", required=True)
    p.add_argument("--image-name", default="raw.tif", help="the image's file name in each sub-folder")
    p.add_argument("--mask-name", default="instances_ids.png",
                   help="the label mask's file name (0 = background, one integer id per cell)")
    p.add_argument("--mask-suffix", nargs="?", const=",".join(("_cp_masks", "_masks", "_labels", "-labels")),
                   help="flat folders instead: NAME.tif beside NAME<SUFFIX>.tif/.png, as Cellpose (_masks, _cp_masks), "
                        "napari (_labels) or QuPath (-labels) export them; comma-separated suffixes "
                        "(alone: those four)")
    p.set_defaults(func=cmd_masks)

    p = dsub.add_parser("cells", help="segment paired label-free + marker fields into single-cell crops, "
                                      "label cells by a 2-component GMM on the marker (the cell-type study), "
                                      "or live/dead from a dead stain (--dead-stain)")
    _acquisition_arguments(p)
    p.add_argument("--label-free", default="PH",
                   help="label-free channel(s), comma-separated, e.g. PH or PH,DIC: the model's input channels")
    p.add_argument("--marker", help="marker fluorescence channel that labels the cell types (default CD19)")
    p.add_argument("--dead-stain", help="dead-stain channel (e.g. PI): label cells live/dead instead of by a marker "
                                        "(task live_dead, classes live,dead)")
    p.add_argument("--segment-on", "--segment-channel", dest="segment_on",
                   help="channel to segment: a label-free channel or another one, e.g. a nuclear stain such as "
                        "LIVE (default: the first of --label-free)")
    p.add_argument("--stain-statistic", default="mean",
                   help="--dead-stain: per-cell statistic, mean or pNN (percentile, e.g. p90) (default mean)")
    p.add_argument("--stain-radius", type=float, default=0.0,
                   help="--dead-stain: measure within this radius (px) of the centroid; 0 = inside the segmented "
                        "object (default)")
    p.add_argument("--background-block", type=int, default=64,
                   help="--dead-stain: per-field background = median of non-object pixels per block of this "
                        "size (px), interpolated (default 64)")
    p.add_argument("--segmentation", choices=["classical", "model"],
                   help="classical watershed (default) or a segmentation model (--model; default the bundled one)")
    p.add_argument("--model", help="segmentation ONNX model for --segmentation model")
    p.add_argument("--classical", action="append", default=[], metavar="KEY=VALUE",
                   help="classical segmentation parameter (repeatable), e.g. downsample=1 min_distance=10; "
                        "min_area/max_area default to --min-area/--max-area")
    p.add_argument("--min-area", type=int, default=2000, help="smallest cell kept, px (default 2000)")
    p.add_argument("--max-area", type=int, default=8000, help="largest cell kept, px (default 8000; 0 = no limit)")
    p.add_argument("--crop", type=int, default=150, help="crop size in px around each centroid (default 150)")
    p.add_argument("--mask-radius", type=float, default=50.0, help="circular mask radius in px (default 50)")
    p.add_argument("--marker-radius", type=float, default=30.0,
                   help="marker intensity: mean of the raw marker frame within this radius of the centroid (default 30)")
    p.add_argument("--posterior", type=float, default=0.8,
                   help="cells below this posterior in both mixture components are not used (default 0.8)")
    p.add_argument("--classes",
                   help="NEG,POS: names of the marker-negative and marker-positive classes (default LMPP,pro-B)")
    p.add_argument("--balance", action="store_true", help="trim the classes to equal counts within each plate/well")
    p.add_argument("--seed", type=int, default=0, help="random seed of --balance")
    p.set_defaults(func=cmd_cells)

    p = sub.add_parser("train", help="train a classifier (or, with --task segmentation, a U-Net); writes RUN/best.pt")
    p.add_argument("dataset")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--arch", choices=["resnet18", "squeezenet1_1", "inception_v3", "ogawa", "tiny", "cropnet",
                                      "cropnet8"],
                   help="default: resnet18 for tiles, ogawa for cell crops, cropnet8 for crops from boxes (dataset voc)")
    p.add_argument("--pretrained", choices=["imagenet"], help="load torchvision's ImageNet weights")
    p.add_argument("--epochs", type=int, help="at most this many (default: the seed study's, 30)")
    p.add_argument("--batch-size", type=int, help="default: the seed study's (4 torchvision, 32 ogawa)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: the seed study's)")
    p.add_argument("--patience", type=int,
                   help="early stopping patience in epochs (default 5; 0 = none, keep the last epoch)")
    p.add_argument("--weight-decay", type=float, help="Adam weight decay (default: per architecture)")
    p.add_argument("--label-smoothing", type=float, help="soften the training targets (default: per architecture)")
    p.add_argument("--photometric", action=argparse.BooleanOptionalAction, default=None,
                   help="random brightness/contrast/blur on top of rotations and flips (default: per architecture)")
    p.add_argument("--schedule", choices=["constant", "cosine"], help="learning rate schedule (default: per architecture)")
    p.add_argument("--split", default="80/10/10", help="train/val/test fractions of the groups")
    p.add_argument("--group-by", default="source", choices=["source", "well", "plate"])
    p.add_argument("--folds", type=int, default=0, help="k-fold cross-validation by group (0 = off)")
    p.add_argument("--threshold", default="0.5", choices=["0.5", "val"],
                   help="decision threshold: 0.5 or the one maximising balanced accuracy on validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda")
    p.add_argument("--name", help="model name in the contract")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--task", default="classify", choices=["classify", "segmentation"],
                   help="segmentation: a U-Net on a `dataset masks` folder")
    seg = p.add_argument_group("segmentation (--task segmentation)")
    seg.add_argument("--train-images", help="images to train on, e.g. set1-20")
    seg.add_argument("--val-images", help="images to select weights and the watershed on, e.g. set21-24")
    seg.add_argument("--steps", type=int, help="optimiser steps (default 1200)")
    seg.add_argument("--width", type=int, help="U-Net base width (default 16)")
    seg.add_argument("--crop", type=int, help="training crop at model resolution (default 192)")
    seg.add_argument("--threads", type=int, help="torch CPU threads (default: all)")
    seg.add_argument("--test-images", help="images scored once at the end, never used to choose (a held-out group)")
    seg.add_argument("--augment", choices=["microscope", "scale", "basic"],
                     help="microscope (default): scale 0.5-2x, illumination, halo, contrast, gamma, blur, defocus, "
                          "noise, rotations, flips; scale: basic plus the scale change; basic: the first recipe")
    seg.add_argument("--normalisation", choices=["percentile", "flatfield"], default="percentile",
                     help="percentile (1-99%%, default) or flatfield (divide by the smooth illumination, robust scale)")
    seg.add_argument("--flatfield-sigma", type=float, default=32.0,
                     help="flatfield: Gaussian sigma of the illumination estimate, model-resolution px (default 32)")
    seg.add_argument("--init", help="fine-tune from this model: a segmentation checkpoint (.pt) or exported .onnx "
                                    "(e.g. wellwatch/models/phase-segmentation.onnx); keeps its preprocessing")
    seg.add_argument("--pixel-size", type=float,
                     help="um per pixel of the dataset's images (0 = unknown); with --init they are resampled to "
                          "the model's pixel size; without, it is recorded as the model's")
    seg.add_argument("--eval-every", type=int, help="steps between validation scorings (default 150)")
    seg.add_argument("--tta", action="store_true", help="score with test-time augmentation (flips)")
    seg.add_argument("--leave-group-out", metavar="JSON",
                     help="leave_group_out.json of this recipe (benchmarks/seg_leave_group_out.py): written into "
                          "the contract's metrics beside the validation scores")
    seg.add_argument("--groups-from", metavar="DIR",
                     help="record each image's acquisition group, from the NIS metadata of DIR/setN/raw.tif")
    seg.add_argument("--balance-groups", action="store_true",
                     help="draw training crops from each acquisition group (--groups-from) equally often")
    p.set_defaults(func=lambda a: cmd_train_segmentation(a) if a.task == "segmentation" else cmd_train(a))

    p = sub.add_parser("evaluate", help="metrics, plots and a report for a run or an exported ONNX model")
    p.add_argument("model", help="RUN folder, RUN/best.pt, or an exported .onnx")
    p.add_argument("dataset")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--split", default="auto", choices=["auto", "test", "all"],
                   help="auto: the run's test split when the dataset is its own, else all patches")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--tsne-max", type=int, default=1500)
    p.add_argument("--gradcam", type=int, default=12, help="patches shown with Grad-CAM")
    p.set_defaults(func=cmd_evaluate)
