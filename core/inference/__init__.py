"""The inference backend: one ONNX Runtime session per model, its providers and I/O binding."""
