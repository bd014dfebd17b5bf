"""Operation counting: an op-type -> counter registry (MicroNet Challenge rules, docs/scoring.md).

`COUNTERS` maps a node's key (`op_key`: the op type for the default domain, ``domain::op_type``
otherwise) to a small function that records the node's multiplications and additions in
``ctx.ops`` (and, for a layer with a weight, its geometry in ``ctx.layer``). A node whose key is not
in the registry counts 0 ops and is reported in ``unknown_ops``. Register a new op with
``@counter("OpType")``; a counter that needs a shape it does not have sets ``layer.shape_unknown``.

Units: a multiplication or addition on b-bit operands counts b/32 operations; comparisons count as
multiplications (the MicroNet Challenge counts a ReLU as one multiplication).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from micronet_onnx.scoring.graph import Graph, attrs, is_standard, node_key
from micronet_onnx.scoring.options import ScoreOptions
from micronet_onnx.scoring.report import LayerRecord
from micronet_onnx.scoring.shapes import Shape, Shapes, known, numel
from micronet_onnx.scoring.storage import bn_channels, dense_weight_info, weight_bits
from micronet_onnx.scoring.ternary import COUNTER_KEY, TernaryFacts

__all__ = ["COUNTERS", "CountContext", "Counter", "OpTally", "count_node", "counter", "op_key", "tree_adder_bits"]


def tree_adder_bits(n_terms: int, base_bits: int = 16, max_bits: int = 32) -> int:
    """Bit-weighted additions of summing ``n_terms`` values in a binary tree.

    Level 1 adds pairs at ``base_bits``, each next level one bit wider (capped at ``max_bits``); a
    level of n terms makes n // 2 additions and leaves ceil(n / 2) terms, so n terms cost n - 1
    additions in all. Returns the sum over additions of their bit width.
    """
    total, n, bits = 0, int(n_terms), int(base_bits)
    while n > 1:
        pairs = n // 2
        total += pairs * bits
        n -= pairs
        bits = min(bits + 1, max(int(max_bits), int(base_bits)))
    return total


class OpTally:
    """Operation entries of one layer: (category, kind, count, bits) with kind 'mult' or 'add'."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, float, float]] = []

    def mult(self, category: str, count: float, bits: float) -> None:
        if count:
            self.entries.append((category, "mult", float(count), float(bits)))

    def add(self, category: str, count: float, bits: float) -> None:
        if count:
            self.entries.append((category, "add", float(count), float(bits)))

    def add_bitweighted(self, category: str, count: float, bit_sum: float) -> None:
        """Additions given as their summed bit width (tree adders)."""
        if count:
            self.entries.append((category, "add", float(count), float(bit_sum) / float(count)))

    @property
    def mults(self) -> float:
        return sum(c for _, k, c, _ in self.entries if k == "mult")

    @property
    def adds(self) -> float:
        return sum(c for _, k, c, _ in self.entries if k == "add")

    @property
    def ops(self) -> float:
        return sum(c * b / 32 for _, _, c, b in self.entries)

    def by_category(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for cat, _, c, b in self.entries:
            out[cat] = out.get(cat, 0.0) + c * b / 32
        return out


@dataclass
class CountContext:
    """What a counter sees of one node: the graph, the shapes, the options, its layer and its tally."""

    node: onnx.NodeProto
    g: Graph
    shapes: Shapes
    opts: ScoreOptions
    layer: LayerRecord
    ops: OpTally
    ternary: Mapping[str, TernaryFacts]

    def shape(self, index: int) -> Shape | None:
        """Shape of input ``index`` (None when absent or unknown)."""
        node = self.node
        return self.shapes.get(node.input[index]) if len(node.input) > index and node.input[index] else None

    @property
    def out_shape(self) -> Shape | None:
        return self.shapes.get(self.node.output[0]) if self.node.output else None

    @property
    def n_out(self) -> int | None:
        return numel(self.out_shape)

    def need(self, n: int | None) -> bool:
        """False (and the layer marked ``shape_unknown``) when a count the rule needs is unknown."""
        if n is None:
            self.layer.shape_unknown = True
            return False
        return True


Counter = Callable[[CountContext], None]
COUNTERS: dict[str, Counter] = {}


def counter(*keys: str) -> Callable[[Counter], Counter]:
    """Register the decorated function as the counter of the given node keys."""

    def register(fn: Counter) -> Counter:
        for key in keys:
            COUNTERS[key] = fn
        return fn

    return register


def op_key(node: onnx.NodeProto) -> str:
    """The registry key of a node: its op type in the default domain, ``domain::op_type`` elsewhere."""
    return node.op_type if is_standard(node) else f"{node.domain}::{node.op_type}"


def count_node(ctx: CountContext) -> bool:
    """Count one node with its registered counter; False (0 ops, ``layer.unknown``) when it has none."""
    fn = COUNTERS.get(op_key(ctx.node))
    if fn is None:
        ctx.layer.unknown = True
        return False
    fn(ctx)
    return True


# ----------------------------------------------------------------------------------------------
# TernaryConv and BatchNormalization
# ----------------------------------------------------------------------------------------------


@counter(COUNTER_KEY)
def _ternary_conv(ctx: CountContext) -> None:
    """Per output position and live row: 2 centroid mults, nnz_r - 1 adds (or a tree adder), the
    folded BN's bias add (and scale mult when not merged), the fused ReLU; the input BN per read
    element of X; the residual add per output element."""
    t, ops, opts = ctx.ternary[node_key(ctx.node)], ctx.ops, ctx.opts
    out_shape = ctx.out_shape
    if not known(out_shape) or len(out_shape) != 4:
        ctx.layer.shape_unknown = True
        return
    b, _, oh, ow = out_shape
    positions = b * oh * ow
    m_eff = t.m_eff
    ops.mult("ternary_mult", 2 * positions * m_eff, opts.mult_bits)
    rows = t.nnz_rows[t.nnz_rows > 0]
    n_adds = int((rows - 1).sum())
    if opts.tree_adder:
        vals, counts = np.unique(rows, return_counts=True)
        bit_sum = sum(
            int(c) * tree_adder_bits(int(v), opts.tree_base_bits, opts.add_bits)
            for v, c in zip(vals, counts, strict=True)
        )
        ops.add_bitweighted("ternary_add", positions * n_adds, positions * bit_sum)
    else:
        ops.add("ternary_add", positions * n_adds, opts.add_bits)
    if (t.node.scale is not None) and not opts.merge_scale:
        ops.mult("scale_mult", positions * m_eff, opts.mult_bits)
    if (t.node.bias is not None):
        ops.add("bias_add", positions * m_eff, opts.add_bits)
    # With a residual, a dead output channel is act(bias + residual), no longer a constant: the add and
    # the activation run on every output element.
    if bool(t.node.residual):
        ops.add("residual_add", positions * t.node.m_out, opts.add_bits)
    if t.node.attrs.activation == "Relu":
        ops.mult("activation", positions * (t.node.m_out if bool(t.node.residual) else m_eff), opts.mult_bits)
    if (t.node.in_scale is not None) or (t.node.in_bias is not None):
        if t.x_shape is None:
            ctx.layer.shape_unknown = True
            return
        normalised = t.x_shape[0] * t.n_eff * t.x_shape[2] * t.x_shape[3]  # the read channels of X
        if (t.node.in_scale is not None):
            ops.mult("bn_mult", normalised, opts.mult_bits)
        if (t.node.in_bias is not None):
            ops.add("bn_add", normalised, opts.add_bits)


@counter("BatchNormalization")
def _batch_norm(ctx: CountContext) -> None:
    """One multiply-add per element (the storage pass has flagged an unknown channel count)."""
    if bn_channels(ctx.node, ctx.shapes) is None:
        return
    if ctx.need(ctx.n_out):
        ctx.ops.mult("bn_mult", ctx.n_out, ctx.opts.mult_bits)
        ctx.ops.add("bn_add", ctx.n_out, ctx.opts.add_bits)


# ----------------------------------------------------------------------------------------------
# Dense weight layers
# ----------------------------------------------------------------------------------------------


def _dense(ctx: CountContext, rows: int, k: int, n_out: int) -> None:
    """A dense weight layer (Conv, Gemm): weight storage, k mults and k-1 adds per output, bias adds."""
    node = ctx.node
    dense_weight_info(ctx.layer, ctx.g, node.input[1], rows)
    ctx.ops.mult("dense_mult", n_out * k, weight_bits(ctx.g, node.input[1], ctx.opts.dense_bits))
    ctx.ops.add("dense_add", n_out * (k - 1), ctx.opts.add_bits)
    if len(node.input) > 2 and node.input[2]:
        ctx.ops.add("bias_add", n_out, ctx.opts.add_bits)


@counter("Conv")
def _conv(ctx: CountContext) -> None:
    w_shape = ctx.shape(1)
    if not ctx.need(ctx.n_out) or not known(w_shape):
        ctx.layer.shape_unknown = True
        return
    k = int(np.prod(w_shape[1:]))
    cin = int(w_shape[1]) * int(attrs(ctx.node).get("group", 1))
    ctx.layer.out_channels = [int(w_shape[0]), int(w_shape[0])]
    ctx.layer.in_channels = [cin, cin]
    ctx.layer.kernel = [int(v) for v in w_shape[2:]]
    _dense(ctx, int(w_shape[0]), k, ctx.n_out)


@counter("Gemm")
def _gemm(ctx: CountContext) -> None:
    a_shape, b_shape = ctx.shape(0), ctx.shape(1)
    if not ctx.need(ctx.n_out) or not known(a_shape) or not known(b_shape):
        ctx.layer.shape_unknown = True
        return
    a = attrs(ctx.node)
    k = int(a_shape[0] if int(a.get("transA", 0)) else a_shape[1])
    rows = int(b_shape[0] if int(a.get("transB", 0)) else b_shape[1])
    ctx.layer.in_channels = [k, k]
    ctx.layer.out_channels = [rows, rows]
    _dense(ctx, rows, k, ctx.n_out)


@counter("MatMul")
def _matmul(ctx: CountContext) -> None:
    """K mults and K-1 adds per output; a constant B is the layer's weight (else a constant A)."""
    a_shape, b_shape = ctx.shape(0), ctx.shape(1)
    if not ctx.need(ctx.n_out) or not known(a_shape):
        ctx.layer.shape_unknown = True
        return
    node, g, opts = ctx.node, ctx.g, ctx.opts
    k = int(a_shape[-1])
    if g.trace(node.input[1]) is not None and known(b_shape):
        rows = int(b_shape[-1])
        ctx.layer.in_channels = [k, k]
        ctx.layer.out_channels = [rows, rows]
        dense_weight_info(ctx.layer, g, node.input[1], rows)
        bits = weight_bits(g, node.input[1], opts.dense_bits)
    elif g.trace(node.input[0]) is not None:
        bits = weight_bits(g, node.input[0], opts.dense_bits)
    else:
        bits = opts.dense_bits or 32
    ctx.ops.mult("dense_mult", ctx.n_out * k, bits)
    ctx.ops.add("dense_add", ctx.n_out * (k - 1), opts.add_bits)


# ----------------------------------------------------------------------------------------------
# Pooling, reductions, variadic and elementwise ops
# ----------------------------------------------------------------------------------------------


@counter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx: CountContext) -> None:
    n_in = numel(ctx.shape(0))
    if not ctx.need(ctx.n_out) or not ctx.need(n_in):
        return
    spatial = n_in // ctx.n_out
    if ctx.node.op_type == "GlobalAveragePool":
        ctx.ops.mult("pool", ctx.n_out, ctx.opts.mult_bits)  # one division per channel
        ctx.ops.add("pool", ctx.n_out * (spatial - 1), ctx.opts.add_bits)
    else:
        ctx.ops.mult("pool", ctx.n_out * (spatial - 1), ctx.opts.mult_bits)  # comparisons


@counter("AveragePool", "MaxPool")
def _window_pool(ctx: CountContext) -> None:
    if not ctx.need(ctx.n_out):
        return
    window = int(np.prod(attrs(ctx.node).get("kernel_shape", [1])))
    if ctx.node.op_type == "AveragePool":
        ctx.ops.add("pool", ctx.n_out * (window - 1), ctx.opts.add_bits)
        ctx.ops.mult("pool", ctx.n_out, ctx.opts.mult_bits)
    else:
        ctx.ops.mult("pool", ctx.n_out * (window - 1), ctx.opts.mult_bits)


@counter("ReduceMean", "ReduceSum")
def _reduce(ctx: CountContext) -> None:
    n_in = numel(ctx.shape(0))
    if not ctx.need(ctx.n_out) or not ctx.need(n_in):
        return
    ctx.ops.add("reduce", n_in - ctx.n_out, ctx.opts.add_bits)
    if ctx.node.op_type == "ReduceMean":
        ctx.ops.mult("reduce", ctx.n_out, ctx.opts.mult_bits)


@counter("Sum", "Max", "Min", "Mean")
def _variadic(ctx: CountContext) -> None:
    """n inputs: n-1 adds (Sum, Mean, which adds a division) or n-1 comparisons (Max, Min)."""
    if not ctx.need(ctx.n_out):
        return
    op, n_out = ctx.node.op_type, ctx.n_out
    k = max(len([i for i in ctx.node.input if i]) - 1, 0)
    if op in ("Sum", "Mean"):
        ctx.ops.add("elementwise", n_out * k, ctx.opts.add_bits)
        if op == "Mean":
            ctx.ops.mult("elementwise", n_out, ctx.opts.mult_bits)
    else:
        ctx.ops.mult("elementwise", n_out * k, ctx.opts.mult_bits)


@counter("DequantizeLinear", "QuantizeLinear")
def _quantize(ctx: CountContext) -> None:
    """On activations (a constant's weight path is folded away): one multiply-add per element."""
    if ctx.need(ctx.n_out):
        ctx.ops.mult("elementwise", ctx.n_out, ctx.opts.mult_bits)
        ctx.ops.add("elementwise", ctx.n_out, ctx.opts.add_bits)


# Elementwise op -> (mults per element, adds per element).
ELEMENTWISE: dict[str, tuple[int, int]] = {
    "Relu": (1, 0),
    "LeakyRelu": (2, 0),
    "PRelu": (2, 0),
    "Clip": (2, 0),
    "Sigmoid": (2, 1),
    "Add": (0, 1),
    "Sub": (0, 1),
    "Mul": (1, 0),
    "Div": (1, 0),
    "Neg": (0, 0),
    "Abs": (0, 0),
}
_ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid"})


@counter(*ELEMENTWISE)
def _elementwise(ctx: CountContext) -> None:
    """`ELEMENTWISE` per output element; an Add of two run-time tensors is a residual add."""
    if not ctx.need(ctx.n_out):
        return
    node = ctx.node
    mults, adds = ELEMENTWISE[node.op_type]
    cat = "activation" if node.op_type in _ACTIVATIONS else "elementwise"
    if node.op_type == "Add" and len(node.input) == 2 and all(ctx.g.trace(i) is None for i in node.input):
        cat = "residual_add"
    ctx.ops.mult(cat, ctx.n_out * mults, ctx.opts.mult_bits)
    ctx.ops.add(cat, ctx.n_out * adds, ctx.opts.add_bits)


# Ops that move or reshape data without arithmetic.
ZERO_OPS = frozenset({
    "Identity", "Cast", "CastLike", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat",
    "Split", "Slice", "Gather", "GatherElements", "GatherND", "Shape", "Size", "Constant", "ConstantOfShape",
    "Dropout", "Pad", "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
})  # fmt: skip


@counter(*ZERO_OPS)
def _data_movement(ctx: CountContext) -> None:
    """No arithmetic: 0 ops (but a known op)."""
