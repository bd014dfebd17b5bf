"""ONNX export of MicroNet models (installed as ``micronet_onnx.export``).

`export_model` writes a model, `export_checkpoint` a checkpoint, as either ``micronet::TernaryConv``
nodes (``ternary=True``), plain standard ONNX, or standard ONNX with INT2 ternary codes
(``portable=True``, `micronet_onnx.export.portable`); all check parity against PyTorch before writing.
See docs/export.md.
"""

from __future__ import annotations

from micronet_onnx.export.errors import ExportError, ParityError
from micronet_onnx.export.exporter import ExportReport, export_checkpoint, export_model, write_atomic
from micronet_onnx.export.graph import INPUT_NAME, OUTPUT_NAME, LayerReport, build_graph
from micronet_onnx.export.parity import ParityReport, default_probe
from micronet_onnx.format.versions import IR_VERSION, ONNX_OPSET, PORTABLE_IR_VERSION, PORTABLE_OPSET, opset_imports

__all__ = [
    "ExportError",
    "ExportReport",
    "INPUT_NAME",
    "IR_VERSION",
    "LayerReport",
    "ONNX_OPSET",
    "OUTPUT_NAME",
    "PORTABLE_IR_VERSION",
    "PORTABLE_OPSET",
    "ParityError",
    "ParityReport",
    "build_graph",
    "default_probe",
    "export_checkpoint",
    "export_model",
    "opset_imports",
    "write_atomic",
]
