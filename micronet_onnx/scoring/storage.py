"""The storage rules: Appendix B (``params_paper``), every stored bit (``params_stored``), the dense
float32 equivalent and the improved reference scorer's alternative formats (docs/scoring.md).

Units: 32-bit parameters (a value of b bits counts b/32).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from micronet_onnx.format import encodings
from micronet_onnx.format.node import TernaryConvNode
from micronet_onnx.scoring.graph import (
    DTYPE_BITS,
    Graph,
    Source,
    attrs,
    is_standard,
    node_key,
    tensor_bits,
    tensor_bytes,
)
from micronet_onnx.scoring.report import Alternative, LayerRecord, TernaryLayerRecord
from micronet_onnx.scoring.shapes import Shapes, known, numel
from micronet_onnx.scoring.ternary import TernaryFacts, reads_x

__all__ = [
    "alternative_formats",
    "best_alternative",
    "bn_channels",
    "bn_storage",
    "cheapest_format",
    "dense_weight_info",
    "generic_storage",
    "stored",
    "ternary_record",
]

_ALT_VALUE_BITS = 16  # the improved reference scorer stores values (and indices) in 16 bits

# Inputs that are shapes / indices / axes rather than model values (params_paper counts them 0).
META_INPUTS: dict[str, frozenset[int]] = {
    **dict.fromkeys(
        ("Reshape", "Expand", "Tile", "Upsample", "Squeeze", "Unsqueeze", "TopK", "Split", "Gather",
         "GatherElements", "GatherND", "ScatterND", "ScatterElements", "CumSum", "Trilu"),
        frozenset({1}),
    ),
    **dict.fromkeys(
        ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
         "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"),
        frozenset({1}),
    ),
    "Slice": frozenset({1, 2, 3, 4}),
    "Pad": frozenset({1, 2, 3}),
    "Resize": frozenset({1, 2, 3}),
    "ConstantOfShape": frozenset({0}),
    "OneHot": frozenset({0, 1}),
    "Range": frozenset({0, 1, 2}),
}

# Ops through which a consumer's channel selection reaches back to a tensor (BN effective channels).
_CHANNELWISE_UNARY = frozenset({"Relu", "Identity", "Dropout", "Cast", "LeakyRelu", "Clip", "Sigmoid", "Tanh"})


def alternative_formats(n_weights: int, nnz: int, rows: int, two_valued: bool = True) -> dict[str, float]:
    """Parameter cost of the improved reference scorer's storage formats for one weight tensor.

    ``n_weights``: all weights of the layer (zeros included), ``nnz``: the non-zeros, ``rows``: output
    rows (channels). ``two_valued``: the non-zeros take at most two values (ternary), which the two mask
    formats need. Values and indices are 16 bit, masks 1 bit per entry.
    """
    n, z, m, b = int(n_weights), int(nnz), int(rows), _ALT_VALUE_BITS
    out: dict[str, float] = {
        # fp16 values of the non-zeros, plus a 1-bit location mask when anything is zero
        "fp16+mask": z * b / 32 + (n / 32 if z < n else 0.0),
        "CSR": float(math.ceil((z * (b + 1) + (m + 1) * b + 2 * b) / 32)),
        "CER": float(math.ceil((z * b + 2 * (m + 1) * b + 2 * b) / 32)),
    }
    if two_valued:
        out["2 masks"] = float(math.ceil((2 * n + 2 * b) / 32))
        out["mask+sign"] = float(math.ceil((n + z + 2 * b) / 32))
    return out


def cheapest_format(n_weights: int, nnz: int, rows: int, two_valued: bool = True) -> Alternative:
    """The cheapest of :func:`alternative_formats`."""
    alts = alternative_formats(n_weights, nnz, rows, two_valued)
    name = min(alts, key=lambda k: alts[k])
    return Alternative(name=name, params=alts[name], all=alts)


def best_alternative(n_weights: int, nnz: int, rows: int, two_valued: bool = True) -> dict[str, Any]:
    """The cheapest of :func:`alternative_formats` as ``{"name", "params", "all"}``."""
    return cheapest_format(n_weights, nnz, rows, two_valued).to_dict()


def stored(g: Graph, sources: list[Source]) -> float:
    """``params_stored`` of stored tensors: their packed bytes / 4."""
    return sum(tensor_bytes(g.const_tensor(n)) for n, _ in sources) / 4


def _value_params(g: Graph, sources: list[Source]) -> float:
    """Paper count of constants at their stored dtype (metadata counts 0)."""
    return sum(tensor_bits(g.const_tensor(n)) / 32 for n, role in sources if role == "value")


def ternary_record(base: LayerRecord, t: TernaryFacts) -> TernaryLayerRecord:
    """A TernaryConv's record with its Appendix B storage, its geometry and its alternative formats."""
    m_eff, eff, nnz = t.m_eff, t.eff_weights, t.nnz
    loc = eff / 32  # location mask over the effective weights (Appendix B)
    sgn = nnz / 32  # sign mask: sigma * N K^2 M / 32 = nnz / 32
    centroids = 1.0  # two fp16 centroids
    folded_bn = t.node.bias is not None or t.node.scale is not None
    bn = m_eff / 2 if folded_bn else 0.0  # folded BN: 16-bit bias per channel
    in_affine = (t.node.in_scale is not None) or (t.node.in_bias is not None)
    # The BN before the conv (in_scale / in_bias): Appendix B's BN rule, a 16-bit bias per effective
    # input channel with the scale merged, as for a standalone BatchNormalization.
    in_bn = t.n_eff / 2 if in_affine else 0.0
    folded_bias = t.node.m_out if folded_bn else 0
    in_bn_dense = 4 * t.node.n_stored if in_affine else 0  # the dense export's BatchNormalization: 4 vectors
    return TernaryLayerRecord(
        name=base.name,
        op_type=base.op_type,
        domain=base.domain,
        output_shape=base.output_shape,
        in_channels=[t.n_eff, t.c_in],
        out_channels=[m_eff, t.node.m_out],
        kernel=list(t.kernel),
        sparsity=1 - nnz / eff if eff else 1.0,
        params_paper=loc + sgn + centroids + bn + in_bn,
        params_paper_detail={
            "location_mask": loc,
            "sign_mask": sgn,
            "centroids": centroids,
            "bn_bias": bn,
            "in_bn_bias": in_bn,
        },
        params_stored=base.params_stored,
        dense_fp32_params=float(t.node.m_out * (t.c_in // t.group) * t.k2 + folded_bias + in_bn_dense),
        weight_format_params=loc + sgn + centroids,
        best_alternative=cheapest_format(eff, nnz, m_eff, t.two_valued),
        initializers=base.initializers,
        nnz=nnz,
        stored_channels=[t.node.n_stored, t.node.m_stored],
        group=t.group,
        weights_effective=eff,
        weights_stored=t.numel,
        sparsity_stored=1 - nnz / t.numel,
        encoding=t.node.encoding if base.op_type == "TernaryConv" else "int2",
        assignment_params=assignment_params(t.node) if base.op_type == "TernaryConv" else None,
        entropy_bound=entropy_bound(t.node),
    )


def assignment_params(node: TernaryConvNode) -> float:
    """The bytes of a TernaryConv's stored assignment (inputs 1 and 2, as read from the file) and its
    two float16 centroids, / 4: the part the encodings change, in 32-bit units."""
    return (node.stored_assignment_bytes() + int(node.centroids.nbytes)) / 4


def entropy_bound(node: TernaryConvNode) -> float:
    """The empirical entropy bound of a ternary layer's stored assignment (`encodings.entropy_bound_bits`,
    zero-order over its stored codes) plus its two 16-bit centroids, in 32-bit units."""
    return (encodings.entropy_bound_bits(node.codes) + 32) / 32


def bn_channels(node: onnx.NodeProto, shapes: Shapes) -> int | None:
    """A BatchNormalization's channel count: its scale's length, else the output's axis 1."""
    out_shape = shapes.get(node.output[0])
    scale_shape = shapes.get(node.input[1]) if len(node.input) > 1 else None
    if scale_shape and known(scale_shape) and len(scale_shape) == 1:
        return int(scale_shape[0])
    if known(out_shape) and len(out_shape) > 1:
        return int(out_shape[1])
    return None


def bn_storage(layer: LayerRecord, node: onnx.NodeProto, g: Graph, ternary: Mapping[str, TernaryFacts],
               shapes: Shapes) -> None:
    """A standalone BatchNormalization: Appendix B's ``M/2`` over the channels its consumers read."""
    channels = bn_channels(node, shapes)
    if channels is None:
        layer.shape_unknown = True
        return
    read = _channels_read(node.output[0], g, ternary, channels)
    m_eff = channels if read is None else len(read)
    layer.in_channels = [channels, channels]
    layer.out_channels = [m_eff, channels]
    layer.params_paper = m_eff / 2
    layer.params_paper_detail = {"bn_bias": m_eff / 2}
    layer.dense_fp32_params = float(
        sum(numel(shapes.get(n)) or 0 for n in node.input[1:5] if n and g.trace(n) is not None)
    )


def _channels_read(
    name: str, g: Graph, ternary: Mapping[str, TernaryFacts], channels: int, depth: int = 0
) -> set[int] | None:
    """Channels (axis 1) of tensor ``name`` that some consumer reads; None = all (or unknown)."""
    if name in g.graph_outputs or depth > 8:
        return None
    used: set[int] = set()
    for node, idx in g.consumers.get(name, []):
        if reads_x(node, idx):
            info = ternary.get(node_key(node))
            if info is None:
                return None
            used.update(int(c) for c in info.x_channels_read)
        elif node.op_type == "Conv" and is_standard(node) and idx == 0 and len(node.input) > 1:
            w = g.value(node.input[1])
            groups = int(attrs(node).get("group", 1))
            if w is None or w.ndim < 3 or w.shape[1] * groups != channels:
                return None
            mg, cg = w.shape[0] // groups, w.shape[1]
            for gi in range(groups):
                nz = np.any(w[gi * mg : (gi + 1) * mg] != 0, axis=tuple(i for i in range(w.ndim) if i != 1))
                used.update(int(gi * cg + c) for c in np.flatnonzero(nz))
        elif node.op_type in _CHANNELWISE_UNARY and is_standard(node) and idx == 0:
            sub = _channels_read(node.output[0], g, ternary, channels, depth + 1)
            if sub is None:
                return None
            used |= sub
        else:
            return None
    return used


def generic_storage(layer: LayerRecord, node: onnx.NodeProto, g: Graph, shapes: Shapes,
                    new_sources: list[Source]) -> None:
    """Any other node: the values it is the first to read, at their stored dtype; metadata inputs 0."""
    meta_idx = META_INPUTS.get(node.op_type, frozenset()) if is_standard(node) else frozenset()
    meta_names = {n for i, n in enumerate(node.input) if i in meta_idx and n}
    paper = 0.0
    dense = 0.0
    for name in dict.fromkeys(n for n in node.input if n):
        src = g.trace(name)
        if src is None or name in meta_names:
            continue
        mine = [s for s in src if s in new_sources]
        paper += _value_params(g, mine)
        if src[0] in new_sources:
            dense += float(numel(shapes.get(name)) or numel(shapes.get(src[0][0])) or 0)
    layer.params_paper = paper
    layer.params_paper_detail = {"values": paper} if paper else {}
    layer.dense_fp32_params = dense


def weight_bits(g: Graph, name: str, dense_bits: int | None) -> int:
    """Bits a dense weight is multiplied at: ``dense_bits``, else its stored dtype (32 if not constant)."""
    if dense_bits is not None:
        return int(dense_bits)
    src = g.trace(name)
    if not src:
        return 32
    t = g.const_tensor(src[0][0])
    return DTYPE_BITS.get(t.data_type, 32)


def dense_weight_info(layer: LayerRecord, g: Graph, wname: str, rows: int) -> None:
    """Sparsity, own-format cost and best alternative of a dense weight (a numeric constant)."""
    w = g.value(wname)
    if w is None:
        return
    w = np.asarray(w)
    if w.dtype.kind not in "fiuc":
        return
    nz = w != 0
    nnz, count = int(nz.sum()), int(w.size)
    layer.nnz = nnz
    layer.sparsity = 1 - nnz / count if count else 0.0
    distinct = np.unique(w[nz]).size if nnz else 0
    src = g.trace(wname)
    layer.weight_format_params = tensor_bits(g.const_tensor(src[0][0])) / 32 if src else None
    layer.best_alternative = cheapest_format(count, nnz, rows, distinct <= 2)
