"""Reading a portable export's ternary convs back: a standard Conv whose weight is the INT2 lookup chain.

The chain (written by ``export/portable.py``, described in docs/export.md)::

    INT2 codes -> Cast(INT64) [-> Pad -> Gather(axis 0, out_index)] [-> Gather(axis 1, in_index)]
               -> Gather([0, w_p, -w_n]) -> Mul(scale [M, 1, 1, 1]) -> Conv(x, ., bias)

is read back into the `TernaryConvNode` the TernaryConv export writes for the same layer (stored
codes, centroids, channel maps, folded scale/bias), so Appendix B counts it exactly as it counts that
node and a portable file's ``params_paper`` equals the TernaryConv file's. Anything else returns
None and the Conv is scored as a dense one.
"""

from __future__ import annotations

import numpy as np
import onnx

from micronet_onnx.format import spec
from micronet_onnx.format.node import TernaryConvNode
from micronet_onnx.scoring.graph import Graph, attrs, is_standard

__all__ = ["read_portable_conv"]


def _producer(g: Graph, name: str, op: str) -> onnx.NodeProto | None:
    node = g.producer.get(name)
    return node if node is not None and node.op_type == op and is_standard(node) else None


def _stored_positions(index: np.ndarray, pad: int) -> np.ndarray | None:
    """The channels an index map keeps (in stored order), None unless it is a channel map: stored
    positions 0..k-1 in increasing channel order, every other entry the pad position ``pad``."""
    index = np.asarray(index, dtype=np.int64).ravel()
    kept = np.flatnonzero(index != pad)
    return kept.astype(np.int32) if np.array_equal(index[kept], np.arange(kept.size)) else None


def _codes_chain(g: Graph, name: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int] | None:
    """(stored int8 codes, out_channels, in_channels, M) behind the lookup's index tensor ``name``."""
    maps: dict[int, np.ndarray] = {}
    node = g.producer.get(name)
    while node is not None and node.op_type == "Gather" and is_standard(node):
        axis = int(attrs(node).get("axis", 0))
        index = g.value(node.input[1])
        if axis in maps or axis not in (0, 1) or index is None:
            return None
        maps[axis] = index
        node = g.producer.get(node.input[0])
    pads = None
    if node is not None and node.op_type == "Pad" and is_standard(node):
        pads = g.value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if pads is None or len(node.input) > 2 and any(node.input[2:]):
            return None
        node = g.producer.get(node.input[0])
    if node is None or node.op_type != "Cast" or not is_standard(node):
        return None
    codes_t = g.const_tensor(node.input[0])
    if codes_t is None or codes_t.data_type != getattr(onnx.TensorProto, "INT2", -1):
        return None
    codes = np.asarray(g.array(node.input[0])).astype(np.int8)
    out_channels = in_channels = None
    for axis, index in maps.items():
        if pads is None or int(np.ravel(pads)[4 + axis]) != 1:
            return None
        kept = _stored_positions(index, codes.shape[axis])
        if kept is None or kept.size != codes.shape[axis]:
            return None
        out_channels, in_channels = (kept, in_channels) if axis == 0 else (out_channels, kept)
    return codes, out_channels, in_channels, int(np.size(maps[0])) if 0 in maps else int(codes.shape[0])


def read_portable_conv(g: Graph, conv: onnx.NodeProto) -> TernaryConvNode | None:
    """The `TernaryConvNode` a portable export's Conv stands for, or None when it is not one."""
    if conv.op_type != "Conv" or not is_standard(conv) or len(conv.input) < 2:
        return None
    mul = _producer(g, conv.input[1], "Mul")
    lookup = _producer(g, mul.input[0], "Gather") if mul is not None else None
    if lookup is None or int(attrs(lookup).get("axis", 0)) != 0:
        return None
    table, scale = g.value(lookup.input[0]), g.value(mul.input[1])
    chain = _codes_chain(g, lookup.input[1])
    if chain is None or table is None or scale is None or np.shape(table) != (3,) or table[0] != 0:
        return None
    codes, out_channels, in_channels, m = chain
    a = attrs(conv)
    nd = codes.ndim - 2
    bias = g.value(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    try:
        conv_attrs = spec.ConvAttrs(
            weight_shape=tuple(int(s) for s in codes.shape),
            strides=tuple(int(v) for v in a.get("strides", [1] * nd)),
            pads=tuple(int(v) for v in a.get("pads", [0] * 2 * nd)),
            dilations=tuple(int(v) for v in a.get("dilations", [1] * nd)),
            group=int(a.get("group", 1)),
            num_output_channels=m if out_channels is not None else 0,
            activation="",
        ).validate()
        return TernaryConvNode(
            name=conv.name, x=conv.input[0], output=conv.output[0], attrs=conv_attrs, codes=codes,
            centroids=np.array([table[2], table[1]], dtype=np.float16),
            scale=np.asarray(scale, dtype=np.float16).ravel(),
            bias=None if bias is None else np.asarray(bias, dtype=np.float16).ravel(),
            in_channels=in_channels, out_channels=out_channels).validate()
    except (spec.FormatError, ValueError, TypeError):
        return None

