"""Scoring a few-frame adaptation where it counts: on the acquisition's frames it was not trained on.

Both models, the one adapted from and the adapted one, are served the way the daemon serves them
(the ONNX export, ONNX Runtime, cellpose's own flows -> masks) at the same cell diameter: the mean
diameter of the annotated frames' cells, which Cellpose's training stores in the adapted model
(`diam_labels`) and which a user of the model before would have set by hand. The scores are the
project's own (training/seg_metrics.py: one-to-one matches at IoU 0.5 and 0.75).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from wellwatch.core.segmentation.maps import ServeOptions
from wellwatch.core.segmentation.segmenters import load_segmenter
from wellwatch.export.cellpose_export import export_cellpose

from .masks import MaskSet
from .seg_metrics import aggregate_scores, match_scores


def served_scores(onnx: str | Path, data: MaskSet, diameter_px: float, threads: int = 0) -> dict:
    """F1 and AP at IoU 0.5 / 0.75 of a Cellpose ONNX model on `data`, cells taken `diameter_px` wide."""
    # a diameter in px is a diameter in "um" on frames of 1 um/px: no pixel size needs to be known
    segmenter = load_segmenter(str(onnx), threads=threads, options=ServeOptions(1.0, False, diameter_px))
    scores = aggregate_scores([match_scores(labels, segmenter.segment(image))
                               for image, labels in zip(data.images, data.labels)])
    return {"frames": data.names, "cells": scores["n_gt"], "found": scores["n_pred"],
            **{f"{key}@{threshold}": round(values[key], 3)
               for threshold, values in scores["iou"].items() for key in ("f1", "ap")}}


def init_scores(init: str, data: MaskSet, diameter_px: float, postprocess: dict | None = None,
                threads: int = 0) -> dict:
    """`served_scores` of the model adapted from (a model file or a present built-in), exported on the way
    with the same mask settings (`postprocess`) as the adapted one."""
    with tempfile.TemporaryDirectory(prefix="wellwatch-cellpose-init-") as tmp:
        onnx, _ = export_cellpose(init, Path(tmp) / "init.onnx", postprocess=postprocess)
        return served_scores(onnx, data, diameter_px, threads)
