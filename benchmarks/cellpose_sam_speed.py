"""Compute cost of Cellpose-SAM (cellpose 4.x CPSAM) forward passes on this CPU.

RANDOMLY INITIALISED WEIGHTS: the pretrained weights (cpsam / cpsam_v2 and
sam_vit_l_0b3195.pth) cannot be downloaded here. The network is built with the
exact class and constructor that cellpose.models.CellposeModel uses
(cellpose.vit.CPSAM(dtype=...), which calls
segment_anything.sam_model_registry["vit_l"](None) -> checkpoint=None -> no
weight file is read or downloaded). CellposeModel.__init__ would then call
net.load_model(path), which (for bf16) casts the whole module with
.to(bfloat16); we do the same cast but load no state dict. Forward-pass cost
does not depend on the weight values.

Needs cellpose 4 (not the project's pinned 3.1.1.2), so a separate environment:
    python3 -m venv /tmp/cpsam && /tmp/cpsam/bin/pip install torch==2.14.1 torchvision==0.29.1 cellpose==4.2.1.1
    nice -n 10 /tmp/cpsam/bin/python benchmarks/cellpose_sam_speed.py

Usage: nice -n 10 python cellpose_sam_speed.py [--budget-cpu-s 260] [--plan dtype:threads:batch:warmups:runs,...]
bf16 is CellposeModel's default (use_bfloat16=True, also on CPU); fp32 is what an fp32 ONNX export would run.
"""
import argparse, os, resource, subprocess, sys, time, statistics, json

import numpy as np
import torch

from cellpose import vit, transforms
from importlib.metadata import version as pkgver


def loadavg():
    return open("/proc/loadavg").read().split()[:3]


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def build(dtype):
    # exactly what CellposeModel.__init__ does for backbone "sam_vitl", minus the state dict
    net = vit.CPSAM(dtype=dtype)
    if dtype != torch.float32:
        net = net.to(dtype)       # BaseModel.load_model: `self = self.to(self.dtype)`
    net.eval()
    return net


def tiles_per_frame(Ly=1024, Lx=1024, bsize=256, tile_overlap=0.1, rescale=1.0):
    # replicate cellpose.core.run_net's padding + transforms.make_tiles (augment=False)
    Lyr, Lxr = int(Ly * rescale), int(Lx * rescale)
    ypad1, ypad2, xpad1, xpad2 = transforms.get_pad_yx(Lyr, Lxr, min_size=(bsize, bsize))
    img = np.zeros((3, Lyr + ypad1 + ypad2, Lxr + xpad1 + xpad2), np.float32)
    IMG, ysub, xsub, _, _ = transforms.make_tiles(img, bsize=bsize, augment=False,
                                                  tile_overlap=tile_overlap)
    return IMG.shape[0] * IMG.shape[1], img.shape[1:], IMG.shape[:2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-cpu-s", type=float, default=260.0,
                    help="stop starting new timed runs once process CPU time exceeds this")
    ap.add_argument("--plan", default="fp32:1:1:1:3,fp32:2:1:1:3,bf16:1:1:1:3,bf16:2:1:1:3,bf16:1:8:0:1,bf16:2:8:0:1",
                    help="comma list of dtype:threads:batch:warmups:timed_runs")
    ap.add_argument("--flops-only", action="store_true",
                    help="count FLOPs of one 256x256 tile on the meta device (no compute) and exit")
    a = ap.parse_args()
    if a.flops_only:
        from torch.utils.flop_counter import FlopCounterMode
        with torch.device("meta"):
            net = vit.CPSAM(dtype=torch.float32).eval()
            x = torch.randn(1, 3, 256, 256)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            net(x)
        print(f"FLOPs per 256x256 tile (torch.utils.flop_counter, matmul/conv only, meta device): "
              f"{fc.get_total_flops()/1e9:.0f} GFLOP; x25 tiles = {25*fc.get_total_flops()/1e12:.1f} TFLOP per 1024x1024 frame")
        return

    torch.manual_seed(0)
    print("# Cellpose-SAM CPU forward cost -- RANDOMLY INITIALISED WEIGHTS (architecture real, weights not)")
    print(f"python {sys.version.split()[0]}  torch {torch.__version__}  cellpose {pkgver('cellpose')}"
          f"  segment_anything {pkgver('segment_anything')}  torchvision {pkgver('torchvision')}")
    print(f"torch.backends.mkldnn available={torch.backends.mkldnn.is_available()}  cpu capability={torch.backends.cpu.get_cpu_capability()}")
    print(f"nice={os.nice(0)}  uptime at start: {uptime()}")

    bsize = 256  # CellposeModel._run_net: bsize = 256 if backbone == "sam_vitl" (eval refuses any other)
    nt, padded, grid = tiles_per_frame(bsize=bsize)
    print(f"tiling: 1024x1024 frame, rescale=1.0 (diameter=None), tile_overlap=0.1, bsize={bsize}: "
          f"padded to {padded}, grid {grid} -> {nt} tiles/frame")
    for diam in (15, 20):
        n2, p2, g2 = tiles_per_frame(bsize=bsize, rescale=30.0 / diam)
        print(f"  (for reference, diameter={diam} -> rescale {30.0/diam:.2f}: padded {p2}, grid {g2} -> {n2} tiles)")

    # plan entries: dtype:threads:batch:warmups:timed_runs (run in this order)
    plan = [tuple(e.split(":")) for e in a.plan.split(",")]
    results = []
    net, net_dtype = None, None
    first = True
    for dname, nthr, bs, nwarm, nruns in plan:
        nthr, bs, nwarm, nruns = int(nthr), int(bs), int(nwarm), int(nruns)
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dname]
        if net_dtype != dname:
            net = None
            c0 = cpu_s()
            net = build(dtype); net_dtype = dname
            print(f"\n## dtype {dname}: built CPSAM in {cpu_s()-c0:.1f} CPU-s; peak RSS so far {peak_rss_mb():.0f} MB")
            if first:
                first = False
                n_all = sum(p.numel() for p in net.parameters())
                n_tr = sum(p.numel() for p in net.parameters() if p.requires_grad)
                n_enc = sum(p.numel() for p in net.encoder.parameters())
                print(f"params: total {n_all:,} (trainable {n_tr:,}; SAM ViT-L image encoder {n_enc:,}; "
                      f"readout conv {sum(p.numel() for p in net.out.parameters()):,}; fixed W2 {net.W2.numel():,}; "
                      f"blocks {len(net.encoder.blocks)}, embed {net.encoder.patch_embed.proj.out_channels}, "
                      f"patch {net.ps}, tokens/tile {(bsize//net.ps)**2}, window_size {sorted(set(b.window_size for b in net.encoder.blocks))} (0 = global attn in every block)")
        torch.set_num_threads(nthr)
        x = torch.randn(bs, 3, bsize, bsize).to(dtype)
        la0 = loadavg(); c_start = cpu_s()
        print(f"-- {dname} threads={nthr} batch={bs} warm-ups={nwarm} timed={nruns}; uptime: {uptime()}", flush=True)
        if c_start > a.budget_cpu_s:
            print(f"SKIP {dname} threads={nthr} batch={bs}: CPU budget used ({c_start:.0f} s)")
            results.append(dict(dtype=dname, threads=nthr, batch=bs, skipped=True))
            continue
        walls, cpus = [], []
        for r in range(nwarm + nruns):
            if r >= nwarm and r > 0 and cpu_s() > a.budget_cpu_s:
                print(f"  budget reached after {len(walls)} timed runs")
                break
            t0 = time.perf_counter(); cc = cpu_s()
            with torch.no_grad():
                y, style = net(x)
            w = time.perf_counter() - t0; c = cpu_s() - cc
            tag = "warm-up" if r < nwarm else f"run {r - nwarm + 1}"
            print(f"  {dname} thr={nthr} b={bs} {tag}: wall {w:.2f} s ({w/bs:.2f} s/tile), "
                  f"CPU {c:.2f} s ({c/bs:.2f} CPU-s/tile), load {loadavg()}", flush=True)
            if r >= nwarm:
                walls.append(w); cpus.append(c)
        assert tuple(y.shape) == (bs, 3, bsize, bsize), y.shape
        la1 = loadavg()
        res = dict(dtype=dname, threads=nthr, batch=bs, n_warm=nwarm, n_timed=len(walls),
                   wall_s_per_tile=(statistics.median(walls) / bs) if walls else None,
                   cpu_s_per_tile=(statistics.median(cpus) / bs) if cpus else None,
                   load_before=la0, load_after=la1, peak_rss_mb=round(peak_rss_mb()))
        results.append(res)
        print(f"   after: uptime: {uptime()}")
        print("  ->", json.dumps(res), flush=True)
    net = None

    print(f"\n## summary (median over timed runs; {nt} tiles per 1024x1024 frame; RANDOM WEIGHTS)")
    print("dtype threads batch warm/timed  wall_s/tile  wall_s/frame  cpu_s/tile  load_before -> load_after  peakRSS_MB")
    for r in results:
        if r.get("skipped") or r["wall_s_per_tile"] is None:
            print(f"{r['dtype']:5} {r['threads']:7} {r['batch']:5}  not measured (CPU budget)")
            continue
        print(f"{r['dtype']:5} {r['threads']:7} {r['batch']:5} {r['n_warm']:5}/{r['n_timed']:<5} {r['wall_s_per_tile']:12.2f} "
              f"{r['wall_s_per_tile']*nt:13.1f} {r['cpu_s_per_tile']:11.2f}  {' '.join(r['load_before'])} -> "
              f"{' '.join(r['load_after'])}  {r['peak_rss_mb']}")
    print(f"total process CPU time {cpu_s():.0f} s; peak RSS {peak_rss_mb():.0f} MB; uptime at end: {uptime()}")


if __name__ == "__main__":
    main()
