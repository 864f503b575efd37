"""Live/dead on the real paired acquisition `../shared/data/adcc-paired` (bright field + dead stain,
9 experiments, one per well), evaluated leaving one experiment out.

    python benchmarks/adcc_live_dead.py --out runs/adcc [--dataset DS] [--arch tiny] [--epochs 8] [--folds K]

DS defaults to a tile dataset built here with `dataset live-dead`'s defaults (64 px tiles, stride 32);
give a `dataset cells --dead-stain` folder to evaluate the per-cell model the same way.

Builds the tile dataset with `dataset live-dead`'s defaults (labels from the dead stain: per-field
background, log-scale mixture), then trains on 8 experiments and scores the 9th, for each of the 9.
Prints AUC and balanced accuracy with 95% CIs over experiments, and per experiment the dead fraction
the model calls against the stain's, and how much of the pooled AUC only ranks experiments.
Writes RUN/loeo.json, RUN/dead_fraction.png and RUN/tiles_by_label.png (per experiment, random
dead- and live-labelled tiles as the model sees them: what it has to tell apart).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from wellwatch.training.dataset import load_dataset, save_dataset
from wellwatch.training.livedead import build_live_dead_dataset, find_pairs, read_pairs
from wellwatch.training.loeo import run
from wellwatch.training.classifier_loop import seed_defaults

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "adcc-paired" / "data"


def plot_tiles_by_label(ds, path: Path, per_class: int = 6, seed: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rng = np.random.default_rng(seed)
    dead = ds.classes.index("dead")
    wells = sorted(set(ds.well.tolist()))
    fig, axes = plt.subplots(len(wells), 2 * per_class, figsize=(2 * per_class * 0.9, len(wells) * 1.0),
                             squeeze=False)
    for row, well in zip(axes, wells):
        for k, is_dead in enumerate((True, False)):
            pool = np.flatnonzero((ds.well == well) & ((ds.y == dead) == is_dead))
            for j, i in enumerate(rng.choice(pool, min(per_class, len(pool)), replace=False)):
                ax = row[k * per_class + j]
                ax.imshow(ds.x[i, 0], cmap="gray", vmin=-4, vmax=4)
                ax.set_title(f"{well} {'dead' if is_dead else 'live'}", fontsize=6, color="tab:red" if is_dead else "k")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("bright-field tiles by stain label (left: dead, right: live), one row per experiment", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=64)
    plt.close(fig)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--dataset", help="a built dataset folder (default: build one under OUT/dataset)")
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--stride", type=int, default=32)
    p.add_argument("--arch", default="tiny")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--photometric", action="store_true", help="random brightness, contrast and blur per sample")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--folds", type=int, default=0, help="k folds of whole experiments (default 0: leave one out)")
    p.add_argument("--balance-groups", action="store_true",
                   help="balance classes within each experiment when sampling (default: inverse class counts only; "
                        "measured worse here)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    ds_dir = Path(args.dataset) if args.dataset else out / "dataset"
    if not (ds_dir / "dataset.npz").exists():
        pairs = find_pairs([args.data], "scanr", "BF", "PI")
        print(f"building the dataset from {len(pairs)} fields -> {ds_dir}", file=sys.stderr, flush=True)
        ds = build_live_dead_dataset(list(read_pairs(pairs)), args.tile, args.stride,
                                     histogram=ds_dir / "fluorescence_histogram.png", acquisition=args.data)
        save_dataset(ds, ds_dir)
    ds = load_dataset(ds_dir)
    print(f"{len(ds)} labelled tiles {ds.counts()}, separation {ds.meta.get('separation')}", file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    plot_tiles_by_label(ds, out / "tiles_by_label.png")
    cfg = seed_defaults(args.arch, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                        photometric=args.photometric)
    s = run(ds, out, cfg, "well", title=f"adcc-paired, leave one experiment out ({args.arch})",
            balance_groups=args.balance_groups, k=args.folds)
    print(json.dumps({k: s[k] for k in ("n", "groups", "auc", "balanced_accuracy", "ci95",
                                        "seconds")}, indent=1, default=float))
    print(f"dead fraction per experiment, model vs stain: mean abs. error {s['dead_fraction']['mae']:.3f}, "
          f"Pearson r {s['dead_fraction']['pearson_r']}")
    parts = s["auc_parts"]
    print(f"pooled AUC {parts['pooled_auc']:.3f}: scoring each tile by its experiment's stained dead fraction alone "
          f"gives {parts['group_fraction_auc']:.3f}, by the model's mean over the experiment "
          f"{parts['model_group_mean_auc']:.3f}; mean AUC within an experiment {parts['within_group_auc_mean']:.3f}")
    for g, v in s["dead_fraction"]["per_group"].items():
        print(f"  {g}: n {v['n']:>5}  dead fraction stain {v['fraction_labels']:.3f}  model "
              f"{v['fraction_model']:.3f}  AUC {v['auc'] if v['auc'] is None else round(v['auc'], 3)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
