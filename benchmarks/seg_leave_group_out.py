"""Leave-group-out scores of a segmentation training recipe on the Usiigaci sets, and fine-tuning.

The 30 sets come from three wells (training/seg_groups.py: NIS-Elements stage positions). For each
held-out group, one model is trained with `wellwatch train --task segmentation` on the other
groups (weights and watershed chosen on two sets of the largest remaining group, which are kept
out of training), and scored on every frame of the held-out group: what a new acquisition of this
source can expect, unlike a random split whose neighbours share a well.

    python benchmarks/seg_leave_group_out.py --out runs/logo [--groups A,B,C] -- TRAIN ARGS...
    python benchmarks/seg_leave_group_out.py --out runs/logo --collect   # summary of finished folds
    python benchmarks/seg_leave_group_out.py --finetune runs/logo/B/best.pt --group B --shots 3 --out runs/ft -- ...

TRAIN ARGS go to `wellwatch train` (e.g. --steps 400 --width 8 --augment microscope
--normalisation flatfield --threads 1). Writes OUT/GROUP/ (each fold's run), OUT/leave_group_out.json
(per group and pooled over all held-out frames: F1 and AP at IoU 0.5 and 0.75) and
OUT/leave_group_out.png. `--finetune MODEL` instead fine-tunes MODEL (trained without GROUP) on the
first SHOTS sets of GROUP and scores the rest of GROUP before and after, with the time it took.
Each fold takes minutes to an hour on a 2-core CPU (set by --steps); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "usiigaci-phase"
WELLWATCH = [sys.executable, "-m", "wellwatch"]


def _num(name: str) -> int:
    return int("".join(c for c in name if c.isdigit()))


def folds(groups: dict[str, str], held_out: list[str], val_sets: list[str] = ()) -> dict[str, dict[str, list[str]]]:
    """Per held-out group: train, val (`val_sets` outside the group, else the last two sets of the
    largest other group; never trained on), test (the whole group)."""
    from wellwatch.training.seg_groups import members

    by_group = members(groups)
    out = {}
    for g in held_out:
        others = {k: sorted(v, key=_num) for k, v in by_group.items() if k != g}
        largest = max(others, key=lambda k: len(others[k]))
        val = [n for n in val_sets if groups.get(n) not in (None, g)] or others[largest][-2:]
        train = sorted((n for k, v in others.items() for n in v if n not in val), key=_num)
        out[g] = {"train": train, "val": val, "test": sorted(by_group[g], key=_num)}
    return out


def run_fold(dataset: str, out: Path, split: dict, train_args: list[str]) -> None:
    cmd = WELLWATCH + ["train", dataset, "--task", "segmentation", "--train-images", ",".join(split["train"]),
                       "--val-images", ",".join(split["val"]), "--test-images", ",".join(split["test"]),
                       "--out", str(out)] + train_args
    print("$ " + " ".join(cmd[2:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def rescore(checkpoint: Path, dataset: str, images: list[str]) -> dict:
    from wellwatch.core.segmentation.maps import PostProcess
    from wellwatch.training.masks import load_mask_set
    from wellwatch.training.seg_checkpoint import load_seg_checkpoint
    from wellwatch.training.seg_train import score, summarise

    model, contract, _ = load_seg_checkpoint(checkpoint)
    agg = score(model, load_mask_set(dataset).select(images), contract, [PostProcess.from_contract(contract.segmentation)])
    return summarise(agg[0], images)


def collect(out: Path, splits: dict, dataset: str) -> dict:
    """Per-group test scores from each fold's summary.json, and pooled over all held-out frames."""
    report = {"grouping": "NIS-Elements stage positions (training/seg_groups.py)", "groups": {}, "splits": splits}
    totals = {t: {"tp": 0, "fp": 0, "fn": 0} for t in ("50", "75")}
    for g in splits:
        path = out / g / "summary.json"
        if not path.is_file():
            continue
        summary = json.loads(path.read_text())
        test = summary["metrics"]["test"]
        if "tp_iou50" not in test:  # a run from before the counts were kept: score its model again
            test = rescore(out / g / "best.pt", dataset, test["images"])
        report["groups"][g] = test
        report.setdefault("recipe", summary.get("config"))
        for t in totals:
            for k in totals[t]:
                totals[t][k] += test.get(f"{k}_iou{t}", 0)
    pooled = {"images": sum(len(report["groups"][g]["images"]) for g in report["groups"])}
    for t, c in totals.items():
        tp, fp, fn = c["tp"], c["fp"], c["fn"]
        pooled[f"f1_iou{t}"] = 2 * tp / max(2 * tp + fp + fn, 1)
        pooled[f"ap_iou{t}"] = tp / max(tp + fp + fn, 1)
    report["pooled"] = pooled
    return report


def write_into_checkpoint(path: Path, report: dict) -> None:
    """metrics.leave_group_out of the checkpoint's contract (and of its top-level metrics copy)."""
    import torch

    data = torch.load(path, map_location="cpu", weights_only=True)
    logo = {k: report[k] for k in ("grouping", "groups", "pooled", "recipe") if k in report}
    data["contract"]["metrics"]["leave_group_out"] = logo
    data["metrics"] = data["contract"]["metrics"]
    torch.save(data, path)
    print(f"[leave-group-out] written into {path}", file=sys.stderr)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["groups"]) + ["pooled"]
    rows = [report["groups"][g] for g in report["groups"]] + [report["pooled"]]
    keys = [("f1_iou50", "F1 @ IoU 0.5"), ("f1_iou75", "F1 @ IoU 0.75"), ("ap_iou50", "AP @ 0.5"), ("ap_iou75", "AP @ 0.75")]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / len(keys)
    for i, (k, label) in enumerate(keys):
        ax.bar([j + i * width for j in range(len(names))], [r[k] for r in rows], width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], [f"held out {n}" if n != "pooled" else n for n in names])
    ax.axhline(0.85, color="grey", lw=0.8, ls="--")
    ax.axhline(0.6, color="grey", lw=0.8, ls=":")
    ax.set(ylim=(0, 1), ylabel="score on the held-out well", title="leave-group-out (dashed: targets 0.85 / 0.6)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def finetune(args, groups: dict[str, str], train_args: list[str]) -> dict:
    from wellwatch.training.seg_groups import members

    frames = sorted(members(groups)[args.group], key=_num)
    shots, rest = frames[:args.shots], frames[args.shots:]
    if not rest:
        raise SystemExit(f"group {args.group} has {len(frames)} sets: nothing left to score after {args.shots}")
    cmd = WELLWATCH + ["train", args.dataset, "--task", "segmentation", "--init", args.finetune,
                       "--train-images", ",".join(shots), "--val-images", ",".join(shots),
                       "--test-images", ",".join(rest), "--out", str(args.out)] + train_args
    print("$ " + " ".join(cmd[2:]), file=sys.stderr, flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t0
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    ft = summary["metrics"]["fine_tuning"]
    result = {"model": args.finetune, "group": args.group, "shots": shots, "scored": rest,
              "before": ft["test_before"], "after": summary["metrics"]["test"],
              "train_seconds": ft["train_seconds"], "wall_seconds_with_scoring": round(wall, 1),
              "train_args": train_args}
    (Path(args.out) / "finetune.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", default=str(ROOT / "runs" / "ds-usiigaci"),
                   help="a `wellwatch dataset masks` folder of the Usiigaci sets (default runs/ds-usiigaci)")
    p.add_argument("--data", default=str(DATA), help="the usiigaci-phase folder (for the groups)")
    p.add_argument("--groups", default="", help="held-out groups to run, e.g. B,C (default: all)")
    p.add_argument("--val", default="", help="validation sets, e.g. set21,set24 (those in the held-out group are "
                                                "dropped; none left: the last two of the largest other group)")
    p.add_argument("--collect", action="store_true", help="only summarise the folds already in --out")
    p.add_argument("--into", metavar="CHECKPOINT",
                   help="also write the report into this checkpoint's contract metrics (leave_group_out), e.g. the "
                        "final run's best.pt trained with the same recipe on all groups, before `wellwatch export`")
    p.add_argument("--finetune", metavar="MODEL", help="fine-tune MODEL (.pt/.onnx, trained without --group)")
    p.add_argument("--group", default="B", help="--finetune: the held-back group (default B)")
    p.add_argument("--shots", type=int, default=3, help="--finetune: annotated sets of the group to train on")
    args = p.parse_args(argv)
    from wellwatch.training.seg_groups import members, usiigaci_groups

    groups, _ = usiigaci_groups(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.finetune:
        print(json.dumps(finetune(args, groups, train_args), indent=1))
        return 0
    held_out = [g.strip() for g in args.groups.split(",") if g.strip()] or list(members(groups))
    unknown = sorted(set(held_out) - set(members(groups)))
    if unknown:
        raise SystemExit(f"--groups: {unknown} are not groups ({sorted(members(groups))})")
    splits = folds(groups, held_out, [v.strip() for v in args.val.split(",") if v.strip()])
    if not args.collect:
        for g, split in splits.items():
            print(f"[leave-group-out] holding out {g}: {len(split['train'])} sets to train, "
                  f"validation {split['val']}, test {split['test']}", file=sys.stderr, flush=True)
            run_fold(args.dataset, out / g, split, train_args)
    report = collect(out, splits, args.dataset)
    (out / "leave_group_out.json").write_text(json.dumps(report, indent=1))
    if report["groups"]:
        plot(report, out / "leave_group_out.png")
    if args.into:
        write_into_checkpoint(Path(args.into), report)
    print(json.dumps({k: report[k] for k in ("groups", "pooled")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
