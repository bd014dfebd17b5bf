"""A BatchNormalization written as ``Mul(x, a) -> Add(., b)``: scored as the BatchNormalization it is.

The portable export writes each block's pre-activation BatchNorm this way (its folded affine, two
vectors instead of four), and graph simplifiers rewrite BatchNormalization the same way. Appendix B
counts a standalone BN as ``M/2`` (the shift, the scale merged into the next conv); a per-channel
affine pair is that same layer, so it must not score as two dense vectors. The Mul carries the count,
the Add carries none (its shift is part of it); the operations stay one mult and one add per element.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from micronet_onnx.scoring.graph import Graph, is_standard
from micronet_onnx.scoring.report import LayerRecord
from micronet_onnx.scoring.shapes import Shapes
from micronet_onnx.scoring.storage import _channels_read  # the rule bn_storage uses

__all__ = ["affine_pair", "affine_storage", "shift_storage"]


def _channel_vector(g: Graph, node: onnx.NodeProto) -> tuple[str, int] | None:
    """(run-time input, channel count) when ``node`` combines one run-time tensor with one constant
    of shape ``[C, 1, 1]`` or ``[1, C, 1, 1]`` (a per-channel vector of an NCHW tensor)."""
    if len(node.input) != 2 or not is_standard(node):
        return None
    consts = [g.value(n) if g.trace(n) is not None else None for n in node.input]
    if sum(c is not None for c in consts) != 1:
        return None
    value = next(c for c in consts if c is not None)
    shape = tuple(np.shape(value))
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3 or shape[1:] != (1, 1):
        return None
    runtime = node.input[0] if consts[1] is not None else node.input[1]
    return runtime, int(shape[0])


def affine_pair(g: Graph, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """The Add that completes the per-channel affine begun by Mul ``node``, or None."""
    if node.op_type != "Mul" or _channel_vector(g, node) is None:
        return None
    consumers = g.consumers.get(node.output[0], [])
    if len(consumers) != 1 or node.output[0] in g.graph_outputs:
        return None
    add = consumers[0][0]
    add_vec = _channel_vector(g, add) if add.op_type == "Add" else None
    if add_vec is None or add_vec[0] != node.output[0] or add_vec[1] != _channel_vector(g, node)[1]:
        return None
    return add


def affine_storage(layer: LayerRecord, mul: onnx.NodeProto, add: onnx.NodeProto, g: Graph,
                   ternary: Mapping, shapes: Shapes) -> None:
    """The Mul of an affine pair: Appendix B's ``M/2`` over the channels the Add's consumers read,
    as `storage.bn_storage` charges a BatchNormalization."""
    channels = _channel_vector(g, mul)[1]
    read = _channels_read(add.output[0], g, ternary, channels)
    m_eff = channels if read is None else len(read)
    layer.in_channels = [channels, channels]
    layer.out_channels = [m_eff, channels]
    layer.params_paper = m_eff / 2
    layer.params_paper_detail = {"bn_bias": m_eff / 2}
    layer.dense_fp32_params = float(2 * channels)


def shift_storage(layer: LayerRecord) -> None:
    """The Add of an affine pair: its shift is counted with the Mul."""
    layer.params_paper = 0.0
    layer.params_paper_detail = {}
    layer.dense_fp32_params = 0.0
