"""A half-precision variant of an exported float32 model, for GPUs.

Weights and activations become float16; the graph's input and output stay float32 (Cast nodes at
both ends), so the daemon feeds and reads it exactly like the float32 model and the same contract
applies. The conversion is ONNX Runtime's own (`onnxruntime.transformers.float16`, shipped with
onnxruntime-gpu), which keeps in float32 the operators that have no float16 form.
"""

from __future__ import annotations

from pathlib import Path

from wellwatch.core.contract import ModelContract

from .metadata import set_metadata

FP16_SUFFIX = ".fp16.onnx"


def fp16_path(out: str | Path) -> Path:
    """model.onnx -> model.fp16.onnx (beside the float32 model it was made from)."""
    out = Path(out)
    return out.with_name(out.name[:-len(".onnx")] + FP16_SUFFIX if out.name.endswith(".onnx") else out.name + FP16_SUFFIX)


def write_fp16(fp32_path: str | Path, contract: ModelContract, out: str | Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load(str(fp32_path))
    half = convert_float_to_float16(proto, keep_io_types=True)
    sort_nodes(half.graph)  # the converter appends its input Casts at the end of the node list
    set_metadata(half, contract, precision="float16")
    onnx.checker.check_model(half)
    onnx.save(half, str(out))


def sort_nodes(graph) -> None:
    """Order a graph's nodes so each comes after the nodes producing its inputs (stable otherwise)."""
    producers = {name for node in graph.node for name in node.output}
    available: set[str] = set()
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i == "" or i in available or i not in producers for i in n.input)]
        if not ready:
            raise ValueError("the graph has a cycle")
        for node in ready:
            available.update(node.output)
        ordered += ready
        pending = [n for n in pending if all(n is not r for r in ready)]
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
