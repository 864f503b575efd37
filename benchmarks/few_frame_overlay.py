"""Before and after a few-frame adaptation, side by side, on a frame neither looked at.

    python benchmarks/few_frame_overlay.py DATASET FRAME START.onnx ADAPTED.onnx OUT.png \
        [--crop Y,X,SIZE] [--pixel-size UM]

Annotated outlines red, the model's green (wellwatch/overlay.py's colours), each model served the
daemon's way (its contract's tiling and watershed).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from skimage.io import imread  # noqa: E402

from wellwatch.core.segmentation.maps import ServeOptions  # noqa: E402
from wellwatch.core.segmentation.segmenters import load_segmenter  # noqa: E402
from wellwatch.overlay import overlay_png  # noqa: E402
from wellwatch.training.masks import load_mask_set  # noqa: E402
from wellwatch.training.seg_metrics import aggregate_scores, match_scores  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dataset"), p.add_argument("frame"), p.add_argument("start"), p.add_argument("adapted")
    p.add_argument("out")
    p.add_argument("--crop", default="", help="Y,X,SIZE of the window shown (default: the whole frame)")
    p.add_argument("--pixel-size", type=float, default=0.0)
    args = p.parse_args()
    data = load_mask_set(args.dataset).select([args.frame])
    image, truth = data.images[0], data.labels[0]
    window = (slice(None), slice(None))
    if args.crop:
        y, x, size = (int(v) for v in args.crop.split(","))
        window = (slice(y, y + size), slice(x, x + size))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.8))
    with tempfile.TemporaryDirectory() as tmp:
        for ax, (title, model) in zip(axes, (("before (the start)", args.start), ("after finetune", args.adapted))):
            labels = load_segmenter(model, threads=2, options=ServeOptions(args.pixel_size)).segment(image)
            s = aggregate_scores([match_scores(truth, labels)])["iou"]
            png = overlay_png(image[window], labels[window], Path(tmp) / "o.png", truth=truth[window])
            ax.imshow(imread(png))
            ax.set_title(f"{title}: F1@0.5 {s[0.5]['f1']:.2f}, F1@0.75 {s[0.75]['f1']:.2f} (whole frame)", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"{args.frame}, never trained on: annotated outlines red, the model's green", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
