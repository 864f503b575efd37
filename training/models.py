"""Network architectures. torch is a training-only dependency.

- tiny: the bundled demo model's 3-block CNN.
- cropnet, cropnet8: small-cell crops (the LDC live/dead model): three blocks of two 3x3
  convolutions (16-32-64 channels, batch norm, ReLU) and 2x2 max pooling, global average pool,
  dropout 0.2, linear. cropnet8 is the same network whose eval-mode forward averages the logits
  over the 8 rotations and flips of the input (test-time augmentation inside the graph, so the
  exported ONNX file serves it with no change to the daemon); training sees one random view.
- ogawa: the cell-type seed study's CNN (four 5x5 convolutions 16-16-32-32, each followed by
  3x3/2 max pooling, fully connected 2000 then the classes, ReLU, dropout 0.1).
- resnet18, squeezenet1_1, inception_v3: torchvision networks, as in the live/dead seed study;
  the first convolution takes the dataset's channel count (1 for bright-field) and the last layer
  its class count. With pretrained="imagenet" torchvision's ImageNet weights are loaded; a grey
  input uses the sum of the RGB filters (the same response as the grey image copied to RGB).

Every model exposes, through `cam_layer(model)` and `head_layer(model)`, the convolution whose
output Grad-CAM explains and the layer whose input is the penultimate feature vector (t-SNE).
"""

from __future__ import annotations

import torch
from torch import nn

from wellwatch.core.errors import WellwatchError

PRETRAINED = ("imagenet",)
TORCHVISION = ("resnet18", "squeezenet1_1", "inception_v3")
MIN_INPUT = {"inception_v3": 75, "squeezenet1_1": 32, "resnet18": 32, "ogawa": 40, "tiny": 8, "cropnet": 8,
             "cropnet8": 8}


class InputTooSmall(WellwatchError, ValueError):
    """The dataset's inputs are smaller than the architecture takes; the message names those that fit."""

    def __init__(self, arch: str, input_size: int):
        self.arch, self.input_size = arch, input_size
        fits = [a for a in ARCHITECTURES if MIN_INPUT[a] <= input_size]
        super().__init__(f"--arch {arch}: needs inputs of at least {MIN_INPUT[arch]} px, this dataset's are "
                         f"{input_size} px; choose --arch {' / '.join(fits) or '(none fits)'}, or build the dataset "
                         "with larger tiles or crops")


class PretrainedUnavailable(RuntimeError):
    """Pretrained weights were asked for and cannot be had."""


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


class CropCNN(nn.Module):
    """Three double-conv blocks, global average pool, dropout, linear; `dihedral` averages logits over
    the 8 rotations/flips in eval mode (cells have no up, so every view is a fair look)."""

    def __init__(self, in_channels: int = 1, classes: int = 2, width: int = 16, dropout: float = 0.2,
                 dihedral: bool = False):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(in_channels, width), block(width, 2 * width),
                                      block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * width, classes))
        self.dihedral = dihedral

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.dihedral:
            return self.head(self.features(x))
        # the 8 symmetries of a square: 4 flips x optional transpose (rot90 has no ONNX export)
        flips = [x, torch.flip(x, dims=(3,)), torch.flip(x, dims=(2,)), torch.flip(x, dims=(2, 3))]
        views = flips + [v.transpose(2, 3) for v in flips]
        n = x.shape[0]
        logits = self.head(self.features(torch.cat(views, 0)))
        # a constant class count keeps the exported graph's output shape [batch, classes]
        return logits.reshape(8, n, self.head[-1].out_features).mean(0)


class OgawaCNN(nn.Module):
    """Ogawa et al.'s CNN; channel widths double for multi-channel input, as in the paper."""

    def __init__(self, in_channels: int = 1, classes: int = 2, input_size: int = 150, dropout: float = 0.1):
        super().__init__()
        widths = [16, 16, 32, 32]
        if in_channels > 1:
            widths = [2 * w for w in widths]
        layers: list[nn.Module] = []
        cin = in_channels
        for w in widths:
            layers += [nn.Conv2d(cin, w, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2)]
            cin = w
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            n = self.features(torch.zeros(1, in_channels, input_size, input_size)).numel()
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(n, 2000), nn.ReLU(inplace=True),
                                nn.Dropout(dropout))
        self.head = nn.Linear(2000, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.features(x)))


def _load_weights(arch: str):
    """torchvision's ImageNet weights object, or PretrainedUnavailable with a clear message."""
    import torchvision.models as tvm

    enum = {"resnet18": tvm.ResNet18_Weights, "squeezenet1_1": tvm.SqueezeNet1_1_Weights,
            "inception_v3": tvm.Inception_V3_Weights}.get(arch)
    if enum is None:
        raise PretrainedUnavailable(f"no ImageNet weights exist for architecture {arch!r}; "
                                    f"pretrained weights exist for {', '.join(TORCHVISION)}")
    weights = enum.IMAGENET1K_V1
    return weights


def _state_dict(weights) -> dict:
    """Download (or read from the torch hub cache) with a short network timeout."""
    import socket

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # URLError, timeouts, DNS failures, bad hash
        from torch.hub import get_dir

        raise PretrainedUnavailable(
            f"cannot load ImageNet weights {weights.url} ({type(e).__name__}: {e}); this machine needs network "
            f"access once, or the file placed in {get_dir()}/checkpoints/; or train without --pretrained") from None
    finally:
        socket.setdefaulttimeout(old)


def _grey_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of `conv` taking `in_channels`; for 1 channel the RGB filters are summed."""
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None)
    with torch.no_grad():
        w = conv.weight
        if in_channels == 1:
            new.weight.copy_(w.sum(dim=1, keepdim=True))
        else:
            new.weight.copy_(w.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * 3 / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _torchvision(arch: str, in_channels: int, classes: int, pretrained: str | None) -> nn.Module:
    import torchvision.models as tvm

    state = None
    if pretrained:
        if pretrained not in PRETRAINED:
            raise PretrainedUnavailable(f"unknown pretrained weights {pretrained!r}; allowed: {', '.join(PRETRAINED)}")
        state = _state_dict(_load_weights(arch))
    if arch == "resnet18":
        m = tvm.resnet18(weights=None)
        if state:
            m.load_state_dict(state)
        m.conv1 = _grey_conv(m.conv1, in_channels) if in_channels != 3 else m.conv1
        m.fc = nn.Linear(m.fc.in_features, classes)
    elif arch == "squeezenet1_1":
        m = tvm.squeezenet1_1(weights=None)
        if state:
            m.load_state_dict(state)
        if in_channels != 3:
            m.features[0] = _grey_conv(m.features[0], in_channels)
        m.classifier[1] = nn.Conv2d(512, classes, 1)
        m.num_classes = classes
    elif arch == "inception_v3":
        m = tvm.inception_v3(weights=None, aux_logits=state is not None, init_weights=state is None,
                             transform_input=False)
        if state:
            m.load_state_dict(state)
        m.aux_logits, m.AuxLogits = False, None
        if in_channels != 3:
            m.Conv2d_1a_3x3.conv = _grey_conv(m.Conv2d_1a_3x3.conv, in_channels)
        m.fc = nn.Linear(m.fc.in_features, classes)
    else:  # pragma: no cover
        raise ValueError(arch)
    return m


ARCHITECTURES = ("tiny", "cropnet", "cropnet8", "ogawa", *TORCHVISION)


def build_model(arch: str, in_channels: int, classes: int, input_size: int | None = None,
                pretrained: str | None = None) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHITECTURES)}")
    if input_size is not None and input_size < MIN_INPUT[arch]:
        raise InputTooSmall(arch, input_size)
    if pretrained and arch not in TORCHVISION:
        raise PretrainedUnavailable(f"no ImageNet weights exist for architecture {arch!r} (it is trained from "
                                    f"scratch); pretrained weights exist for {', '.join(TORCHVISION)}")
    if arch == "tiny":
        return TinyLiveDead(in_channels=in_channels, classes=classes)
    if arch in ("cropnet", "cropnet8"):
        return CropCNN(in_channels=in_channels, classes=classes, dihedral=arch == "cropnet8")
    if arch == "ogawa":
        return OgawaCNN(in_channels=in_channels, classes=classes, input_size=input_size or 150)
    return _torchvision(arch, in_channels, classes, pretrained)


def cam_layer(model: nn.Module) -> nn.Module:
    """The last convolutional block: Grad-CAM explains its output."""
    if isinstance(model, TinyLiveDead):
        return model.features[2]
    if isinstance(model, CropCNN):
        return model.features[2]
    if isinstance(model, OgawaCNN):
        return model.features[-3]  # the last conv's ReLU, before the final pooling
    name = type(model).__name__
    if name == "ResNet":
        return model.layer4
    if name == "SqueezeNet":
        return model.features
    if name == "Inception3":
        return model.Mixed_7c
    raise ValueError(f"no Grad-CAM layer known for {name}")


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, D) features just before the classifying layer."""
    captured: list[torch.Tensor] = []
    if isinstance(model, (TinyLiveDead, OgawaCNN)):
        layer = model.head
    elif isinstance(model, CropCNN):
        layer = model.head[-1]
    elif type(model).__name__ in ("ResNet", "Inception3"):
        layer = model.fc
    elif type(model).__name__ == "SqueezeNet":
        layer = model.classifier[1]
    else:
        raise ValueError(f"no feature layer known for {type(model).__name__}")
    handle = layer.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    try:
        model(x)
    finally:
        handle.remove()
    f = captured[0]
    if f.shape[0] != x.shape[0]:  # views averaged in the graph (cropnet8): average their features too
        f = f.reshape(f.shape[0] // x.shape[0], x.shape[0], *f.shape[1:]).mean(0)
    return f.mean(dim=(2, 3)) if f.dim() == 4 else f.flatten(1)
