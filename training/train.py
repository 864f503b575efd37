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


SEED_DEFAULTS = {
    # Pattarone et al. 2021 (live/dead): Adam lr 1e-5, betas (0.5, 0.999), wd 1e-5, batch 4, 30 epochs.
    "pattarone": dict(epochs=30, batch_size=4, lr=1e-5, betas=(0.5, 0.999), weight_decay=1e-5, patience=5),
    # Ogawa et al. (cell type): Adam lr 1e-4, batch 32, early stopping patience 5, at most 30 epochs.
    "ogawa": dict(epochs=30, batch_size=32, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0, patience=5),
    "tiny": dict(epochs=12, batch_size=64, lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-5, patience=4),
}


def seed_defaults(arch: str, **overrides) -> TrainConfig:
    """The seed study's hyperparameters for `arch`, with explicit overrides (None = keep the default)."""
    base = SEED_DEFAULTS["ogawa" if arch == "ogawa" else "tiny" if arch == "tiny" else "pattarone"]
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


def train_classifier(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                     cfg: TrainConfig, classes: int = 2) -> tuple[nn.Module, History]:
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model = build_model(cfg.arch, x_train.shape[1], classes, input_size=x_train.shape[-1],
                        pretrained=cfg.pretrained).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    xv, yv = torch.from_numpy(x_val), torch.from_numpy(y_val).long()
    counts = np.bincount(y_train, minlength=classes).astype(np.float64)
    weights = torch.from_numpy((1.0 / np.maximum(counts, 1))[y_train])  # inverse class counts
    steps = cfg.steps_per_epoch or max(1, len(xt) // cfg.batch_size)
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
            xb = augment(xt[b], generator).to(device)
            optimiser.zero_grad()
            loss = loss_fn(model(xb), yt[b].to(device))
            loss.backward()
            optimiser.step()
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
        improved = val_loss < best_loss
        line = (f"epoch {epoch + 1:>3}/{cfg.epochs} {_bar((epoch + 1) / cfg.epochs)} train loss {history.train_loss[-1]:.4f}"
                f"  val loss {val_loss:.4f}  val auc {auc:.4f}  {history.epoch_seconds[-1]:.1f} s"
                f" (total {time.perf_counter() - t0:.0f} s){'  *best' if improved else ''}")
        report.line(line)
        if improved:
            best_loss, best_state, stale, history.best_epoch = val_loss, copy.deepcopy(model.state_dict()), 0, epoch
        else:
            stale += 1
            if stale >= cfg.patience:
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
    return total / max(len(x), 1), (np.concatenate(probs) if probs else np.zeros((0, 2), np.float32))


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = [torch.softmax(model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(device)), 1).cpu().numpy()
           for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)
