"""Which defaults make the best bright-field live/dead crop model on the LDC images?

Each variant (crop cutting + training recipe) gets a 5-fold cross-validation by image group (the
duplicate-aware groups of `dataset voc`: rotated/flipped copies of one field stay on one side),
the same folds for every variant; within a fold 10% of the training groups validate. Reported:
pooled out-of-fold AUC and balanced accuracy (threshold 0.5) with 95% CIs from a bootstrap that
resamples image groups. For a model that averages 8 rotated/flipped views in its graph (cropnet8)
the same trained weights are also scored on one view, which isolates test-time augmentation.

    nice -n 5 .venv/bin/python benchmarks/ldc_live_dead_cv.py --variants before,after --out runs/ldc-cv

Writes OUT/results.json (appended per variant, so runs can be split), OUT/<variant>_scores.csv
and OUT/ldc_cv.png. Slow (minutes per variant on a CPU); not part of the tests.

`--import-run after=runs/ldc-live-dead` adds the out-of-fold scores of a `wellwatch train --folds`
run (its cv_scores.csv, e.g. the one `make ldc-model` makes) as a variant, so the bundled model's
own cross-validation is the figure compared. Every variant is also compared with `before` on the
same crops: the AUC and balanced-accuracy differences with paired 95% CIs (the same group
resamples for both).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ldc-live-dead" / "images"

# name -> (dataset voc arguments, train arguments; None = the architecture's defaults)
VARIANTS: dict[str, tuple[dict, dict]] = {
    # the defaults before this comparison: 64 px crops of 1.5 x the box resized, Ogawa's CNN and recipe
    "before": (dict(scale="box", size=64, context=1.5), dict(arch="ogawa")),
    # the new defaults: 32 px windows at native scale, cropnet8 with its recipe
    "after": (dict(scale="native", size=32), dict(arch="cropnet8")),
    # one change at a time from "after"
    "after_box64": (dict(scale="box", size=64, context=1.5), dict(arch="cropnet8")),
    "after_box32": (dict(scale="box", size=32, context=1.5), dict(arch="cropnet8")),
    "after_native48": (dict(scale="native", size=48), dict(arch="cropnet8")),
    "after_plain": (dict(scale="native", size=32), dict(arch="cropnet8", photometric=False, label_smoothing=0.0)),
    "after_no_photometric": (dict(scale="native", size=32), dict(arch="cropnet8", photometric=False)),
    "after_no_smoothing": (dict(scale="native", size=32), dict(arch="cropnet8", label_smoothing=0.0)),
    "after_early_stop": (dict(scale="native", size=32), dict(arch="cropnet8", schedule="constant", patience=5,
                                                            lr=1e-3)),
    "ogawa_native48": (dict(scale="native", size=48), dict(arch="ogawa")),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="folder of LDC images + VOC xml")
    ap.add_argument("--variants", default="before,after", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--out", default="runs/ldc-cv")
    ap.add_argument("--import-run", action="append", default=[], metavar="NAME=RUN",
                    help="add a `wellwatch train --folds` run's out-of-fold scores as variant NAME")
    args = ap.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v and v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if not Path(args.data).is_dir():
        ap.error(f"--data {args.data}: no such folder (the LDC images, see ../shared/data/README.md)")

    import torch

    from wellwatch.core.contract import Normalisation
    from wellwatch.training.evaluate import bootstrap_ci
    from wellwatch.training.training_run import fit_split, train_val_split
    from wellwatch.training.scores import balanced_accuracy, roc_auc
    from wellwatch.training.splits import grouped_kfold
    from wellwatch.training.classifier_loop import predict_proba, seed_defaults
    from wellwatch.training.voc import build_voc_dataset

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    datasets: dict[str, object] = {}
    for spec in args.import_run:
        name, _, run = spec.partition("=")
        results[name] = import_run(Path(run), out / f"{name}_scores.csv")
        print(f"[{name}] imported {run}: AUC {results[name]['auc']:.4f}, balanced accuracy "
              f"{results[name]['balanced_accuracy']:.4f}", flush=True)
    for name in filter(None, args.variants.split(",")):
        ds_args, train_args = VARIANTS[name]
        key = json.dumps(ds_args, sort_keys=True)
        if key not in datasets:
            datasets[key] = build_voc_dataset([args.data], norm=Normalisation("robust_zscore", {}), **ds_args)
        ds = datasets[key]
        arch = train_args["arch"]
        cfg = seed_defaults(arch, seed=args.seed, device="cpu",
                            **{k: v for k, v in train_args.items() if k != "arch"})
        groups, pos = ds.source, ds.classes.index(ds.positive_class)
        y = ds.y == pos
        oof, oof_one_view = np.full(len(ds), np.nan), np.full(len(ds), np.nan)
        t0, epochs = time.perf_counter(), []
        for i, test in enumerate(grouped_kfold(groups, args.folds, args.seed)):
            rest = np.nonzero(~test)[0]
            tr, va = train_val_split(groups[rest], args.seed + i)
            train, val = np.zeros(len(ds), bool), np.zeros(len(ds), bool)
            train[rest[tr]], val[rest[va]] = True, True
            print(f"[{name}] fold {i + 1}/{args.folds}: {int(train.sum())} train, {int(val.sum())} val, "
                  f"{int(test.sum())} test crops", file=sys.stderr, flush=True)
            model, history = fit_split(ds, train, val, replace(cfg, seed=args.seed + i))
            epochs.append(len(history.train_loss))
            oof[test] = predict_proba(model, ds.x[test])[:, pos]
            if getattr(model, "dihedral", False):
                model.dihedral = False
                oof_one_view[test] = predict_proba(model, ds.x[test])[:, pos]
            print(f"[{name}] fold {i + 1}: AUC {roc_auc(y[test], oof[test]):.4f} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)

        def summary(score: np.ndarray) -> dict:
            pred = score >= 0.5
            m = {"auc": round(roc_auc(y, score), 4),
                 "balanced_accuracy": round(balanced_accuracy(y.astype(int), pred.astype(int)), 4)}
            m.update(bootstrap_ci(y, score, pred, groups))
            return m

        res = {"dataset": ds_args, "train": {k: v for k, v in vars(cfg).items() if k not in ("progress", "device")},
               "n": int(len(ds)), "n_dead": int(y.sum()), "groups": int(len(set(groups.tolist()))),
               "folds": args.folds, "seconds": round(time.perf_counter() - t0, 1), "epochs_per_fold": epochs,
               "threads": args.threads, **summary(oof)}
        if np.isfinite(oof_one_view).all():
            res["one_view"] = summary(oof_one_view)
        results[name] = res
        results_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
        write_scores(out / f"{name}_scores.csv", ds.ids, ds.source, y, oof)
        print(f"[{name}] AUC {res['auc']:.4f} {res['auc_ci95']}  balanced accuracy {res['balanced_accuracy']:.4f} "
              f"{res['balanced_accuracy_ci95']}  ({res['seconds']:.0f} s)"
              + (f"; one view: AUC {res['one_view']['auc']:.4f}, BA {res['one_view']['balanced_accuracy']:.4f}"
                 if "one_view" in res else ""), flush=True)
    compare_with(results, out, "before")
    results_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    plot(results, out / "ldc_cv.png")
    return 0


def write_scores(path: Path, ids, groups, y, score) -> None:
    with open(path, "w") as f:
        f.write("id,group,label_dead,score_dead\n")
        for i, g, lab, sc in zip(ids, groups, y, score):
            f.write(f"{i},{g},{int(lab)},{sc:.6f}\n")


def read_scores(path: Path) -> dict[str, tuple[str, bool, float]]:
    import csv

    with open(path) as f:
        return {r["id"]: (r["group"], r["label_dead"] == "1", float(r["score_dead"])) for r in csv.DictReader(f)}


def import_run(run: Path, scores_out: Path) -> dict:
    """A `wellwatch train --folds` run -> a results entry (pooled metrics as the run computed them)."""
    import csv

    from wellwatch.training.dataset import load_dataset

    summary = json.loads((run / "train.json").read_text())
    ds = load_dataset(summary["dataset"])
    group = dict(zip(ds.ids, ds.source))
    with open(run / "cv_scores.csv") as f:
        rows = list(csv.DictReader(f))
    write_scores(scores_out, [r["id"] for r in rows], [group[r["id"]] for r in rows],
                 [r["label"] == "1" for r in rows], [float(r["score"]) for r in rows])
    cv = summary["cv"]
    res = {"imported": str(run), "dataset": ds.meta.get("crop"), "train": summary["config"], "n": len(rows),
           "groups": len(set(ds.source.tolist())), "folds": cv["k"], "seconds": summary["seconds"],
           **{k: cv["pooled"][k] for k in ("auc", "balanced_accuracy", "auc_ci95", "balanced_accuracy_ci95",
                                           "bootstrap")}}
    if "pooled_one_view" in cv:
        res["one_view"] = cv["pooled_one_view"]
    return res


def compare_with(results: dict, out: Path, base: str, n_boot: int = 1000, seed: int = 0) -> None:
    """Paired group bootstrap of (variant - base) AUC and balanced accuracy on the crops both scored."""
    from wellwatch.training.scores import balanced_accuracy, roc_auc

    if base not in results or not (out / f"{base}_scores.csv").exists():
        return
    ref = read_scores(out / f"{base}_scores.csv")
    for name in results:
        path = out / f"{name}_scores.csv"
        if name == base or not path.exists():
            continue
        other = read_scores(path)
        ids = sorted(set(ref) & set(other))
        g = np.array([ref[i][0] for i in ids])
        y = np.array([ref[i][1] for i in ids])
        a, b = np.array([ref[i][2] for i in ids]), np.array([other[i][2] for i in ids])
        _, gi = np.unique(g, return_inverse=True)
        members = [np.nonzero(gi == k)[0] for k in range(gi.max() + 1)]
        rng = np.random.default_rng(seed)

        def diff(idx):
            yy = y[idx]
            return (roc_auc(yy, b[idx]) - roc_auc(yy, a[idx]),
                    balanced_accuracy(yy.astype(int), (b[idx] >= 0.5).astype(int))
                    - balanced_accuracy(yy.astype(int), (a[idx] >= 0.5).astype(int)))

        draws = np.array([diff(np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))]))
                          for _ in range(n_boot)])
        point = diff(np.arange(len(ids)))
        ci = lambda c: [round(float(np.nanpercentile(draws[:, c], 2.5)), 4), round(float(np.nanpercentile(draws[:, c], 97.5)), 4)]
        results[name][f"vs_{base}"] = {"crops": len(ids), "auc_difference": round(point[0], 4), "auc_difference_ci95": ci(0),
                                       "balanced_accuracy_difference": round(point[1], 4),
                                       "balanced_accuracy_difference_ci95": ci(1),
                                       "bootstrap": f"{n_boot} paired resamples of {len(members)} image groups"}
        print(f"[{name}] - [{base}]: AUC {point[0]:+.4f} {ci(0)}, balanced accuracy {point[1]:+.4f} {ci(1)}", flush=True)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 * len(names) + 1.6), sharey=True)
    for ax, key, label in ((axes[0], "auc", "AUC"), (axes[1], "balanced_accuracy", "balanced accuracy (0.5)")):
        v = np.array([results[n][key] for n in names])
        ci = np.array([results[n][f"{key}_ci95"] for n in names])
        ax.errorbar(v, np.arange(len(names)), xerr=[v - ci[:, 0], ci[:, 1] - v], fmt="o", capsize=3)
        ax.set_xlabel(f"{label}, 5-fold CV by image group (95% CI)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(np.arange(len(names)), names)
    axes[0].invert_yaxis()
    fig.suptitle("LDC bright-field live/dead crops: out-of-fold scores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
