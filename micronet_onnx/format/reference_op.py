"""A numpy reference of TernaryConv for `onnx.reference`, so any exported file can be checked
without the C++ library.

It is written for clarity, not speed: it decodes the weight with `ternary_format` and runs a
float64 convolution, so it is the yardstick the C++ kernels are held to.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx.reference.op_run import OpRun

from micronet_onnx.format import spec as tf


def conv2d_nchw(
    x: np.ndarray,
    w: np.ndarray,
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
    group: int,
) -> np.ndarray:
    """Grouped 2-D cross-correlation in float64 (ONNX Conv semantics, no bias)."""
    b, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    if c != cg * group:
        raise tf.FormatError(f"input has {c} channels, weight expects {cg * group}")
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (xp.shape[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    if oh <= 0 or ow <= 0:
        raise tf.FormatError("kernel larger than padded input")
    out = np.zeros((b, m, oh, ow), dtype=np.float64)
    mg = m // group
    for g in range(group):
        xg = xp[:, g * cg : (g + 1) * cg]
        wg = w[g * mg : (g + 1) * mg].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                r0, c0 = i * dilations[0], j * dilations[1]
                rows = slice(r0, r0 + strides[0] * (oh - 1) + 1, strides[0])
                cols = slice(c0, c0 + strides[1] * (ow - 1) + 1, strides[1])
                patch = xg[:, :, rows, cols]
                out[:, g * mg : (g + 1) * mg] += np.einsum("bchw,mc->bmhw", patch, wg[:, :, i, j])
    return out


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
    """Evaluate one TernaryConv node on float32 input; returns float32.

    Follows docs/ternary-conv.md, "Semantics": the input affine (``in_scale``, ``in_bias``) acts on
    the gathered stored channels before the zero padding, the ``residual`` is added after ``bias``
    and before the activation. Everything is computed in float64 and rounded once at the end.
    """
    if attrs is None:
        raise tf.FormatError("attributes are required")
    x = np.asarray(x)
    if x.dtype != np.float32 or x.ndim != 4:
        raise tf.FormatError(f"X must be float32 [B, C, H, W], got {x.dtype} {list(x.shape)}")
    node = tf.check_node_tensors(attrs, mask, sign, centroids, scale, bias, in_channels, out_channels,
                                 x_channels=x.shape[1], in_scale=in_scale, in_bias=in_bias)
    xs = x.astype(np.float64)
    if node.in_channels is not None:
        xs = xs[:, node.in_channels.astype(np.int64)]
    if node.in_scale is not None:
        xs = xs * np.asarray(node.in_scale).astype(np.float64).reshape(1, -1, 1, 1)
    if node.in_bias is not None:
        xs = xs + np.asarray(node.in_bias).astype(np.float64).reshape(1, -1, 1, 1)
    conv = conv2d_nchw(xs, node.weight(), attrs.strides, attrs.pads, attrs.dilations, attrs.group)  # pads 0s
    out_shape = (x.shape[0], attrs.m_out, *conv.shape[2:])
    if residual is not None:
        residual = np.asarray(residual)
        if residual.dtype != np.float32 or residual.shape != out_shape:
            raise tf.FormatError(f"residual must be float32 {list(out_shape)} (the output's shape), got "
                                 f"{residual.dtype} {list(residual.shape)}")
    rows = node.out_channels.astype(np.int64) if node.out_channels is not None else np.arange(attrs.m_stored)
    full = np.zeros(out_shape, dtype=np.float64)
    full[:, rows] = conv
    if scale is not None:
        full *= np.asarray(scale).astype(np.float64).reshape(1, -1, 1, 1)
    if bias is not None:
        full += np.asarray(bias).astype(np.float64).reshape(1, -1, 1, 1)
    if residual is not None:
        full += residual.astype(np.float64)
    if attrs.activation == "Relu":
        full = np.maximum(full, 0.0)
    return full.astype(np.float32)


class TernaryConv(OpRun):
    """`onnx.reference` kernel for ``micronet::TernaryConv``."""

    op_domain = tf.DOMAIN

    def _run(self, x, mask, sign, centroids, scale=None, bias=None, in_channels=None, out_channels=None,
             in_scale=None, in_bias=None, residual=None, **_: Any):
        attrs = {}
        for name in (
            tf.ATTR_WEIGHT_SHAPE,
            tf.ATTR_STRIDES,
            tf.ATTR_PADS,
            tf.ATTR_DILATIONS,
            tf.ATTR_GROUP,
            tf.ATTR_OUT_CHANNELS,
            tf.ATTR_ACTIVATION,
        ):
            value = getattr(self, name, None)
            if value is not None:
                attrs[name] = value
        conv_attrs = tf.ConvAttrs.from_onnx(attrs)
        y = ternary_conv(x, mask, sign, centroids, scale, bias, in_channels, out_channels, in_scale, in_bias,
                         residual, attrs=conv_attrs)
        return (y,)


def reference_evaluator(model: Any, **kwargs: Any):
    """An `onnx.reference.ReferenceEvaluator` that knows ``micronet::TernaryConv``."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model, new_ops=[TernaryConv], **kwargs)
