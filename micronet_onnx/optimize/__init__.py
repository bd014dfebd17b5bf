"""`mnx optimize`: rewrite a graph holding ``micronet::TernaryConv`` nodes (any format version, any
writer) into the current format with the fusions our exporter makes (docs/optimize.md)."""

from micronet_onnx.optimize.parity import ProbeError
from micronet_onnx.optimize.passes import (
    ENCODING_REQUESTS,
    KEEP_ENCODING,
    OptimizeError,
    optimize_model,
    would_optimize,
)
from micronet_onnx.optimize.report import Fusion, OptimizeReport, Parity, Reencoding, Refusal

__all__ = ["ENCODING_REQUESTS", "KEEP_ENCODING", "Fusion", "OptimizeError", "OptimizeReport", "Parity",
           "ProbeError", "Reencoding", "Refusal", "optimize_model", "would_optimize"]
