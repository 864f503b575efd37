"""`wellwatch finetune`: the argument parser (training/seg_finetune.py does the work; imported only
when the command runs, so the daemon's CLI needs none of the training extras)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace


WATERSHED_ON = {"strips": "validation", "frames": "train+validation", "keep": "keep"}


class FinetuneError(SystemExit):
    def __init__(self, message: str):
        super().__init__(f"wellwatch finetune: {message}")


def cmd_finetune(args: argparse.Namespace) -> int:
    from .masks import frames_to_score, load_mask_set
    from .seg_finetune import FewFrameRecipe, finetune_segmentation

    if not args.out.endswith(".onnx"):
        raise FinetuneError(f"--out {args.out}: give the served model's file name, NAME.onnx")
    overrides = {k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("freeze", args.freeze),
                                   ("augment", args.augment), ("eval_every", args.eval_every),
                                   ("check_fraction", args.check_fraction), ("seed", args.seed), ("crop", args.crop),
                                   ("watershed", WATERSHED_ON.get(args.watershed)))
                 if v is not None}
    try:
        data = load_mask_set(args.dataset)
        frames = [f for f in args.frames.split(",") if f]
        report = finetune_segmentation(data, frames, frames_to_score(data.names, frames, args.score), args.out,
                                       init=args.init or "", recipe=replace(FewFrameRecipe(), **overrides),
                                       pixel_size_um=args.pixel_size, threads=args.threads, progress=not args.quiet)
    except (ValueError, KeyError, OSError) as e:
        raise FinetuneError(str(e)) from None
    print(json.dumps(report, indent=1))
    return 0


def register(sub) -> None:
    p = sub.add_parser("finetune", help="adapt the segmentation U-Net to a lab's cells from a few annotated frames; "
                                        "scores the other annotated frames before and after; writes NAME.onnx")
    p.add_argument("dataset", help="a `wellwatch dataset masks` folder of the lab's annotated frames")
    p.add_argument("--frames", required=True, help="comma-separated frame names to adapt on, e.g. f01,f02,f03")
    p.add_argument("--score", metavar="FRAMES",
                   help="score before and after on these annotated frames, never adapted on (comma-separated, or "
                        "`rest`: every frame not in --frames): the figure for the rest of the acquisition")
    p.add_argument("--out", required=True, help="the adapted model, NAME.onnx (its run is kept in NAME.finetune/)")
    p.add_argument("--init", help="the model to adapt: a segmentation .onnx or .pt (default: the bundled one)")
    p.add_argument("--pixel-size", type=float, default=0.0, metavar="UM",
                   help="um per pixel of the annotated frames; they are resampled to the model's (0 = unknown)")
    p.add_argument("--steps", type=int, help="optimiser steps (default 400)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--freeze", choices=["none", "encoder"], help="layers kept as they are (default none)")
    p.add_argument("--augment", choices=["basic", "scale", "microscope"],
                   help="training crops' augmentation (default basic)")
    p.add_argument("--watershed", choices=list(WATERSHED_ON),
                   help="choose the watershed's parameters on the check strips, on the whole annotated frames, or "
                        "keep the start's (default frames)")
    p.add_argument("--eval-every", type=int, help="steps between scorings of the check strips")
    p.add_argument("--check-fraction", type=float,
                   help="part of each frame kept out of training to choose the weights on (default 0.25)")
    p.add_argument("--crop", type=int,
                   help="training crop at model resolution (default 192; smaller for small frames, a multiple of 16)")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_finetune)
