"""The model a fine-tuning run starts from: a segmentation checkpoint (.pt) or an exported .onnx.

An exported U-Net has its batch norms folded into the convolutions, so its weights go back into a
`UNet` whose batch norms are identities (scale 1, running mean 0, running variance 1 - eps) and
whose biases carry the folded shifts: the same function in eval mode. The ONNX graph's
convolutions are taken in order and must match the network's own, shape for shape; the result is
checked against ONNX Runtime on a tile before it is used. A fine-tuning run keeps batch norms in
eval mode (see seg_train.py), so this is exact throughout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from wellwatch.core.contract import ModelContract, contract_from_metadata

from .unet import SegmentationMaps, UNet
from .seg_checkpoint import load_seg_checkpoint

PARITY_ATOL = 1e-3


def load_initial_model(path: str | Path) -> tuple[UNet, ModelContract]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--init {path}: no such file")
    if path.suffix == ".onnx":
        return unet_from_onnx(path)
    if path.suffix == ".pt":
        model, contract, _ = load_seg_checkpoint(path)
        return model, contract
    raise ValueError(f"--init {path}: expected a segmentation checkpoint (.pt) or an exported model (.onnx)")


def _forward_layers(model: UNet) -> list[tuple[nn.Module, nn.BatchNorm2d | None]]:
    """(convolution, the batch norm after it or None) in the order the forward pass runs them."""
    layers: list[tuple[nn.Module, nn.BatchNorm2d | None]] = []

    def block(seq: nn.Sequential) -> None:
        mods = list(seq)
        for a, b in zip(mods, mods[1:] + [None]):
            if isinstance(a, nn.Conv2d):
                layers.append((a, b if isinstance(b, nn.BatchNorm2d) else None))

    for down in model.down:
        block(down)
    for up, merge in zip(model.up, model.merge):
        layers.append((up, None))
        block(merge)
    layers.append((model.head, None))
    return layers


def unet_from_onnx(path: Path) -> tuple[UNet, ModelContract]:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    contract = contract_from_metadata({p.key: p.value for p in proto.metadata_props}, str(path))
    if contract.task != "segmentation":
        raise ValueError(f"--init {path}: a {contract.task} model, not a segmentation model")
    config = contract.trained_on.get("config", {})
    if "base" not in config or "depth" not in config:
        raise ValueError(f"--init {path}: its contract's trained_on.config lacks the U-Net's base/depth")
    model = UNet(1, int(config["base"]), int(config["depth"]))
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    layers = _forward_layers(model)
    if len(convs) != len(layers):
        raise ValueError(f"--init {path}: {len(convs)} convolutions in the graph, the U-Net has {len(layers)}")
    with torch.no_grad():
        for node, (conv, bn) in zip(convs, layers):
            kind = "ConvTranspose" if isinstance(conv, nn.ConvTranspose2d) else "Conv"
            w = weights.get(node.input[1])
            if node.op_type != kind or w is None or tuple(w.shape) != tuple(conv.weight.shape):
                raise ValueError(f"--init {path}: graph node {node.name} ({node.op_type}) does not match the "
                                 f"U-Net's {kind} of weight shape {tuple(conv.weight.shape)}")
            b = weights[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0 if kind == "Conv" else 1], np.float32)
            conv.weight.copy_(torch.from_numpy(np.array(w)))
            if bn is not None:  # the folded norm: identity statistics, the shift as its bias
                bn.weight.fill_(1.0)
                bn.bias.copy_(torch.from_numpy(np.array(b)))
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
            elif conv.bias is not None:
                conv.bias.copy_(torch.from_numpy(np.array(b)))
            else:
                raise ValueError(f"--init {path}: {node.name} has a bias the U-Net has nowhere to put")
    model.eval()
    _check_parity(model, path, contract)
    return model, contract


def _check_parity(model: UNet, path: Path, contract: ModelContract) -> None:
    import onnxruntime as ort

    tile = np.random.default_rng(0).normal(0, 1, (1, 1, contract.height, contract.width)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: tile})[0]
    with torch.no_grad():
        got = SegmentationMaps(model).eval()(torch.from_numpy(tile)).numpy()
    err = float(np.abs(got - expected).max())
    if err > PARITY_ATOL:
        raise ValueError(f"--init {path}: the rebuilt U-Net differs from the ONNX model by {err:.2g} (> {PARITY_ATOL})")
