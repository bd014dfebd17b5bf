"""A TernaryConv node in standard ONNX: the dense twin's lowering, written once.

`lower_node` gives the nodes (and initializers) that compute what one `TernaryConvNode` computes, in
the layout the dense export writes: a ``Gather`` of the read channels when X's channel count is
unknown, a ``BatchNormalization`` (mean 0, var 1, epsilon 0) for ``in_scale``/``in_bias``, a ``Conv``
whose weight is the decoded ternary weight times ``scale`` scattered to ``[M_out, C, kH, kW]`` through
the channel maps (dead output channels: a zero filter and their bias), an ``Add`` for the residual and
a ``Relu`` when fused. The folding is done in float64 and rounded once, so the lowering computes the
same function up to float32 rounding; it runs in stock onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

if TYPE_CHECKING:
    from micronet_onnx.format.node import TernaryConvNode


def _dense_weight(node: TernaryConvNode, x_channels: int | None
                  ) -> tuple[np.ndarray, int, bool, np.ndarray, int]:
    """``(weight, conv_group, gather, cols, c_total)``: the Conv's float64 weight (scale folded), its
    group, whether X must be gathered first, and which of the Conv input's ``c_total`` channels the
    stored columns are."""
    a = node.attrs
    w = node.dense_weight().astype(np.float64)
    m_stored, cpg, kh, kw = a.weight_shape
    s = np.ones(a.m_out) if node.scale is None else node.scale.astype(np.float64)
    n_stored = node.n_stored
    if a.group > 1 and node.out_channels is None and a.m_out == m_stored:
        return w * s[:, None, None, None], a.group, False, np.arange(n_stored), n_stored  # grouped Conv as is
    # group 1 over all input channels of X (grouped weights expand block-diagonally)
    gather = node.in_channels is not None and x_channels is None
    if node.in_channels is not None and not gather:
        cols, c_total = node.in_columns(), int(x_channels)
    else:
        cols, c_total = np.arange(n_stored), n_stored
    rows = node.out_rows()
    full = np.zeros((a.m_out, c_total, kh, kw))
    rows_per_group = m_stored // a.group
    for r in range(m_stored):
        g = r // rows_per_group
        full[rows[r], cols[g * cpg:(g + 1) * cpg]] = w[r] * s[rows[r]]
    return full, 1, gather, cols, c_total


def lower_node(node: TernaryConvNode, x_channels: int | None = None
               ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Standard nodes and their initializers computing ``node`` (named ``<name>.dense_*``; the Conv
    takes the node's name, the last node writes the node's output). ``x_channels``: X's channel
    count when known (without it and with ``in_channels``, a Gather picks the read channels)."""
    a = node.attrs
    prefix = node.name or node.output
    x_name = node.x
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    full, conv_group, gather, cols, c_total = _dense_weight(node, x_channels)
    if gather:
        gathered, idx_name = f"{prefix}.dense_gather.out", f"{prefix}.dense_gather.indices"
        inits.append(numpy_helper.from_array(node.in_columns(), idx_name))
        nodes.append(helper.make_node("Gather", [x_name, idx_name], [gathered], axis=1, name=f"{prefix}.dense_gather"))
        x_name = gathered
    if node.in_scale is not None or node.in_bias is not None:
        # The input affine as the dense export writes a pre-activation BN: a BatchNormalization over
        # all of the Conv's input channels, identity (1, 0) on the channels it ignores.
        bn_scale, bn_shift = np.ones(c_total, np.float32), np.zeros(c_total, np.float32)
        if node.in_scale is not None:
            bn_scale[cols] = node.in_scale
        if node.in_bias is not None:
            bn_shift[cols] = node.in_bias
        bn_names = [f"{prefix}.dense_bn.{k}" for k in ("scale", "B", "mean", "var")]
        values = (bn_scale, bn_shift, np.zeros(c_total, np.float32), np.ones(c_total, np.float32))
        inits.extend(numpy_helper.from_array(v, n) for n, v in zip(bn_names, values, strict=True))
        normalised = f"{prefix}.dense_bn.out"
        nodes.append(helper.make_node("BatchNormalization", [x_name, *bn_names], [normalised],
                                      name=f"{prefix}.dense_bn", epsilon=0.0))
        x_name = normalised
    bias = np.zeros(a.m_out) if node.bias is None else node.bias.astype(np.float64)
    w_name, b_name = f"{prefix}.dense_weight", f"{prefix}.dense_bias"
    inits.append(numpy_helper.from_array(full.astype(np.float32), w_name))
    inits.append(numpy_helper.from_array(bias.astype(np.float32), b_name))
    kh, kw = a.weight_shape[2:]
    relu = a.activation == "Relu"
    out = f"{prefix}.dense_conv.out" if relu or node.residual else node.output
    nodes.append(helper.make_node("Conv", [x_name, w_name, b_name], [out], name=prefix, kernel_shape=[kh, kw],
                                  strides=list(a.strides), pads=list(a.pads), dilations=list(a.dilations),
                                  group=conv_group))
    if node.residual:  # the skip connection stays an Add, and a Relu after it cannot fuse into the Conv
        added = f"{prefix}.dense_add.out" if relu else node.output
        nodes.append(helper.make_node("Add", [out, node.residual], [added], name=f"{prefix}.add"))
        out = added
    if relu:
        nodes.append(helper.make_node("Relu", [out], [node.output], name=f"{prefix}.relu"))
    return nodes, inits
