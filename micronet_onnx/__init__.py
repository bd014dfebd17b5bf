"""micronet-onnx: sparse ternary MicroNet CNNs from training to onnxruntime on CPU."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
