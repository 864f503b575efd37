"""A tiny two-channel live/dead ONNX model built with onnx.helper, with a real wellwatch contract.

It is not trained: P(dead) of a tile = sigmoid(GAIN * (mean of channel 2 - mean of channel 1)) on the
contract's normalised tiles. What it tests is the plumbing: both channels of a field must reach it,
in the contract's order (swap them and every call flips), which a test checks against the same
computation done offline on the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wellwatch.core.contract import CONTRACT_VERSION, EmptyFilter, ModelContract, Normalisation, Tiling

GAIN = 4.0


def two_channel_contract(channels: tuple[str, str], tile: int = 64) -> ModelContract:
    return ModelContract(
        name="test-two-channel", task="live_dead", classes=("live", "dead"), positive_class="dead",
        output="probabilities", input_name="input", channels=channels, layout="NCHW", height=tile, width=tile,
        normalisation=Normalisation("robust_zscore", {}), tiling=Tiling(tile, tile),
        empty_filter=EmptyFilter("none", {}), decision_threshold=0.5,
        trained_on={"note": "not trained: a fixed function of channel means, for plumbing tests"},
        metrics={}, contract_version=CONTRACT_VERSION)


def build_two_channel_model(path: Path, channels: tuple[str, str] = ("DIC", "PH")) -> ModelContract:
    import onnx
    from onnx import TensorProto, helper

    from wellwatch.export.metadata import OPSET, set_metadata

    contract = two_channel_contract(channels)
    t = contract.height
    weights = np.array([[0.0, -GAIN], [0.0, GAIN]], np.float32)  # logits = [0, GAIN * (m2 - m1)]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input", "axes"], ["means"], keepdims=0),
         helper.make_node("MatMul", ["means", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["scores"], axis=1)],
        "two_channel_means",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2, t, t])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
         helper.make_tensor("w", TensorProto.FLOAT, [2, 2], weights.ravel().tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)  # ORT >= 1.18 reads IR 8
    set_metadata(model, contract)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return contract


def expected_dead_tiles(images: list[np.ndarray], contract: ModelContract) -> int:
    """The model's dead calls on one field, computed without the model (numpy only)."""
    from wellwatch.core.preprocess import prepare_tiles

    patches, _, _ = prepare_tiles(images, contract)
    means = patches.mean(axis=(2, 3))
    p_dead = 1.0 / (1.0 + np.exp(-GAIN * (means[:, 1] - means[:, 0])))
    return int((p_dead >= contract.decision_threshold).sum())
