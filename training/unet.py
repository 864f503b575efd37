"""A compact U-Net for cell segmentation: one image channel in, four maps out.

Outputs, per pixel: logits of background / cell interior / cell boundary, and a logit of the
distance to the cell's edge (scaled to 1 at each cell's centre). `SegmentationMaps` applies the
activations, so the exported graph gives what the contract's `segmentation.maps` names.
"""

from __future__ import annotations

import torch
from torch import nn

CLASS_MAPS, DISTANCE_MAP = slice(0, 3), 3


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """`depth` poolings; widths base, 2*base, ... ; input sides must be multiples of 2**depth."""

    def __init__(self, in_channels: int = 1, base: int = 16, depth: int = 4, out_channels: int = 4):
        super().__init__()
        widths = [base * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0])] +
                                  [_double_conv(widths[i], widths[i + 1]) for i in range(depth)])
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                 for i in reversed(range(depth))])
        self.merge = nn.ModuleList([_double_conv(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.base, self.depth = base, depth
        self.multiple = 2 ** depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


class SegmentationMaps(nn.Module):
    """Logits -> (softmax over the three classes, sigmoid distance): the servable graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.model(x)
        return torch.cat([torch.softmax(raw[:, CLASS_MAPS], dim=1), torch.sigmoid(raw[:, DISTANCE_MAP:])], dim=1)
