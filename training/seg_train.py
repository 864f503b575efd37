"""`wellwatch train --task segmentation`: a U-Net on images with label masks.

The network's input is made by the daemon's own functions (rescale to the model's pixel size,
block-mean reduction, the contract's normalisation, covering tiles, blending, watershed), so what
is scored here is what is served. Training samples random crops with the augmentations of
training/seg_augment.py ("microscope": scale 0.5-2x, illumination, halo, contrast, gamma, blur,
defocus, noise, rotations and flips; "basic": the first recipe). Every `eval_every` steps the
whole validation images are segmented and scored (F1 at IoU 0.5 and 0.75); the best weights are
kept. At the end the watershed's parameters are chosen on the validation images and written into
the contract, and the `test` images (a held-out acquisition group) are scored once.

`init` starts from a trained model (a .pt checkpoint, or an exported .onnx, see seg_init.py)
instead of random weights: fine-tuning on a lab's few annotated frames; its batch-norm statistics
are then kept fixed (a handful of crops would estimate them badly).
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wellwatch.core.contract import EmptyFilter, ModelContract, Normalisation, Segmentation, Tiling, file_sha256
from wellwatch.core.preprocess import normalise_frame
from wellwatch.core.segmentation.pixel_size import resize_labels, to_model_scale
from wellwatch.core.segmentation.maps import PostProcess, ServeOptions, downsample_mean, labels_from_served, serve_tiles

from .masks import MaskSet, load_mask_set
from .seg_checkpoint import SEG_CHECKPOINT_FORMAT
from .seg_augment import RECIPES, AugmentConfig, TrainImage, sample_crop
from .progress import Progress
from .seg_metrics import aggregate_scores, match_scores
from .seg_targets import class_map, distance_map, downsample_labels
from .unet import DISTANCE_MAP, SegmentationMaps, UNet
from .seg_init import load_initial_model

FREEZE = ("none", "encoder")
WATERSHED_CHOICES = ("validation", "train+validation", "keep")
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
    augment: str = "microscope"
    scale_min: float = 0.5
    scale_max: float = 2.0
    channel: str = "phase_contrast"
    seed: int = 0
    threads: int = 0
    name: str = "phase-segmentation"
    test: tuple[str, ...] = ()       # scored once at the end (a held-out group), never used to choose
    pixel_size_um: float = 0.0       # the dataset images' pixel size (0 = unknown)
    init: str = ""                   # start from this model (.pt or .onnx): fine-tuning
    tta: bool = False                # score with test-time augmentation
    groups: dict[str, str] = field(default_factory=dict)  # image -> acquisition group, for the record
    balance_groups: bool = False     # draw crops from each acquisition group equally often (needs groups)
    freeze: str = "none"             # "encoder": only the decoder learns (few-frame adaptation)
    watershed: str = "validation"    # chosen on: "validation", "train+validation" (more cells), or "keep" the
                                     # start's (with init)
    # leave-group-out scores of this recipe (benchmarks/seg_leave_group_out.py), carried into the contract
    leave_group_out: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.augment not in RECIPES:
            raise ValueError(f"augment {self.augment!r}; allowed: {', '.join(RECIPES)}")
        if self.watershed not in WATERSHED_CHOICES:
            raise ValueError(f"watershed {self.watershed!r}; allowed: {', '.join(WATERSHED_CHOICES)}")
        if self.freeze not in FREEZE:
            raise ValueError(f"freeze {self.freeze!r}; allowed: {', '.join(FREEZE)}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"scale range {self.scale_min}..{self.scale_max} must satisfy 0 < min <= max")


def segmentation_contract(cfg: SegTrainConfig, post: PostProcess, trained_on: dict | None = None,
                          metrics: dict | None = None, pixel_size_um: float | None = None) -> ModelContract:
    """`pixel_size_um`: the model's (default the training images' own)."""
    return ModelContract(
        name=cfg.name, task="segmentation", classes=("background", "cell"), positive_class="cell",
        output="probabilities", input_name="image", channels=(cfg.channel,), layout="NCHW",
        height=cfg.tile_size, width=cfg.tile_size, normalisation=cfg.normalisation,
        tiling=Tiling(cfg.tile_size, cfg.stride), empty_filter=EmptyFilter("none", {}),
        decision_threshold=post.foreground_threshold, trained_on=trained_on or {}, metrics=metrics or {},
        segmentation=Segmentation(downsample=cfg.downsample, postprocess=asdict(post),
                                  pixel_size_um=cfg.pixel_size_um if pixel_size_um is None else pixel_size_um))


def prepare(ds: MaskSet, contract: ModelContract, pixel_size_um: float = 0.0) -> list[TrainImage]:
    """Each image at model resolution, resampled to the model's pixel size as the daemon would."""
    f = contract.segmentation.downsample
    model_px = contract.segmentation.pixel_size_um
    out = []
    for image, labels in zip(ds.images, ds.labels):
        scaled = to_model_scale(image, pixel_size_um, model_px)
        if scaled is not image:
            labels = resize_labels(labels, scaled.shape)
        raw = downsample_mean(scaled, f)
        small = downsample_labels(labels, f)[:raw.shape[0], :raw.shape[1]]
        out.append(TrainImage(raw, normalise_frame(raw, contract.normalisation), small,
                              class_map(small), distance_map(small)))
    return out


def group_balanced_weights(names: list[str], groups: dict[str, str]) -> np.ndarray:
    """P(drawing each training image) such that every acquisition group is drawn equally often: a
    well with 23 frames must not teach the model its cells 10x as often as one with 2."""
    missing = [n for n in names if n not in groups]
    if missing:
        raise ValueError(f"balance_groups: no acquisition group for {', '.join(missing[:5])} "
                         f"(give --groups-from, or leave --balance-groups off)")
    count = Counter(groups[n] for n in names)
    w = np.array([1.0 / count[groups[n]] for n in names])
    return w / w.sum()


def sample_batch(images: list[TrainImage], cfg: SegTrainConfig, contract: ModelContract, rng: np.random.Generator,
                 weights: np.ndarray | None = None):
    aug = AugmentConfig(cfg.augment, cfg.scale_min, cfg.scale_max)
    xs, cs, ds = [], [], []
    for _ in range(cfg.batch_size):
        # unweighted draws keep their old random stream, so earlier recipes give the same models
        i = rng.integers(len(images)) if weights is None else rng.choice(len(images), p=weights)
        im = images[int(i)]
        x, c, d = sample_crop(im, cfg.crop, contract.normalisation, aug, rng)
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
def predict_tiles(model: nn.Module, frame: np.ndarray, contract: ModelContract, options: ServeOptions = ServeOptions(),
                  batch: int = 8):
    """Tile outputs (after activations) for one frame, and the tiles' origins, as the daemon makes them."""
    servable = SegmentationMaps(model).eval()
    tiles, origins = serve_tiles(frame, contract, options)
    outs = [servable(torch.from_numpy(tiles[i:i + batch])).numpy() for i in range(0, len(tiles), batch)]
    return np.concatenate(outs), origins


def score(model: nn.Module, ds: MaskSet, contract: ModelContract, posts: list[PostProcess],
          options: ServeOptions = ServeOptions()) -> list[dict]:
    """Aggregate scores on `ds` for each post-processing setting (the network runs once per image)."""
    outputs = [predict_tiles(model, image, contract, options) for image in ds.images]
    results = []
    for post in posts:
        per_image = [match_scores(gt, labels_from_served(out, origins, gt.shape, contract, options, post))
                     for (out, origins), gt in zip(outputs, ds.labels)]
        results.append(aggregate_scores(per_image))
    return results


def summarise(agg: dict, images: list[str]) -> dict:
    """Scores with their counts (so that folds can be pooled)."""
    out = {"images": images, "mean_abs_count_error": agg["mean_abs_count_error"]}
    for t, tag in ((0.5, "50"), (0.75, "75")):
        s = agg["iou"][t]
        out |= {f"f1_iou{tag}": s["f1"], f"ap_iou{tag}": s["ap"], f"tp_iou{tag}": s["tp"],
                f"fp_iou{tag}": s["fp"], f"fn_iou{tag}": s["fn"]}
    return out


def quality(agg: dict) -> float:
    """What model selection maximises: F1 at IoU 0.5 plus F1 at IoU 0.75."""
    return agg["iou"][0.5]["f1"] + agg["iou"][0.75]["f1"]


def postprocess_grid() -> list[PostProcess]:
    grid = itertools.product((0.4, 0.5, 0.6), (0.3, 0.45, 0.6, 0.75), ("distance", "interior"), (100, 300, 600))
    return [PostProcess(foreground_threshold=fg, seed_threshold=st, seeds=s, min_area=a)
            for fg, st, s, a in grid]


def _freeze_batchnorm(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def trainable_parameters(model: UNet, freeze: str) -> list[nn.Parameter]:
    """The parameters the optimiser moves; a frozen encoder keeps the features the start learned from
    many frames, so a few frames can only re-tune how they are read out."""
    if freeze == "encoder":
        for p in model.down.parameters():
            p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def train_segmentation(dataset: str | Path | MaskSet, out: str | Path, cfg: SegTrainConfig,
                       progress: bool = True) -> dict:
    """Train, select the best weights on validation, tune the watershed; write RUN/best.pt + summary.json.

    `dataset`: a `dataset masks` folder, or a MaskSet already in memory (its meta's "source" names it)."""
    report = Progress("train segmentation", progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ds = dataset if isinstance(dataset, MaskSet) else load_mask_set(dataset)
    source = ds.meta.get("source", "in memory") if isinstance(dataset, MaskSet) else str(dataset)
    train_set, val_set = ds.select(list(cfg.train)), ds.select(list(cfg.val))
    test_set = ds.select(list(cfg.test)) if cfg.test else None
    init_info = {}
    if cfg.init:
        model, init_contract = load_initial_model(cfg.init)
        # the network's input must be made as it was made for the weights: keep its preprocessing
        cfg = replace(cfg, normalisation=init_contract.normalisation, downsample=init_contract.segmentation.downsample,
                      tile_size=init_contract.tiling.tile_size, stride=init_contract.tiling.stride,
                      base=model.base, depth=model.depth)
        # a model that does not record its pixel size takes the training images' (--pixel-size)
        model_px = init_contract.segmentation.pixel_size_um or cfg.pixel_size_um
        before = PostProcess.from_contract(init_contract.segmentation)
        init_info = {"init": str(cfg.init), "init_name": init_contract.name, "init_sha256": _sha256(cfg.init)}
    else:
        model, model_px, before = UNet(1, cfg.base, cfg.depth), cfg.pixel_size_um, PostProcess()
    # frames of the dataset are resampled from its pixel size to the model's, in training and scoring
    options = ServeOptions(frame_pixel_size_um=cfg.pixel_size_um, tta=cfg.tta)
    contract = segmentation_contract(cfg, before, pixel_size_um=model_px)
    images = prepare(train_set, contract, cfg.pixel_size_um)
    weights = group_balanced_weights(train_set.names, cfg.groups) if cfg.balance_groups else None
    if min(min(im.raw.shape) for im in images) < cfg.crop:
        raise ValueError(f"crop {cfg.crop} is larger than a training image at model resolution "
                         f"({min(min(im.raw.shape) for im in images)} px): give a smaller --crop")
    if cfg.init:
        model.eval()
        start = score(model, val_set, contract, [before], options)[0]
        init_info["validation_before"] = summarise(start, list(cfg.val))
        if test_set is not None:
            init_info["test_before"] = summarise(score(model, test_set, contract, [before], options)[0], list(cfg.test))
        report.line(f"{cfg.init} before fine-tuning: validation F1@0.5 {start['iou'][0.5]['f1']:.3f} "
            f"F1@0.75 {start['iou'][0.75]['f1']:.3f}")
    loss_fn = SegLoss()
    opt = torch.optim.AdamW(trainable_parameters(model, cfg.freeze), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    history, best, best_state, best_step = [], -1.0, None, 0
    if cfg.init:  # fine-tuning must beat the model it starts from, or the start is kept
        best, best_state = quality(start), {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append({"step": 0, "loss": float("nan"), "val_f1_50": start["iou"][0.5]["f1"],
                        "val_f1_75": start["iou"][0.75]["f1"], "seconds": 0.0})
    t0, running = time.time(), None
    for step in range(1, cfg.steps + 1):
        model.train()
        if cfg.init:
            _freeze_batchnorm(model)
        x, c, d = sample_batch(images, cfg, contract, rng, weights)
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
            agg = score(model, val_set, contract, [before], options)[0]
            q = quality(agg)
            history.append({"step": step, "loss": running, "val_f1_50": agg["iou"][0.5]["f1"],
                            "val_f1_75": agg["iou"][0.75]["f1"], "seconds": time.time() - t0})
            report.line(f"step {step}: validation F1@0.5 {agg['iou'][0.5]['f1']:.3f} "
                f"F1@0.75 {agg['iou'][0.75]['f1']:.3f}" + (" (best so far)" if q > best else ""))
            if q > best:
                best, best_step = q, step
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                # kept on disk as it improves, so an interrupted run still leaves its best weights
                save_seg_checkpoint(out / "best.pt", model, cfg, contract, history)
    train_seconds = time.time() - t0
    model.load_state_dict(best_state)
    model.eval()
    keep = cfg.init and cfg.watershed == "keep"
    report.line("keeping the start's watershed" if keep
                else f"choosing the watershed's parameters on the {cfg.watershed} images")
    grid = [before] if keep else postprocess_grid() + ([before] if cfg.init else [])
    results = score(model, val_set, contract, grid, options)
    if cfg.watershed == "train+validation":  # the choice from all annotated cells; the figures stay validation's
        on_train = score(model, train_set, contract, grid, options)
        i = int(np.argmax([quality(r) + quality(t) for r, t in zip(results, on_train)]))
    else:
        i = int(np.argmax([quality(r) for r in results]))
    post, val = grid[i], results[i]
    report.line(f"best post-processing {asdict(post)}: validation F1@0.5 "
        f"{val['iou'][0.5]['f1']:.3f} F1@0.75 {val['iou'][0.75]['f1']:.3f}")
    metrics = {"validation": summarise(val, list(cfg.val))}
    if test_set is not None:
        test = score(model, test_set, contract, [post], options)[0]
        metrics["test"] = summarise(test, list(cfg.test))
        report.line(f"held-out test images {list(cfg.test)}: F1@0.5 {test['iou'][0.5]['f1']:.3f} "
            f"F1@0.75 {test['iou'][0.75]['f1']:.3f} AP@0.5 {test['iou'][0.5]['ap']:.3f}")
    if init_info:
        metrics["fine_tuning"] = {**init_info, "train_seconds": round(train_seconds, 1)}
    if cfg.leave_group_out:
        metrics["leave_group_out"] = cfg.leave_group_out
    trained_on = {"dataset": source, "images": list(cfg.train), "validation": list(cfg.val),
                  "test": list(cfg.test), "groups": dict(cfg.groups),
                  "provenance": ds.meta.get("provenance", {}).get("images", [])[:1] and "see dataset.json",
                  "steps": cfg.steps, "train_seconds": round(train_seconds, 1), **init_info,
                  "config": {k: v for k, v in asdict(cfg).items() if k not in ("train", "val", "test", "groups", "leave_group_out")}}
    contract = segmentation_contract(cfg, post, trained_on, metrics, pixel_size_um=model_px)
    save_seg_checkpoint(out / "best.pt", model, cfg, contract, history)
    summary = {"task": "segmentation", "metrics": metrics, "postprocess": asdict(post), "history": history,
               "best_step": best_step,
               "train_seconds": train_seconds, "steps": cfg.steps, "config": trained_on["config"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    plot_history(history, out / "history.png")
    return summary


def _sha256(path: str) -> str:
    return file_sha256(path)


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
