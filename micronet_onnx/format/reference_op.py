"""A numpy reference of TernaryConv for `onnx.reference`, so any exported file can be checked
without the C++ library.

It is written for clarity, not speed: the node is read and validated by `TernaryConvNode` (the one
owner of the format's rules and of the decode), and `evaluate` runs the semantics of
docs/ternary-conv.md in float64, rounded once at the end: the yardstick the C++ kernels are held to.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx.reference.op_run import OpRun

from micronet_onnx.format import spec as tf
from micronet_onnx.format.node import TernaryConvNode


def conv2d_nchw(x: np.ndarray, w: np.ndarray, attrs: tf.ConvAttrs, out_hw: tuple[int, int]) -> np.ndarray:
    """Grouped 2-D cross-correlation in float64 (ONNX Conv semantics, zero padding, no bias) with the
    output size ``out_hw`` the node computed (`TernaryConvNode.output_shape`)."""
    (sh, sw), (dh, dw), group = attrs.strides, attrs.dilations, attrs.group
    pads = attrs.pads
    b = x.shape[0]
    m, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh, ow = out_hw
    out = np.zeros((b, m, oh, ow), dtype=np.float64)
    mg = m // group
    for g in range(group):
        xg = xp[:, g * cg : (g + 1) * cg]
        wg = w[g * mg : (g + 1) * mg].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                r0, c0 = i * dh, j * dw
                patch = xg[:, :, r0 : r0 + sh * (oh - 1) + 1 : sh, c0 : c0 + sw * (ow - 1) + 1 : sw]
                out[:, g * mg : (g + 1) * mg] += np.einsum("bchw,mc->bmhw", patch, wg[:, :, i, j])
    return out


def evaluate(node: TernaryConvNode, x: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
    """Evaluate a validated node on float32 ``x`` (and the run-time ``residual``); returns float32.

    Follows docs/ternary-conv.md, "Semantics": the input affine acts on the gathered stored channels
    before the zero padding, the residual is added after ``bias`` and before the activation.
    """
    x = np.asarray(x)
    node.check_x(x.shape, x.dtype)
    out_shape = node.output_shape(x.shape)
    if residual is not None:
        residual = np.asarray(residual)
        node.check_residual_shape(residual.shape, x.shape, residual.dtype)
    xs = x.astype(np.float64)[:, node.in_columns()]
    if node.in_scale is not None:
        xs = xs * node.in_scale.astype(np.float64).reshape(1, -1, 1, 1)
    if node.in_bias is not None:
        xs = xs + node.in_bias.astype(np.float64).reshape(1, -1, 1, 1)
    conv = conv2d_nchw(xs, node.dense_weight(), node.attrs, (out_shape[2], out_shape[3]))
    full = np.zeros(out_shape, dtype=np.float64)
    full[:, node.out_rows()] = conv
    if node.scale is not None:
        full *= node.scale.astype(np.float64).reshape(1, -1, 1, 1)
    if node.bias is not None:
        full += node.bias.astype(np.float64).reshape(1, -1, 1, 1)
    if residual is not None:
        full += residual.astype(np.float64)
    if node.attrs.activation == "Relu":
        full = np.maximum(full, 0.0)
    return full.astype(np.float32)


def ternary_conv(
    x: np.ndarray,
    mask: np.ndarray,
    sign: np.ndarray,
    centroids: np.ndarray,
    scale: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    in_channels: np.ndarray | None = None,
    out_channels: np.ndarray | None = None,
    in_scale: np.ndarray | None = None,
    in_bias: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    attrs: tf.ConvAttrs | None = None,
) -> np.ndarray:
    """Evaluate one TernaryConv from its stored inputs (1..10 in order) and attributes; float32."""
    if attrs is None:
        raise tf.FormatError("attributes are required")
    x = np.asarray(x)
    if x.dtype != np.float32 or x.ndim != 4:
        raise tf.FormatError(f"X must be float32 [B, C, H, W], got {x.dtype} {list(x.shape)}")
    node = TernaryConvNode.from_tensors(attrs, mask, sign, centroids, scale, bias, in_channels, out_channels,
                                        in_scale, in_bias, residual=None if residual is None else "residual",
                                        x_channels=x.shape[1])
    return evaluate(node, x, residual)


class TernaryConv(OpRun):
    """`onnx.reference` kernel for ``micronet::TernaryConv``: reads the node with
    `TernaryConvNode.from_onnx` (at the model's imported format version) and `evaluate`s it."""

    op_domain = tf.DOMAIN

    def _run(self, x, *inputs: Any, **_: Any):
        proto = self.onnx_node
        version = (self.run_params.get("opsets") or {}).get(tf.DOMAIN) or tf.OPSET_VERSION
        names = list(proto.input)
        # The evaluator passes every input as a value: the constants, keyed by name, and the residual.
        values = dict(zip(names[1:], inputs, strict=False))
        constants = {n: v for n, v in values.items() if n and v is not None}
        x = np.asarray(x)
        node = TernaryConvNode.from_onnx(proto, constants, int(version),
                                         x_channels=x.shape[1] if x.ndim == 4 else None)
        residual = values.get(node.residual) if node.residual else None
        return (evaluate(node, x, residual),)


def reference_evaluator(model: Any, **kwargs: Any):
    """An `onnx.reference.ReferenceEvaluator` that knows ``micronet::TernaryConv``."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model, new_ops=[TernaryConv], **kwargs)
