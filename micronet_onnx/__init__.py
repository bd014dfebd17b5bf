"""micronet-onnx: sparse ternary MicroNet CNNs from training to onnxruntime on CPU."""

from __future__ import annotations

from micronet_onnx.runtime.session import (  # onnxruntime is imported lazily, on first use
    create_session,
    ops_library_path,
)

__version__ = "0.1.0"

__all__ = ["__version__"]
__all__ += ["create_session", "ops_library_path"]
