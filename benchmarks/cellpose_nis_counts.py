"""Cells per NIS time-lapse frame: a served Cellpose model beside the bundled segmenter (the daemon's code).

    nice -n 10 python benchmarks/cellpose_nis_counts.py MODEL.onnx
"""
import sys, time, json
from pathlib import Path
from wellwatch.core.segmentation.segmenters import load_segmenter
from wellwatch.core.segmentation.maps import ServeOptions
from wellwatch.core.files.tiff import read_frame
cp = load_segmenter(sys.argv[1], threads=2, options=ServeOptions(0.8708))
unet = load_segmenter("", threads=2, options=ServeOptions(0.8708))
rows = []
for f in sorted((Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nis-timelapse").glob("*.tif")):
    im = read_frame(str(f)); t = time.perf_counter(); a = int(cp.segment(im).max()); t1 = time.perf_counter(); b = int(unet.segment(im).max()); t2 = time.perf_counter()
    rows.append({"frame": f.name, "cellpose": a, "bundled": b, "cellpose_s": round(t1 - t, 2), "bundled_s": round(t2 - t1, 2)})
    print(json.dumps(rows[-1]), flush=True)
