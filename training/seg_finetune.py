"""`wellwatch finetune`: a segmentation U-Net adapted to a lab's cells from a few annotated frames.

Fine-tuning on three frames and choosing the weights and the watershed on those same frames
rewards a model that learns the frames rather than the cells. Here a strip of each annotated
frame (the last quarter along its longer side) is kept out of training: every `eval_every` steps
the model segments the strips and the best weights are kept (the start included: fine-tuning must
beat the model it starts from). The watershed is then chosen on the whole annotated frames: a
cell-size setting needs more cells than three strips hold. What the lab's other frames score,
before and after, is the only figure reported as the acquisition's.

The recipe's defaults (learning rate, steps, no frozen layers, where the watershed is chosen) were
chosen by measurement on wells of the Usiigaci sets the start never saw
(docs/results/2026-12-06-few-frame-unet.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from wellwatch.core.bundled_models import BUNDLED_SEGMENTATION_MODEL

from .checkpoint_export import export_checkpoint
from .masks import MaskSet
from .progress import Progress
from .seg_train import SegTrainConfig, train_segmentation

FIT, CHECK = "fit", "check"


@dataclass(frozen=True)
class FewFrameRecipe:
    steps: int = 400
    lr: float = 1e-3
    freeze: str = "none"
    augment: str = "basic"
    watershed: str = "train+validation"  # chosen on the whole annotated frames (more cells than the strips
                                         # alone); "validation": the strips only; "keep": the start's
    check_fraction: float = 0.25  # of each annotated frame, kept out of training to choose on
    eval_every: int = 50
    crop: int = 192
    seed: int = 0

    def validate(self) -> "FewFrameRecipe":
        if not 0.1 <= self.check_fraction <= 0.5:
            raise ValueError(f"check_fraction {self.check_fraction} must be within 0.1..0.5")
        if self.steps < 1 or self.eval_every < 1:
            raise ValueError(f"steps {self.steps} and eval_every {self.eval_every} must be >= 1")
        return self


def split_name(frame: str, part: str) -> str:
    return f"{frame}:{part}"


def split_for_checking(data: MaskSet, frames: list[str], fraction: float) -> MaskSet:
    """Each frame cut in two along its longer side: FRAME:fit (training) and FRAME:check (the last
    `fraction`, to choose on). A cell cut by the line is cut in both parts, as a frame's edge cuts it."""
    names, images, labels = [], [], []
    for name in frames:
        image, label = data.images[data.names.index(name)], data.labels[data.names.index(name)]
        axis = int(image.shape[1] >= image.shape[0])
        cut = int(round(image.shape[axis] * (1 - fraction)))
        for part, span in ((FIT, slice(0, cut)), (CHECK, slice(cut, None))):
            window = (slice(None), span) if axis else (span, slice(None))
            names.append(split_name(name, part))
            images.append(np.ascontiguousarray(image[window]))
            labels.append(np.ascontiguousarray(label[window]))
    return MaskSet(names, images, labels, data.meta)


def with_scored(split: MaskSet, data: MaskSet, score: list[str]) -> MaskSet:
    """The split frames plus the whole frames to score, in one set for the training run."""
    scored = data.select(score)
    return MaskSet(split.names + scored.names, split.images + scored.images, split.labels + scored.labels,
                   {**data.meta, "source": data.meta.get("source", "few frames")})


def finetune_segmentation(data: MaskSet, frames: list[str], score: list[str], out: str | Path,
                          init: str = "", recipe: FewFrameRecipe = FewFrameRecipe(), pixel_size_um: float = 0.0,
                          threads: int = 0, progress: bool = True) -> dict:
    """Adapt `init` (default the bundled model) on `frames`; write OUT.onnx and OUT.finetune/ (the run,
    report.json); return the report: the other frames' scores before and after, and the time taken."""
    recipe = recipe.validate()
    unknown = [n for n in frames + score if n not in data.names]
    if unknown:
        raise ValueError(f"frames {unknown} are not in the dataset (it has {data.names})")
    both = sorted(set(frames) & set(score))
    if both:
        raise ValueError(f"frames {both} are both trained on and scored: the score would not be the acquisition's")
    if not frames:
        raise ValueError("no frames to adapt on")
    out = Path(out)
    run = out.with_suffix(".finetune")
    init = init or str(BUNDLED_SEGMENTATION_MODEL)
    split = split_for_checking(data, frames, recipe.check_fraction)
    cfg = SegTrainConfig(train=tuple(split_name(f, FIT) for f in frames),
                         val=tuple(split_name(f, CHECK) for f in frames), test=tuple(score),
                         init=init, steps=recipe.steps, lr=recipe.lr, freeze=recipe.freeze,
                         augment=recipe.augment, watershed=recipe.watershed,
                         eval_every=recipe.eval_every, crop=recipe.crop, seed=recipe.seed, threads=threads,
                         pixel_size_um=pixel_size_um, name=out.stem)
    t0 = time.time()
    summary = train_segmentation(with_scored(split, data, score), run, cfg, progress=progress)
    export_checkpoint(run / "best.pt", out)
    report = adaptation_report(summary, frames, score, init, recipe, time.time() - t0, out)
    (run / "report.json").write_text(json.dumps(report, indent=1))
    Progress("finetune", progress).line(report_line(report))
    return report


def _scores(block: dict | None) -> dict | None:
    if not block:
        return None
    return {"frames": block["images"], "cells": block["tp_iou50"] + block["fn_iou50"],
            "found": block["tp_iou50"] + block["fp_iou50"],
            **{f"{k}@{t}": round(block[f"{k}_iou{tag}"], 3) for t, tag in (("0.5", "50"), ("0.75", "75"))
               for k in ("f1", "ap")}}


def adaptation_report(summary: dict, frames: list[str], score: list[str], init: str, recipe: FewFrameRecipe,
                      seconds: float, out: Path) -> dict:
    metrics = summary["metrics"]
    tuning = metrics.get("fine_tuning", {})
    return {"model": str(out), "init": init, "frames": frames, "recipe": asdict(recipe),
            "scored_frames": score,
            "before": _scores(tuning.get("test_before")), "after": _scores(metrics.get("test")),
            "check_strips": {"before": _scores(tuning.get("validation_before")),
                             "after": _scores(metrics["validation"])},
            "best_step": summary["best_step"], "kept_start": summary["best_step"] == 0,
            "postprocess": summary["postprocess"], "train_seconds": round(summary["train_seconds"], 1),
            "seconds": round(seconds, 1)}


def report_line(report: dict) -> str:
    if not report["scored_frames"]:
        return f"adapted in {report['seconds']:.0f} s; no other annotated frame scored (give --score)"
    b, a = report["before"], report["after"]
    return (f"other frames {','.join(report['scored_frames'])}: F1@0.5 {b['f1@0.5']:.3f} -> {a['f1@0.5']:.3f}, "
            f"F1@0.75 {b['f1@0.75']:.3f} -> {a['f1@0.75']:.3f} ({report['seconds']:.0f} s)")
