"""Inference benchmarks: our library against the dense twin in stock onnxruntime (docs/runtime.md)."""
