"""Small-budget Cellpose from scratch on Usiigaci group A, scored on groups B and C beside the bundled U-Net.

    nice -n 10 python benchmarks/cellpose_group_out.py EPOCHS WORKDIR

Needs ../shared/data/usiigaci-phase and a `wellwatch dataset masks` of it in WORKDIR/usi. The bundled
U-Net was trained on sets 1-20, which include groups B and C: its scores here are not held out.
"""
import json, sys, time, logging
logging.basicConfig(level=logging.INFO)
from pathlib import Path
import numpy as np
from wellwatch.training.masks import load_mask_set
from wellwatch.training.seg_groups import usiigaci_groups, members
from wellwatch.training.seg_metrics import match_scores, aggregate_scores
from wellwatch.training.cellpose_train import CellposeTrainSettings, train_cellpose
from wellwatch.export.cellpose_export import export_cellpose
from wellwatch.core.segmentation.segmenters import load_segmenter
from wellwatch.core.segmentation.maps import ServeOptions
root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "usiigaci-phase"
work = Path(sys.argv[2])
groups = members(usiigaci_groups(root)[0])
print({g: len(v) for g, v in groups.items()}, flush=True)
ds = load_mask_set(work / "usi")
epochs = int(sys.argv[1])
train = ds.select(groups["A"])
t = time.perf_counter()
r = train_cellpose(train, work / f"ga{epochs}", "group-a", None, CellposeTrainSettings(epochs=epochs, batch_size=8, images_per_epoch=8))
train_s = time.perf_counter() - t
onnx, _ = export_cellpose(str(r.model_file), work / f"ga{epochs}" / "group-a.onnx", 0.8708)
out = {"epochs": epochs, "train_s": round(train_s), "final_loss": r.final_loss, "diam_labels": r.diam_labels}
for name, seg in (("cellpose", load_segmenter(str(onnx), threads=2)), ("bundled-unet", load_segmenter("", threads=2, options=ServeOptions(0.8708)))):
    for g in ("B", "C"):
        sub = ds.select(groups[g]); t = time.perf_counter()
        scores = aggregate_scores([match_scores(lb, seg.segment(im)) for im, lb in zip(sub.images, sub.labels)])
        out[f"{name}/{g}"] = {"n_gt": scores["n_gt"], "n_pred": scores["n_pred"], **{f"{k}@{t}": round(v, 3) for t, d in scores["iou"].items() for k, v in d.items() if k in ("f1", "ap")}, "s_per_frame": round((time.perf_counter() - t) / len(sub), 2)}
    print(json.dumps(out), flush=True)
(work / f"groupout{epochs}.json").write_text(json.dumps(out, indent=1))
