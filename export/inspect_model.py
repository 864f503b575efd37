"""`wellwatch inspect model.onnx`: the contract in words, the graph, and the file's hash verified.

The model is loaded exactly as the daemon loads it (`OnnxBackend` on the CPU), so a file that
inspects cleanly passes the daemon's own checks. Needs only the runtime dependencies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wellwatch.core.inference.backend import OnnxBackend
from wellwatch.core.contract import ModelContract

from .errors import ManifestError
from .manifest import manifest_path, read_manifest, verify_manifest
from .metadata import PRECISION_KEY


@dataclass
class ModelInfo:
    path: Path
    sha256: str
    size: int
    contract: ModelContract
    precision: str
    inputs: list[tuple[str, list, str]]
    outputs: list[tuple[str, list, str]]
    manifest: dict[str, Any] | None
    hash_check: str  # "manifest", "expected", "unverified" or "mismatch"
    hash_problem: str = ""

    @property
    def verified(self) -> bool:
        return self.hash_check in ("manifest", "expected")

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "size": self.size, "precision": self.precision,
                "hash_check": self.hash_check, "hash_problem": self.hash_problem,
                "inputs": [list(i) for i in self.inputs], "outputs": [list(o) for o in self.outputs],
                "contract": json.loads(self.contract.to_json()),
                "parity": (self.manifest or {}).get("parity"), "decisions": (self.manifest or {}).get("decisions")}


def inspect_model(path: str | Path, expected_sha256: str | None = None) -> ModelInfo:
    """Load like the daemon (raises ContractError naming the file and problem), then check the hash."""
    path = Path(path)
    backend = OnnxBackend(path, device="cpu", max_batch=1, warmup=False)
    meta = backend.session.get_modelmeta().custom_metadata_map
    io = [[(a.name, list(a.shape), a.type) for a in args]
          for args in (backend.session.get_inputs(), backend.session.get_outputs())]
    manifest, check, problem = None, "unverified", ""
    if manifest_path(path).is_file():
        try:
            manifest, check = verify_manifest(path), "manifest"
        except ManifestError as e:
            check, problem = "mismatch", e.reason
            try:
                manifest = read_manifest(path)
            except ManifestError:
                pass
    if expected_sha256 is not None:
        if backend.sha256 == expected_sha256.lower():
            check = "expected" if check != "mismatch" else check
        else:
            check, problem = "mismatch", f"sha256 {backend.sha256} is not the expected {expected_sha256}"
    return ModelInfo(path, backend.sha256, path.stat().st_size, backend.contract, meta.get(PRECISION_KEY, "float32"),
                     io[0], io[1], manifest, check, problem)


def _kv(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "no parameters"


def format_info(info: ModelInfo) -> str:
    c = info.contract
    shape = lambda s: "[" + ", ".join(map(str, s)) + "]"  # noqa: E731
    graph = "; ".join(f"in {n} {shape(s)} {t}" for n, s, t in info.inputs) + "; " + \
        "; ".join(f"out {n} {shape(s)} {t}" for n, s, t in info.outputs)
    hash_line = {"manifest": f"verified against {manifest_path(info.path).name}",
                 "expected": "verified against the expected sha256",
                 "unverified": "NOT verified (no manifest beside the file; give --sha256 to check)",
                 "mismatch": f"MISMATCH: {info.hash_problem}"}[info.hash_check]
    geometry = (f"tiles {c.tiling.tile_size} px, stride {c.tiling.stride} px" if c.tiling
                else f"crops {c.height}x{c.width} px")
    if c.segmentation is not None:
        seg = c.segmentation
        geometry = (f"frame reduced {seg.downsample}x (block mean), {geometry} "
                    f"(overlap {c.tiling.tile_size - c.tiling.stride} px, {seg.stitch}); maps {', '.join(seg.maps)}; "
                    f"watershed {_kv(seg.postprocess)}")
    elif c.crop is not None:
        geometry = (f"one {c.crop.size} px crop per cell centroid, circular mask radius {c.crop.mask_radius:g}, "
                    f"cells of {c.crop.min_area}..{c.crop.max_area or 'any'} px")
    rows = [
        ("file", str(info.path)), ("sha256", f"{info.sha256} ({hash_line})"), ("size", f"{info.size} bytes"),
        ("precision", f"{info.precision} (" + ("raw uint16 input, float32 output" if c.normalisation_in_graph
                                               else "input and output float32") + ")"), ("graph", graph),
        ("contract", f"version {c.contract_version}"), ("name", c.name), ("task", c.task),
        ("classes", f"{', '.join(c.classes)} (output order; positive: {c.positive_class})"),
        ("output", c.output), ("input", f"{c.input_name!r} N x {len(c.channels)} x {c.height} x {c.width} {c.layout}; "
                                         f"channels: {', '.join(c.channels)}"),
        ("normalisation", f"{c.normalisation.method} ({_kv(c.normalisation.params)})"
                          + (", inside the graph (the daemon passes each tile's offset and scale)"
                             if c.normalisation_in_graph else "")), ("geometry", geometry),
        ("empty filter", f"{c.empty_filter.method} ({_kv(c.empty_filter.params)})"),
        ("threshold", f"{c.decision_threshold:g} on p({c.positive_class})"),
        ("trained on", json.dumps(c.trained_on, sort_keys=True)),
        ("metrics", json.dumps(c.metrics, sort_keys=True) if c.metrics else "none recorded"),
        ("created", f"{c.created} by {c.tool}"),
    ]
    if info.manifest:
        m = info.manifest
        if "parity" in m:
            p = m["parity"]
            rows.append(("parity", f"{p.get('mismatched_ppm', 0):g} ppm of {p.get('elements')} elements beyond "
                                   f"atol={p.get('atol')} rtol={p.get('rtol')}; max |diff| {p.get('max_abs_diff'):.3g} "
                                   f"(vs PyTorch, ONNX Runtime on {p.get('provider') or 'CPUExecutionProvider'})"))
        if "decisions" in m:
            d = m["decisions"]
            rows.append(("decisions", f"{100 * d['agreement']:.3f}% agree with PyTorch float32 "
                                      f"({d['disagreements']} of {d['samples']} differ)"))
        rows.append(("exported", f"{m.get('exported')} with " + ", ".join(f"{k} {v}" for k, v in
                                                                           sorted(m.get("tools", {}).items()))))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
