"""What an exported file carries besides its graph: the contract, the precision, the opset in use.

Torch-free, so `wellwatch inspect` and the CLI's argument parser need only the runtime.
"""

from __future__ import annotations

from wellwatch.core.contract import METADATA_KEY, ModelContract

OPSET = 18  # ONNX Runtime >= 1.14 (the runtime requires >= 1.18), TensorRT >= 8.6
OUTPUT_NAME = "scores"
PRECISION_KEY = "wellwatch.precision"  # "float32" or "float16"; input and output are float32 either way


def set_metadata(proto, contract: ModelContract, precision: str = "float32") -> None:
    """Write the contract and the precision into an ONNX ModelProto's metadata, replacing earlier entries."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in (METADATA_KEY, PRECISION_KEY)]
    del proto.metadata_props[:]
    for key, value in [*keep, (METADATA_KEY, contract.to_json()), (PRECISION_KEY, precision)]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "wellwatch"
    proto.doc_string = f"wellwatch {contract.task} model {contract.name!r} ({precision})"
