"""Network architectures. torch is a training-only dependency."""

from __future__ import annotations

import torch
from torch import nn


class TinyLiveDead(nn.Module):
    """A small CNN for the bundled demo model: three conv blocks, global average pool, linear.

    Outputs logits; export wraps it with a softmax so the ONNX file gives probabilities.
    """

    def __init__(self, in_channels: int = 1, classes: int = 2, width: int = 16):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(in_channels, width), block(width, 2 * width),
                                      block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


ARCHITECTURES = {"tiny": TinyLiveDead}


def build_model(arch: str, in_channels: int, classes: int) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](in_channels=in_channels, classes=classes)
