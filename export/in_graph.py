"""A model that normalises inside its graph: raw uint16 tiles in, the same scores out.

`with_normalisation_in_graph` takes an exported float32 model (contract in its metadata) and
prepends Cast(uint16 -> float32), then (x - offset) * scale with each tile's per-channel
(offset, scale) from a second input (contract.AFFINE_INPUT, shape (N, C, 2)); the contract gains
`normalisation_in_graph = true`. The daemon then cuts uint16 tiles and computes only the frame
statistics (core/raw_tiles.py), and each raw tile crosses to the GPU once, at half the bytes.
Only normalisations that are one affine map per frame can move (contract.AFFINE_NORMALISATIONS).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from wellwatch.core.contract import AFFINE_INPUT, AFFINE_NORMALISATIONS, METADATA_KEY, ModelContract, file_sha256
from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.core.model_inputs import prepare_frame
from wellwatch.core.files.tiff import read_frame

from .errors import ExportError
from .fp16 import sort_nodes
from .metadata import PRECISION_KEY, set_metadata
from .manifest import write_manifest
from .parity_inputs import default_real_images

RAW_SUFFIX = ".raw.onnx"
_INNER = "normalised_input"  # the original graph's input, now made inside the graph


def raw_path(out: str | Path) -> Path:
    """model.onnx -> model.raw.onnx (beside the model it was made from)."""
    out = Path(out)
    stem = out.name[:-len(".onnx")] if out.name.endswith(".onnx") else out.name
    return out.with_name(stem + RAW_SUFFIX)


def with_normalisation_in_graph(model: str | Path, out: str | Path) -> ModelContract:
    """Write `out`: `model` with its contract's normalisation inside the graph. Returns the new contract."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(str(model))
    meta = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in meta:
        raise ExportError(f"{model}: has no wellwatch model contract; export it with `wellwatch export` first")
    contract = ModelContract.from_json(meta[METADATA_KEY], str(model))
    if contract.normalisation_in_graph:
        raise ExportError(f"{model}: already normalises in its graph")
    if contract.task != "live_dead" or contract.tiling is None:
        raise ExportError(f"{model}: only tile live_dead models can normalise in the graph (task {contract.task})")
    if contract.normalisation.method not in AFFINE_NORMALISATIONS:
        raise ExportError(f"{model}: normalisation {contract.normalisation.method!r} is not one affine map per "
                          f"frame; allowed: {', '.join(AFFINE_NORMALISATIONS)}")
    graph = proto.graph
    name = contract.input_name
    (old_input,) = [i for i in graph.input if i.name == name]
    for node in graph.node:
        node.input[:] = [_INNER if i == name else i for i in node.input]
    batch = old_input.type.tensor_type.shape.dim[0].dim_param or "batch"
    channels = len(contract.channels)
    graph.input.remove(old_input)
    graph.input.insert(0, helper.make_tensor_value_info(name, TensorProto.UINT16,
                                                        [batch, channels, contract.height, contract.width]))
    graph.input.insert(1, helper.make_tensor_value_info(AFFINE_INPUT, TensorProto.FLOAT, [batch, channels, 2]))
    const = [helper.make_tensor(n, TensorProto.INT64, [len(v)], v) for n, v in
             (("nig_zero", [0]), ("nig_one", [1]), ("nig_two", [2]), ("nig_axis2", [2]), ("nig_axis3", [3]))]
    graph.initializer.extend(const)
    graph.node.extend([
        helper.make_node("Cast", [name], ["nig_x"], to=TensorProto.FLOAT),
        helper.make_node("Slice", [AFFINE_INPUT, "nig_zero", "nig_one", "nig_axis2"], ["nig_offset3"]),
        helper.make_node("Slice", [AFFINE_INPUT, "nig_one", "nig_two", "nig_axis2"], ["nig_scale3"]),
        helper.make_node("Unsqueeze", ["nig_offset3", "nig_axis3"], ["nig_offset"]),  # (N, C, 1, 1)
        helper.make_node("Unsqueeze", ["nig_scale3", "nig_axis3"], ["nig_scale"]),
        helper.make_node("Sub", ["nig_x", "nig_offset"], ["nig_centred"]),
        helper.make_node("Mul", ["nig_centred", "nig_scale"], [_INNER]),  # the daemon's order: (x - offset) * scale
    ])
    sort_nodes(graph)
    raw_contract = dataclasses.replace(contract, normalisation_in_graph=True)
    raw_contract.validate(str(out))
    set_metadata(proto, raw_contract, precision=meta.get(PRECISION_KEY, "float32"))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return raw_contract


def in_graph_parity(model: str | Path, raw_model: str | Path, images: list[Path]) -> dict:
    """The raw model on the daemon's raw tiles against the model on the daemon's normalised tiles, on
    real frames: largest output difference, tiles compared, and whether the empty filter agreed."""
    import numpy as np

    reference, raw = (OnnxBackend(m, device="cpu", warmup=False) for m in (model, raw_model))
    worst, tiles, same_empty = 0.0, 0, True
    for image in images:
        frame = read_frame(str(image))
        ours, theirs = prepare_frame(frame, raw.contract), prepare_frame(frame, reference.contract)
        same_empty &= ours.n_empty == theirs.n_empty
        if len(ours.patches) and ours.n_empty == theirs.n_empty:
            worst = max(worst, float(np.abs(raw.infer(ours.patches) - reference.infer(theirs.patches)).max()))
        tiles += len(ours.patches)
    return {"against": f"{Path(model).name} on the daemon's normalised tiles (CPU)", "frames": [str(i) for i in images],
            "tiles": tiles, "max_abs_diff": worst, "same_empty_tiles": same_empty}


def export_in_graph(model: str | Path, out: str | Path | None = None, images: list[Path] | None = None,
                    atol: float = 1e-5) -> tuple[Path, dict]:
    """Write MODEL.raw.onnx (+ manifest) and prove it equal to MODEL on real frames (within `atol`)."""
    out = Path(out) if out else raw_path(model)
    images = default_real_images() if images is None else images
    if not images:
        raise ExportError("no real frames for the parity check: give --parity-image PATH "
                          "(../shared/data is absent here)")
    staged = out.with_name(out.name + ".partial")
    try:
        contract = with_normalisation_in_graph(model, staged)
        parity = {**in_graph_parity(model, staged, images), "atol": atol}
        if parity["max_abs_diff"] > atol or not parity["same_empty_tiles"]:
            raise ExportError(f"{out}: the in-graph normalisation differs from the daemon's: largest difference "
                              f"{parity['max_abs_diff']:.3g} (atol {atol:g}), same empty tiles: "
                              f"{parity['same_empty_tiles']}")
        staged.replace(out)
    finally:
        staged.unlink(missing_ok=True)

    write_manifest(out, contract, precision="float32", parity=parity,
                   source={"model": str(model), "sha256": file_sha256(model)})
    return out, parity
