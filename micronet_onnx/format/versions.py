"""The ONNX versions an exported file declares: pinned here, and only here.

- Default domain at opset 17 and IR version 8. Every op the exporter writes (Conv, Relu, Add,
  BatchNormalization-15, Cast, GlobalAveragePool, Flatten, Gemm) exists unchanged at opset 17, and
  IR 8 is the IR that opset 17 requires, so this is the lowest pair that describes the graph. Low
  pins keep the files loadable by older onnxruntime builds (opset 17 / IR 8 load from onnxruntime
  1.12 on) and by custom-op libraries compiled against them; newer ONNX releases keep reading old
  IR and opsets, so nothing is gained by declaring the newest. Raise them only for an op that needs it.
- The ``micronet`` domain at the format version of the file: by default the one writers emit,
  `micronet_onnx.ternary_format.OPSET_VERSION` (never a copy of that constant), or an older one the
  exporter can still write (``format_version=1``). It is imported only by files that contain a
  TernaryConv node: a dense export is plain standard ONNX that any runtime loads without knowing the
  domain.
"""

from __future__ import annotations

import onnx

from micronet_onnx.format import spec as tf

ONNX_OPSET = 17
IR_VERSION = 8


def opset_imports(*, ternary: bool, format_version: int = tf.OPSET_VERSION) -> list[onnx.OperatorSetIdProto]:
    """The opset imports of an exported model (``format_version``: the ``micronet`` opset of a ternary one)."""
    if format_version not in tf.SUPPORTED_OPSET_VERSIONS:
        raise ValueError(f"format version {format_version!r} is not one of {list(tf.SUPPORTED_OPSET_VERSIONS)}")
    imports = [onnx.helper.make_opsetid("", ONNX_OPSET)]
    if ternary:
        imports.append(onnx.helper.make_opsetid(tf.DOMAIN, int(format_version)))
    return imports
