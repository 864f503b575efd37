"""Add what was learnt after training to a segmentation model's contract, weights untouched.

The training pixel size (`segmentation.pixel_size_um`), each training image's acquisition group
(`trained_on.groups`) and the leave-group-out scores of the recipe that made it
(`metrics.leave_group_out`, from benchmarks/seg_leave_group_out.py) are facts about the data and
the recipe, found after the model was made; this writes them into a checkpoint that
`wellwatch export` then turns into an ONNX file (with its parity check):

    python -m wellwatch.training.seg_restamp MODEL(.pt|.onnx) --out RUN/stamped.pt \
        [--pixel-size 0.8708] [--groups-from ../shared/data/usiigaci-phase] [--leave-group-out LOGO.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .seg_init import load_initial_model
from .seg_checkpoint import SEG_CHECKPOINT_FORMAT
from .seg_groups import usiigaci_groups


def restamp(model_path: str, out: str, pixel_size_um: float | None = None, groups_from: str | None = None,
            leave_group_out: str | None = None) -> Path:
    import torch

    model, contract = load_initial_model(model_path)
    seg, trained_on, metrics = contract.segmentation, dict(contract.trained_on), dict(contract.metrics)
    if pixel_size_um is not None:
        if pixel_size_um < 0:
            raise ValueError(f"--pixel-size {pixel_size_um}: must be >= 0 um (0 = unknown)")
        seg = dataclasses.replace(seg, pixel_size_um=pixel_size_um)
    if groups_from:
        trained_on["groups"] = usiigaci_groups(groups_from)[0]
    if leave_group_out:
        logo = json.loads(Path(leave_group_out).read_text())
        metrics["leave_group_out"] = {k: logo[k] for k in ("grouping", "groups", "pooled", "recipe") if k in logo}
    contract = dataclasses.replace(contract, segmentation=seg, trained_on=trained_on, metrics=metrics)
    contract.validate(str(model_path))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": SEG_CHECKPOINT_FORMAT, "arch": "unet", "task": "segmentation",
                "arch_params": {"base": model.base, "depth": model.depth}, "in_channels": 1,
                "state_dict": model.state_dict(), "contract": json.loads(contract.to_json()),
                "metrics": metrics, "history": {"restamped_from": str(model_path)}}, out)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wellwatch.training.seg_restamp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a segmentation checkpoint (.pt) or exported model (.onnx)")
    p.add_argument("--out", required=True, help="checkpoint to write (then `wellwatch export` it)")
    p.add_argument("--pixel-size", type=float, help="um per pixel of the training frames")
    p.add_argument("--groups-from", help="usiigaci-phase folder: record each set's acquisition group")
    p.add_argument("--leave-group-out", help="leave_group_out.json of the recipe that made the model")
    args = p.parse_args(argv)
    try:
        path = restamp(args.model, args.out, args.pixel_size, args.groups_from, args.leave_group_out)
    except (ValueError, OSError, KeyError) as e:
        print(f"seg_restamp: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
