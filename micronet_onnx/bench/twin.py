"""The dense twin: a graph pass that replaces each ``micronet::TernaryConv`` by its standard-ONNX
lowering, so the same function runs in stock onnxruntime (the other side of every benchmark)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from micronet_onnx.format import spec as tf


def _tensor_shapes(graph: onnx.GraphProto) -> dict[str, list[int | None]]:
    shapes: dict[str, list[int | None]] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return shapes


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dense_nodes(node: onnx.NodeProto, inits: dict[str, np.ndarray], x_channels: int | None,
                 ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Standard nodes (and their initializers) computing what one TernaryConv node computes."""
    attrs = tf.ConvAttrs.from_onnx(_attrs(node))
    names = list(node.input) + [""] * (tf.MAX_INPUTS - len(node.input))

    def const(idx: int) -> np.ndarray | None:
        name = names[idx]
        if not name:
            return None
        if name not in inits:
            raise tf.FormatError(f"{node.name}: input {tf.INPUT_NAMES[idx]} ({name!r}) is not an initializer")
        return inits[name]

    mask, sign, centroids = const(tf.IN_MASK), const(tf.IN_SIGN), const(tf.IN_CENTROIDS)
    scale, bias = const(tf.IN_SCALE), const(tf.IN_BIAS)
    in_ch, out_ch = const(tf.IN_IN_CHANNELS), const(tf.IN_OUT_CHANNELS)
    in_scale, in_bias = const(tf.IN_IN_SCALE), const(tf.IN_IN_BIAS)
    residual = names[tf.IN_RESIDUAL]
    w = tf.decode_weight(mask, sign, centroids, attrs.weight_shape).astype(np.float64)
    m_stored, cpg, kh, kw = attrs.weight_shape
    group, m_out = attrs.group, attrs.m_out
    rows = np.arange(m_stored) if out_ch is None else out_ch.astype(np.int64)
    s = np.ones(m_out) if scale is None else scale.astype(np.float64)
    b = np.zeros(m_out) if bias is None else bias.astype(np.float64)

    prefix = node.name or node.output[0]
    x_name = node.input[0]
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    identity_rows = out_ch is None and m_out == m_stored
    if group > 1 and identity_rows:
        full = w * s[:, None, None, None]  # grouped Conv as is
        conv_group = group
    else:
        # group 1 over all input channels of X (grouped weights expand block-diagonally)
        n_stored = cpg * group
        if in_ch is not None:
            if x_channels is None:  # X's channel count unknown: gather the read channels first
                gathered = f"{prefix}.dense_gather.out"
                idx_name = f"{prefix}.dense_gather.indices"
                new_inits.append(numpy_helper.from_array(in_ch.astype(np.int64), idx_name))
                new_nodes.append(helper.make_node("Gather", [x_name, idx_name], [gathered], axis=1,
                                                  name=f"{prefix}.dense_gather"))
                x_name, cols = gathered, np.arange(n_stored)
                c_total = n_stored
            else:
                cols, c_total = in_ch.astype(np.int64), x_channels
        else:
            cols, c_total = np.arange(n_stored), n_stored
        full = np.zeros((m_out, c_total, kh, kw))
        rows_per_group = m_stored // group
        for r in range(m_stored):
            g = r // rows_per_group
            full[rows[r], cols[g * cpg:(g + 1) * cpg]] = w[r] * s[rows[r]]
        conv_group = 1
    if in_scale is not None or in_bias is not None:
        # The input affine as the dense export writes a pre-activation BN: a BatchNormalization over
        # all of X's channels (the one the Conv reads), identity (1, 0) on the channels it ignores.
        n_stored = cpg * group
        if conv_group == 1:
            x_cols, x_total = cols, c_total
        else:
            x_cols, x_total = np.arange(n_stored), n_stored
        bn_scale, bn_shift = np.ones(x_total, np.float32), np.zeros(x_total, np.float32)
        if in_scale is not None:
            bn_scale[x_cols] = in_scale
        if in_bias is not None:
            bn_shift[x_cols] = in_bias
        bn_names = [f"{prefix}.dense_bn.{k}" for k in ("scale", "B", "mean", "var")]
        for name, v in zip(bn_names, (bn_scale, bn_shift, np.zeros(x_total, np.float32),
                                      np.ones(x_total, np.float32)), strict=True):
            new_inits.append(numpy_helper.from_array(v, name))
        normalised = f"{prefix}.dense_bn.out"
        new_nodes.append(helper.make_node("BatchNormalization", [x_name, *bn_names], [normalised],
                                          name=f"{prefix}.dense_bn", epsilon=0.0))
        x_name = normalised
    w_name, b_name = f"{prefix}.dense_weight", f"{prefix}.dense_bias"
    new_inits.append(numpy_helper.from_array(full.astype(np.float32), w_name))
    new_inits.append(numpy_helper.from_array(b.astype(np.float32), b_name))
    conv_attrs = dict(kernel_shape=[kh, kw], strides=list(attrs.strides), pads=list(attrs.pads),
                      dilations=list(attrs.dilations), group=conv_group)
    relu = attrs.activation == "Relu"
    conv_out = f"{prefix}.dense_conv.out" if relu or residual else node.output[0]
    new_nodes.append(helper.make_node("Conv", [x_name, w_name, b_name], [conv_out], name=f"{prefix}",
                                      **conv_attrs))
    if residual:  # the skip connection stays an Add, and a Relu after it cannot fuse into the Conv
        added = f"{prefix}.dense_add.out" if relu else node.output[0]
        new_nodes.append(helper.make_node("Add", [conv_out, residual], [added], name=f"{prefix}.add"))
        conv_out = added
    if relu:
        new_nodes.append(helper.make_node("Relu", [conv_out], [node.output[0]], name=f"{prefix}.relu"))
    return new_nodes, new_inits


def dense_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every ``micronet::TernaryConv`` replaced by standard ONNX ops.

    Each node becomes ``Conv`` (weight = decoded ternary weight x ``scale``, scattered into a full
    ``[M_out, C, kH, kW]`` weight through the channel maps; Conv bias = ``bias``; dead output channels
    have a zero filter and their bias) followed by ``Relu`` when the node fuses it. A node with
    ``in_scale``/``in_bias`` gets a ``BatchNormalization`` before the Conv (scale = ``in_scale``, B =
    ``in_bias`` scattered to X's channels, 1 and 0 on the unread ones; mean 0, var 1, epsilon 0), and
    a node with ``residual`` an ``Add`` after it (then the ``Relu``): the layout of the dense export.
    The folding is done in float64 and rounded once, so the twin computes the same function up to
    float32 rounding. When ``in_channels`` is present and X's channel count is not recorded in the
    graph, a ``Gather`` picks the read channels first. The ``micronet`` domain import is dropped; the
    result runs in stock onnxruntime.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    shapes = _tensor_shapes(graph)
    used: set[str] = set()
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.domain == tf.DOMAIN and node.op_type == tf.OP_TYPE:
            shape = shapes.get(node.input[0])
            x_channels = shape[1] if shape is not None and len(shape) == 4 else None
            new_nodes, new_inits = _dense_nodes(node, inits, x_channels)
            nodes.extend(new_nodes)
            graph.initializer.extend(new_inits)
        else:
            nodes.append(node)
    for node in nodes:
        used.update(node.input)
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    imports = [o for o in out.opset_import if o.domain != tf.DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(imports)
    for prop in out.metadata_props:
        if prop.key == "micronet.export_kind":
            prop.value = "dense-twin"
    return out

