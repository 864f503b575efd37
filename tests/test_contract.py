"""The model contract: JSON round trip and validation errors that name the problem."""

from __future__ import annotations

import json

import pytest

from wellwatch.core.contract import (METADATA_KEY, EmptyFilter, ModelContract, Normalisation, Tiling,
                                       contract_from_metadata)
from wellwatch.core.errors import ContractError

pytestmark = pytest.mark.unit


def live_dead_contract(**changes) -> ModelContract:
    base = dict(
        name="demo", task="live_dead", classes=("live", "dead"), positive_class="dead", output="probabilities",
        input_name="input", channels=("brightfield",), layout="NCHW", height=64, width=64,
        normalisation=Normalisation("robust_zscore"), tiling=Tiling(tile_size=64, stride=48),
        empty_filter=EmptyFilter("std", {"threshold": 1.5}), decision_threshold=0.5,
        trained_on={"images": 12}, metrics={"auc": 0.93}, created="2024-01-01", tool="test")
    base.update(changes)
    return ModelContract(**base)


def doc(**changes) -> dict:
    d = json.loads(live_dead_contract().to_json())
    d.update(changes)
    return d


def test_round_trip():
    c = live_dead_contract()
    back = ModelContract.from_json(c.to_json())
    assert back == c and back.positive_index == 1


def test_round_trip_cell_type_without_tiling():
    c = live_dead_contract(task="cell_type", classes=("lmpp", "prob"), positive_class="prob", tiling=None,
                           height=150, width=150, normalisation=Normalisation("fixed", {"mean": 1.0, "std": 2.0}),
                           empty_filter=EmptyFilter("none"))
    assert ModelContract.from_json(c.to_json()) == c


def test_metadata_round_trip():
    c = live_dead_contract()
    assert contract_from_metadata({METADATA_KEY: c.to_json(), "other": "x"}, "m.onnx") == c


def test_metadata_without_the_key():
    with pytest.raises(ContractError, match="has no wellwatch model contract") as e:
        contract_from_metadata({"producer": "pytorch"}, "m.onnx")
    assert e.value.path == "m.onnx" and "m.onnx" in str(e.value)


def without(key: str) -> dict:
    d = doc()
    del d[key]
    return d


@pytest.mark.parametrize("document, message", [
    (without("name"), "lacks the field 'name'"),
    (without("tiling"), "lacks the field 'tiling'"),
    (without("decision_threshold"), "lacks the field 'decision_threshold'"),
    (doc(contract_version=2), "contract_version 2 is not supported"),
    (without("contract_version"), "contract_version None is not supported"),
    (doc(task="detection"), "task 'detection'"),
    (doc(task="segmentation"), "a segmentation model needs a segmentation section"),
    (doc(tiling=None), "needs tiling"),
    (doc(tiling={"tile_size": 32, "stride": 32}), "tile_size 32 differs from input 64x64"),
    (doc(width=32, tiling={"tile_size": 64, "stride": 32}), "tile_size 64 differs from input 64x32"),
    (doc(tiling={"tile_size": 64, "stride": 0}), "stride 0"),
    (doc(positive_class="alive"), "positive_class 'alive' is not one of"),
    (doc(task="cell_type", classes=["a", "b"], positive_class="c"), "positive_class 'c' is not one of"),
    (doc(classes=["live", "live"]), "two or more distinct"),
    (doc(classes=["live", "necrotic"]), "classes live and dead"),
    (doc(output="softmax"), "output 'softmax'"),
    (doc(layout="NHWC"), "only NCHW"),
    (doc(channels=[]), "channels is empty"),
    (doc(normalisation={"method": "fixed", "params": {"mean": 1.0}}), "lacks parameters \\['std'\\]"),
    (doc(normalisation={"method": "minmax", "params": {}}), "normalisation 'minmax'"),
    (doc(empty_filter={"method": "std", "params": {}}), "lacks parameters \\['threshold'\\]"),
    (doc(decision_threshold=1.5), "decision_threshold 1.5 outside"),
    (doc(height="big"), "wrong type"),
    (doc(tiling={"tile_size": 64}), "wrong type"),
])
def test_invalid_contracts(document, message):
    with pytest.raises(ContractError, match=message) as e:
        ModelContract.from_dict(document, "model.onnx")
    assert "model.onnx" in str(e.value)


def test_not_json_and_not_an_object():
    with pytest.raises(ContractError, match="not valid JSON"):
        ModelContract.from_json("{oops", "m.onnx")
    with pytest.raises(ContractError, match="not a JSON object"):
        ModelContract.from_json("[1, 2]", "m.onnx")
