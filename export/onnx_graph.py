"""PyTorch module -> ONNX graph with a dynamic batch axis and the model contract in its metadata."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wellwatch.core.contract import ModelContract

from .metadata import OPSET, OUTPUT_NAME, set_metadata


class WithSoftmax(nn.Module):
    """Wraps a logits model so the graph gives probabilities (contract output = 'probabilities')."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def servable(model: nn.Module, contract: ModelContract) -> nn.Module:
    """The module whose outputs the ONNX graph reproduces: the model, with a softmax if the contract says so."""
    if contract.task == "segmentation":  # the model given is already the servable maps graph
        return model.eval()
    graph = WithSoftmax(model) if contract.output == "probabilities" else model
    return graph.eval()


def torch_to_onnx(graph: nn.Module, contract: ModelContract, out: str | Path, opset: int = OPSET) -> None:
    """Trace `graph` to `out` with input name from the contract and a dynamic batch axis."""
    example = torch.zeros((2, len(contract.channels), contract.height, contract.width))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(graph, (example,), str(out), input_names=[contract.input_name], output_names=[OUTPUT_NAME],
                          dynamic_axes={contract.input_name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=opset, do_constant_folding=True, dynamo=False)


def write_onnx(model: nn.Module, contract: ModelContract, out: str | Path, opset: int = OPSET) -> None:
    """Export, embed the contract, check the graph with onnx.checker, save."""
    import onnx

    graph = servable(model, contract)
    torch_to_onnx(graph, contract, out, opset)
    proto = onnx.load(str(out))
    set_metadata(proto, contract)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))


def onnx_session(path: str | Path, prefer_gpu: bool = False):
    """An ONNX Runtime session on the CPU (the reference), or on CUDA when asked and really available."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if prefer_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    ort.set_default_logger_severity(4)  # onnxruntime-gpu without a GPU logs a multi-line error, then uses the CPU
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    finally:
        ort.set_default_logger_severity(2)


def run_onnx(session, input_name: str, batch: np.ndarray) -> np.ndarray:
    return session.run(None, {input_name: batch})[0]


@torch.no_grad()
def run_torch(graph: nn.Module, batch: np.ndarray) -> np.ndarray:
    return graph(torch.from_numpy(batch)).numpy()
