"""Was the scratch Cellpose's low score on held-out wells its diameter? A model scored per well at its own
training cells' diameter and at the well's (the mean of its annotated cells' diameters, as Cellpose computes it).

    nice -n 10 python benchmarks/cellpose_diameter.py MODEL.onnx DATASET [GROUP ...]

DATASET: a `wellwatch dataset masks` of ../shared/data/usiigaci-phase; GROUPS default B C.
"""
import json, sys
import numpy as np
from cellpose import utils
from wellwatch.training.masks import load_mask_set
from wellwatch.training.seg_groups import usiigaci_groups, members
from wellwatch.training.cellpose_adapt import served_scores
from wellwatch.core.inference.backend import OnnxBackend
from pathlib import Path
root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "usiigaci-phase"
onnx, ds = sys.argv[1], load_mask_set(sys.argv[2])
groups = members(usiigaci_groups(root)[0])
own = OnnxBackend(onnx, device="cpu", warmup=False).contract.segmentation.postprocess["diam_labels"]
for g in sys.argv[3:] or ["B", "C"]:
    sub = ds.select(groups[g])
    well = float(np.mean([utils.diameters(lb)[0] for lb in sub.labels]))
    for label, diameter in (("model's own", own), ("the well's", well)):
        print(json.dumps({"group": g, "diameter": label, "px": round(diameter, 1),
                          **served_scores(onnx, sub, diameter, threads=2)}), flush=True)
