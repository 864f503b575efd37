"""`wellwatch train --task segmentation`: a U-Net on images with label masks.

The network's input is made by the daemon's own functions (block-mean reduction, the contract's
normalisation, covering tiles, blending, watershed), so what is scored here is what is served.
Training samples random crops with microscopy augmentations (90-degree rotations and flips,
intensity gain/offset, gamma, blur, noise). Every `eval_every` steps the whole validation images
are segmented and scored (F1 at IoU 0.5 and 0.75); the best weights are kept. At the end the
watershed's parameters are chosen on the validation images and written into the contract.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn

from wellwatch.daemon.contract import EmptyFilter, ModelContract, Normalisation, Segmentation, Tiling
from wellwatch.daemon.segment_maps import (PostProcess, labels_from_tile_outputs, model_input, seg_tiles)

from .masks import MaskSet, load_mask_set
from .progress import Progress
from .seg_metrics import aggregate_scores, match_scores
from .seg_targets import targets
from .unet import DISTANCE_MAP, SegmentationMaps, UNet

SEG_CHECKPOINT_FORMAT = 1
CLASS_WEIGHTS = (1.0, 1.0, 3.0)  # boundary pixels are few and decide where touching cells part
DISTANCE_WEIGHT = 4.0


@dataclass(frozen=True)
class SegTrainConfig:
    train: tuple[str, ...]
    val: tuple[str, ...]
    base: int = 16
    depth: int = 4
    downsample: int = 2
    crop: int = 192
    batch_size: int = 8
    steps: int = 1200
    lr: float = 3e-3
    weight_decay: float = 1e-4
    eval_every: int = 150
    tile_size: int = 288
    stride: int = 224
    normalisation: Normalisation = field(default_factory=lambda: Normalisation("percentile", {"low": 1.0, "high": 99.0}))
    channel: str = "phase_contrast"
    seed: int = 0
    threads: int = 0
    name: str = "phase-segmentation"


def segmentation_contract(cfg: SegTrainConfig, post: PostProcess, trained_on: dict | None = None,
                          metrics: dict | None = None) -> ModelContract:
    return ModelContract(
        name=cfg.name, task="segmentation", classes=("background", "cell"), positive_class="cell",
        output="probabilities", input_name="image", channels=(cfg.channel,), layout="NCHW",
        height=cfg.tile_size, width=cfg.tile_size, normalisation=cfg.normalisation,
        tiling=Tiling(cfg.tile_size, cfg.stride), empty_filter=EmptyFilter("none", {}),
        decision_threshold=post.foreground_threshold, trained_on=trained_on or {}, metrics=metrics or {},
        segmentation=Segmentation(downsample=cfg.downsample, postprocess=asdict(post)))


@dataclass
class Prepared:
    """One image at model resolution: network input, class map, distance map."""
    x: np.ndarray
    classes: np.ndarray
    distance: np.ndarray


def prepare(ds: MaskSet, contract: ModelContract) -> list[Prepared]:
    f = contract.segmentation.downsample
    out = []
    for image, labels in zip(ds.images, ds.labels):
        x = model_input(image, contract)
        classes, distance = targets(labels, f)
        out.append(Prepared(x, classes[:x.shape[0], :x.shape[1]], distance[:x.shape[0], :x.shape[1]]))
    return out


def augment(x: np.ndarray, c: np.ndarray, d: np.ndarray, rng: np.random.Generator):
    """Geometry (applied to input and targets alike), then intensity (input only)."""
    k = int(rng.integers(4))
    x, c, d = np.rot90(x, k), np.rot90(c, k), np.rot90(d, k)
    if rng.random() < 0.5:
        x, c, d = x[:, ::-1], c[:, ::-1], d[:, ::-1]
    x = x * rng.uniform(0.75, 1.33) + rng.uniform(-0.15, 0.15)
    gamma = rng.uniform(0.7, 1.4)
    x = np.where(x > 0, np.abs(x) ** gamma, x)
    if rng.random() < 0.3:
        x = ndi.gaussian_filter(x, rng.uniform(0.3, 1.2))
    if rng.random() < 0.5:
        x = x + rng.normal(0, rng.uniform(0.005, 0.05), x.shape)
    return (np.ascontiguousarray(x, np.float32), np.ascontiguousarray(c), np.ascontiguousarray(d, np.float32))


def sample_batch(images: list[Prepared], cfg: SegTrainConfig, rng: np.random.Generator):
    xs, cs, ds = [], [], []
    for _ in range(cfg.batch_size):
        im = images[int(rng.integers(len(images)))]
        h, w = im.x.shape
        y0, x0 = int(rng.integers(h - cfg.crop + 1)), int(rng.integers(w - cfg.crop + 1))
        win = (slice(y0, y0 + cfg.crop), slice(x0, x0 + cfg.crop))
        x, c, d = augment(im.x[win], im.classes[win], im.distance[win], rng)
        xs.append(x), cs.append(c), ds.append(d)
    return (torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(cs)),
            torch.from_numpy(np.stack(ds)[:, None]))


class SegLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.ce = nn.CrossEntropyLoss(weight=torch.tensor(CLASS_WEIGHTS))

    def forward(self, raw: torch.Tensor, classes: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        mse = ((torch.sigmoid(raw[:, DISTANCE_MAP:]) - distance) ** 2).mean()
        return self.ce(raw[:, :DISTANCE_MAP], classes) + DISTANCE_WEIGHT * mse


@torch.no_grad()
def predict_tiles(model: nn.Module, frame: np.ndarray, contract: ModelContract, batch: int = 8):
    """Tile outputs (after activations) for one frame, and the tiles' origins."""
    servable = SegmentationMaps(model).eval()
    tiles, origins = seg_tiles(model_input(frame, contract), contract.tiling)
    outs = [servable(torch.from_numpy(tiles[i:i + batch])).numpy() for i in range(0, len(tiles), batch)]
    return np.concatenate(outs), origins


def score(model: nn.Module, ds: MaskSet, contract: ModelContract, posts: list[PostProcess]) -> list[dict]:
    """Aggregate scores on `ds` for each post-processing setting (the network runs once per image)."""
    outputs = [predict_tiles(model, image, contract) for image in ds.images]
    results = []
    for post in posts:
        per_image = [match_scores(gt, labels_from_tile_outputs(out, origins, gt.shape, contract, post))
                     for (out, origins), gt in zip(outputs, ds.labels)]
        results.append(aggregate_scores(per_image))
    return results


def quality(agg: dict) -> float:
    """What model selection maximises: F1 at IoU 0.5 plus F1 at IoU 0.75."""
    return agg["iou"][0.5]["f1"] + agg["iou"][0.75]["f1"]


def postprocess_grid() -> list[PostProcess]:
    grid = itertools.product((0.4, 0.5, 0.6), (0.3, 0.45, 0.6, 0.75), ("distance", "interior"), (100, 300, 600))
    return [PostProcess(foreground_threshold=fg, seed_threshold=st, seeds=s, min_area=a)
            for fg, st, s, a in grid]


def train_segmentation(dataset: str | Path, out: str | Path, cfg: SegTrainConfig, progress: bool = True) -> dict:
    """Train, select the best weights on validation, tune the watershed; write RUN/best.pt + summary.json."""
    report = Progress("train segmentation", progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ds = load_mask_set(dataset)
    train_set, val_set = ds.select(list(cfg.train)), ds.select(list(cfg.val))
    contract = segmentation_contract(cfg, PostProcess())
    images = prepare(train_set, contract)
    if min(min(im.x.shape) for im in images) < cfg.crop:
        raise ValueError(f"crop {cfg.crop} is larger than a training image at model resolution")
    model = UNet(1, cfg.base, cfg.depth)
    loss_fn = SegLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    history, best, best_state = [], -1.0, None
    t0, running = time.time(), None
    for step in range(1, cfg.steps + 1):
        model.train()
        x, c, d = sample_batch(images, cfg, rng)
        loss = loss_fn(model(x), c, d)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 10 == 0:
            report.update(f"step {step}/{cfg.steps} loss {running:.4f} {(time.time() - t0) / step:.2f} s/step")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            agg = score(model, val_set, contract, [PostProcess()])[0]
            q = quality(agg)
            history.append({"step": step, "loss": running, "val_f1_50": agg["iou"][0.5]["f1"],
                            "val_f1_75": agg["iou"][0.75]["f1"], "seconds": time.time() - t0})
            report.line(f"step {step}: validation F1@0.5 {agg['iou'][0.5]['f1']:.3f} "
                f"F1@0.75 {agg['iou'][0.75]['f1']:.3f}" + (" (best so far)" if q > best else ""))
            if q > best:
                best, best_state = q, {k: v.detach().clone() for k, v in model.state_dict().items()}
                # kept on disk as it improves, so an interrupted run still leaves its best weights
                save_seg_checkpoint(out / "best.pt", model, cfg, contract, history)
    train_seconds = time.time() - t0
    model.load_state_dict(best_state)
    model.eval()
    report.line("choosing the watershed's parameters on the validation images")
    grid = postprocess_grid()
    results = score(model, val_set, contract, grid)
    i = int(np.argmax([quality(r) for r in results]))
    post, val = grid[i], results[i]
    report.line(f"best post-processing {asdict(post)}: validation F1@0.5 "
        f"{val['iou'][0.5]['f1']:.3f} F1@0.75 {val['iou'][0.75]['f1']:.3f}")
    metrics = {"validation": {"images": list(cfg.val), "f1_iou50": val["iou"][0.5]["f1"],
                              "f1_iou75": val["iou"][0.75]["f1"], "ap_iou50": val["iou"][0.5]["ap"],
                              "ap_iou75": val["iou"][0.75]["ap"],
                              "mean_abs_count_error": val["mean_abs_count_error"]}}
    trained_on = {"dataset": str(dataset), "images": list(cfg.train), "validation": list(cfg.val),
                  "provenance": ds.meta.get("provenance", {}).get("images", [])[:1] and "see dataset.json",
                  "steps": cfg.steps, "train_seconds": round(train_seconds, 1),
                  "config": {k: v for k, v in asdict(cfg).items() if k not in ("train", "val")}}
    contract = replace(segmentation_contract(cfg, post, trained_on, metrics))
    save_seg_checkpoint(out / "best.pt", model, cfg, contract, history)
    summary = {"task": "segmentation", "metrics": metrics, "postprocess": asdict(post), "history": history,
               "train_seconds": train_seconds, "steps": cfg.steps}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    plot_history(history, out / "history.png")
    return summary


def plot_history(history: list[dict], path: Path) -> None:
    """Training loss and validation F1 (IoU 0.5 and 0.75) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(steps, [h["loss"] for h in history], "o-")
    a.set(xlabel="step", ylabel="training loss (running mean)")
    b.plot(steps, [h["val_f1_50"] for h in history], "o-", label="F1 @ IoU 0.5")
    b.plot(steps, [h["val_f1_75"] for h in history], "s-", label="F1 @ IoU 0.75")
    b.set(xlabel="step", ylabel="validation F1", ylim=(0, 1))
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_seg_checkpoint(path: Path, model: nn.Module, cfg: SegTrainConfig, contract: ModelContract,
                        history: list) -> Path:
    torch.save({"format": SEG_CHECKPOINT_FORMAT, "arch": "unet", "task": "segmentation",
                "arch_params": {"base": cfg.base, "depth": cfg.depth}, "in_channels": 1,
                "state_dict": model.state_dict(), "contract": json.loads(contract.to_json()),
                "metrics": contract.metrics, "history": {"evaluations": history}}, path)
    return path


def load_seg_checkpoint(path: str | Path) -> tuple[nn.Module, ModelContract, dict]:
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("task") != "segmentation":
        raise ValueError(f"{path}: not a wellwatch segmentation checkpoint")
    contract = ModelContract.from_dict(data["contract"], str(path))
    model = UNet(data["in_channels"], **data["arch_params"])
    model.load_state_dict(data["state_dict"])
    return model.eval(), contract, data
