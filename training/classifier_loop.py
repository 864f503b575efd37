"""Training loop: weighted sampling, 90-degree rotations and flips, Adam, early stopping.

Defaults per architecture come from the seed studies (`seed_defaults`): the torchvision networks
use the live/dead study's Adam (lr 1e-5, betas (0.5, 0.999), weight decay 1e-5, batch 4, 30
epochs); `ogawa` uses the cell-type study's (lr 1e-4, batch 32, at most 30 epochs, patience 5).
`TrainConfig()` itself keeps the demo model's defaults.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from .models import build_model
from .progress import Progress
from .scores import roc_auc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "tiny"
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-5
    patience: int = 4
    seed: int = 0
    steps_per_epoch: int = 0  # 0: one pass worth of samples
    pretrained: str | None = None
    device: str = "auto"      # auto: cuda when there is one, else cpu
    progress: bool = False    # print a progress line per epoch (and a running one on a terminal)
    label_smoothing: float = 0.0  # hand-drawn labels hold errors: soften the targets this much
    photometric: bool = False     # + random brightness, contrast and blur per sample
    schedule: str = "constant"    # or "cosine": learning rate falls to 0 over the epochs


SEED_DEFAULTS = {
    # Pattarone et al. 2021 (live/dead): Adam lr 1e-5, betas (0.5, 0.999), wd 1e-5, batch 4, 30 epochs.
    "pattarone": dict(epochs=30, batch_size=4, lr=1e-5, betas=(0.5, 0.999), weight_decay=1e-5, patience=5),
    # Ogawa et al. (cell type): Adam lr 1e-4, batch 32, early stopping patience 5, at most 30 epochs.
    "ogawa": dict(epochs=30, batch_size=32, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0, patience=5),
    "tiny": dict(epochs=12, batch_size=64, lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-5, patience=4),
    # cropnet (LDC live/dead crops), chosen by 5-fold CV by image group (docs/models/training.md): a fixed
    # cosine schedule and the last epoch's weights (patience 0), because a 10% validation split of a
    # few hundred crops is too noisy to stop on; photometric augmentation and label smoothing.
    "cropnet": dict(epochs=20, batch_size=64, lr=2e-3, betas=(0.9, 0.999), weight_decay=1e-4, patience=0,
                    label_smoothing=0.1, photometric=True, schedule="cosine"),
}


def seed_defaults(arch: str, **overrides) -> TrainConfig:
    """The seed study's hyperparameters for `arch`, with explicit overrides (None = keep the default)."""
    key = {"ogawa": "ogawa", "tiny": "tiny", "cropnet": "cropnet", "cropnet8": "cropnet"}.get(arch, "pattarone")
    base = SEED_DEFAULTS[key]
    cfg = TrainConfig(arch=arch, **base)
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0
    val_auc: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    device: str = "cpu"


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random one of the 8 rotations-by-90-degrees and flips, drawn per sample (cells have no up)."""
    ops = torch.randint(0, 8, (len(x),), generator=generator).to(x.device)
    out = torch.empty_like(x)
    for op in range(8):
        sel = ops == op
        if not bool(sel.any()):
            continue
        v = torch.rot90(x[sel], op % 4, dims=(2, 3))
        out[sel] = torch.flip(v, dims=(3,)) if op >= 4 else v
    return out


def photometric(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per sample: contrast x exp(N(0, 0.2)), brightness + N(0, 0.2) (in the normalised image's units:
    illumination and exposure differ between images more than robust z-scoring removes inside a crop),
    and a Gaussian blur (sigma 0.5-1.2 px, 5x5 kernel) on 30% of them (focus varies)."""
    n = len(x)
    gain = torch.exp(0.2 * torch.randn(n, 1, 1, 1, generator=generator))
    shift = 0.2 * torch.randn(n, 1, 1, 1, generator=generator)
    out = x * gain + shift
    blur = torch.rand(n, generator=generator) < 0.3
    if bool(blur.any()):
        sigma = 0.5 + 0.7 * torch.rand(int(blur.sum()), generator=generator)
        r = torch.arange(-2, 3, dtype=x.dtype)
        k1 = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
        k1 = k1 / k1.sum(1, keepdim=True)
        kernels = (k1[:, :, None] * k1[:, None, :])[:, None]  # (m, 1, 5, 5)
        sel = out[blur]
        m, c, h, w = sel.shape
        padded = torch.nn.functional.pad(sel.reshape(1, m * c, h, w), (2, 2, 2, 2), mode="reflect")
        blurred = torch.nn.functional.conv2d(padded, kernels.repeat_interleave(c, 0), groups=m * c)
        out[blur] = blurred.reshape(m, c, h, w)
    return out


def sampling_weights(y: np.ndarray, classes: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Inverse class counts (the seed study's weighted sampler); with `groups`, inverse counts of each
    (group, class), so every group (e.g. an experiment) weighs the same and is class-balanced within:
    a model then cannot learn "this experiment is mostly dead" instead of what a dead cell looks like."""
    if groups is None:
        counts = np.bincount(y, minlength=classes).astype(np.float64)
        return 1.0 / np.maximum(counts, 1)[y]
    _, gi = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    key = gi * classes + y
    counts = np.bincount(key, minlength=(gi.max() + 1) * classes).astype(np.float64)
    return 1.0 / counts[key]


def train_classifier(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                     cfg: TrainConfig, classes: int = 2,
                     groups_train: np.ndarray | None = None,
                     init_state: dict | None = None) -> tuple[nn.Module, History]:
    """`groups_train`: with it, sampling balances classes within each group (`sampling_weights`);
    `init_state`: start from these weights (a previous model of the same arch) instead of scratch."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model = build_model(cfg.arch, x_train.shape[1], classes, input_size=x_train.shape[-1],
                        pretrained=cfg.pretrained)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()  # validation: the plain loss, comparable across settings
    train_loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    xv, yv = torch.from_numpy(x_val), torch.from_numpy(y_val).long()
    weights = torch.from_numpy(sampling_weights(y_train, classes, groups_train))
    steps = cfg.steps_per_epoch or max(1, len(xt) // cfg.batch_size)
    if cfg.schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule {cfg.schedule!r}; allowed: constant, cosine")
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=cfg.epochs * steps)
                 if cfg.schedule == "cosine" else None)
    history, best_state, best_loss, stale = History(device=str(device)), None, float("inf"), 0
    t0 = time.perf_counter()
    report = Progress("train", cfg.progress)
    for epoch in range(cfg.epochs):
        te = time.perf_counter()
        model.train()
        idx = torch.multinomial(weights, steps * cfg.batch_size, replacement=True, generator=generator)
        losses = []
        for step in range(steps):
            b = idx[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            xb = augment(xt[b], generator)
            if cfg.photometric:
                xb = photometric(xb, generator)
            xb = xb.to(device)
            optimiser.zero_grad()
            loss = train_loss_fn(model(xb), yt[b].to(device))
            loss.backward()
            optimiser.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.item())
            if step % 10 == 0 or step == steps - 1:
                report.update(f"epoch {epoch + 1}/{cfg.epochs} {_bar((step + 1) / steps)} {step + 1}/{steps} "
                              f"loss {np.mean(losses):.4f}")
        val_loss, val_p = evaluate_loss(model, xv, yv, loss_fn, device)
        history.train_loss.append(float(np.mean(losses)))
        history.val_loss.append(val_loss)
        auc = roc_auc(y_val == classes - 1, val_p[:, -1]) if len(y_val) else float("nan")
        history.val_auc.append(float(auc))
        history.epoch_seconds.append(time.perf_counter() - te)
        # patience 0: no early stopping, the last epoch's weights are kept (a schedule's end point)
        improved = val_loss < best_loss if cfg.patience else epoch == cfg.epochs - 1
        line = (f"epoch {epoch + 1:>3}/{cfg.epochs} {_bar((epoch + 1) / cfg.epochs)} train loss {history.train_loss[-1]:.4f}"
                f"  val loss {val_loss:.4f}  val auc {auc:.4f}  {history.epoch_seconds[-1]:.1f} s"
                f" (total {time.perf_counter() - t0:.0f} s){'  *best' if improved else ''}")
        report.line(line)
        if improved:
            best_loss, best_state, stale, history.best_epoch = val_loss, copy.deepcopy(model.state_dict()), 0, epoch
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                msg = f"early stop: no validation improvement for {cfg.patience} epochs (best epoch {history.best_epoch + 1})"
                report.line(msg)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    model.to("cpu")
    history.seconds = time.perf_counter() - t0
    return model, history


def _bar(frac: float, width: int = 20) -> str:
    n = int(round(frac * width))
    return "[" + "#" * n + "." * (width - n) + "]"


@torch.no_grad()
def evaluate_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn,
                  device: torch.device | str = "cpu") -> tuple[float, np.ndarray]:
    """(mean loss, softmax probabilities) over (x, y)."""
    model.eval()
    total, probs = 0.0, []
    for i in range(0, len(x), 256):
        logits = model(x[i:i + 256].to(device))
        total += loss_fn(logits, y[i:i + 256].to(device)).item() * len(logits)
        probs.append(torch.softmax(logits, 1).cpu().numpy())
    return (total / len(x) if len(x) else float("nan")), (np.concatenate(probs) if probs else np.zeros((0, 2), np.float32))


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = [torch.softmax(model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(device)), 1).cpu().numpy()
           for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)
