"""`mnx optimize`: rewrite a graph holding ``micronet::TernaryConv`` nodes (any format version, any
writer) into the current format with the fusions our exporter makes (docs/optimize.md)."""

from micronet_onnx.optimize.parity import ProbeError
from micronet_onnx.optimize.passes import OptimizeError, optimize_model, would_optimize
from micronet_onnx.optimize.report import Fusion, OptimizeReport, Parity, Refusal

__all__ = ["Fusion", "OptimizeError", "OptimizeReport", "Parity", "ProbeError", "Refusal", "optimize_model",
           "would_optimize"]
