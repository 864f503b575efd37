"""Training loop: weighted sampling, 90-degree rotations and flips, Adam, early stopping.

Defaults for the demo model; the seed studies' hyperparameters are options.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .models import build_model

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


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 90-degree rotation and horizontal flip per batch (cell images have no up)."""
    k = int(torch.randint(0, 4, (1,), generator=generator))
    x = torch.rot90(x, k, dims=(2, 3))
    if bool(torch.randint(0, 2, (1,), generator=generator)):
        x = torch.flip(x, dims=(3,))
    return x


def train_classifier(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                     cfg: TrainConfig, classes: int = 2) -> tuple[nn.Module, History]:
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = build_model(cfg.arch, x_train.shape[1], classes)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    xv, yv = torch.from_numpy(x_val), torch.from_numpy(y_val).long()
    counts = np.bincount(y_train, minlength=classes).astype(np.float64)
    weights = torch.from_numpy((1.0 / np.maximum(counts, 1))[y_train])  # inverse class counts
    steps = cfg.steps_per_epoch or max(1, len(xt) // cfg.batch_size)
    history, best_state, best_loss, stale = History(), None, float("inf"), 0
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        idx = torch.multinomial(weights, steps * cfg.batch_size, replacement=True, generator=generator)
        losses = []
        for step in range(steps):
            b = idx[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(augment(xt[b], generator)), yt[b])
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        val_loss = evaluate_loss(model, xv, yv, loss_fn)
        history.train_loss.append(float(np.mean(losses)))
        history.val_loss.append(val_loss)
        log.info("epoch %d/%d  train loss %.4f  val loss %.4f  (%.0f s)", epoch + 1, cfg.epochs,
                 history.train_loss[-1], val_loss, time.perf_counter() - t0)
        if val_loss < best_loss:
            best_loss, best_state, stale, history.best_epoch = val_loss, copy.deepcopy(model.state_dict()), 0, epoch
        else:
            stale += 1
            if stale >= cfg.patience:
                log.info("early stop: no validation improvement for %d epochs", cfg.patience)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - t0
    return model, history


@torch.no_grad()
def evaluate_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(x), 512):
        total += loss_fn(model(x[i:i + 512]), y[i:i + 512]).item() * len(x[i:i + 512])
    return total / max(len(x), 1)


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    out = [torch.softmax(model(torch.from_numpy(x[i:i + 512])), 1).numpy() for i in range(0, len(x), 512)]
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)
