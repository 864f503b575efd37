"""Export: a torch module and its contract -> ONNX, proven equal to the PyTorch model.

    onnx_export.export_classifier       a torch module + contract -> checked ONNX file(s) + manifests
    onnx_graph                          torch -> ONNX graph with a dynamic batch axis
    metadata                            the contract and precision in the file's metadata
    fp16                                the float16 variant (float32 input/output)
    parity, parity_inputs               value and decision comparison; the fixed inputs they run on
    manifest                            MODEL.manifest.json: sha256, size, contract, tools
    inspect_model                       `wellwatch inspect`: contract in words, hash verified
    cli                                 `inspect`, `export-raw`, `export-bioimageio`, `check-package`

The entry point from a training checkpoint (`wellwatch export RUN/best.pt`) is
training/checkpoint_export.py: training owns the checkpoint formats and imports export, not the reverse.

Submodules are imported where needed: `wellwatch inspect` must run without torch.
"""
