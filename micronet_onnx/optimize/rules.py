"""The four fusions around one TernaryConv node, each proved before it is made.

Each rule looks at the node's neighbour and returns a `Plan` (a fusion it can make, applied by the
pass), a `Refusal` (a neighbour that looks fusable, and why it is not), or None (nothing to try):

- **input affine**: a per-channel affine producing X folds into ``in_scale``/``in_bias``. The format
  applies them before the zero padding, which is what a BatchNorm before a padded Conv does, so this
  is exact; the affine is indexed by stored input channel through ``in_channels`` and composed with
  an existing input affine (``s * (a x + b) + t``).
- **output affine**: a per-channel affine reading Y folds into ``scale``/``bias`` only when the
  composed values are exactly float16 (the file's type for them), so folding never rounds; never
  after the node's Relu, and with a residual only a pure shift (a scale would scale the residual).
- **relu**: a Relu reading Y becomes ``activation`` when the node has none (after a fused residual
  this is ``act(... + residual)``, the Add-then-Relu it replaces).
- **residual**: ``Add(Y, r)`` with ``r`` of provably exactly Y's shape (no broadcasting) becomes the
  ``residual`` input when the node has neither a residual nor an activation.

Every rule requires the fused tensor (X for the first, Y for the others) to have no other reader
and not to be a graph output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from micronet_onnx.format import spec
from micronet_onnx.format.node import TernaryConvNode
from micronet_onnx.optimize import report as r
from micronet_onnx.optimize.affine import AFFINE_OPS, Affine, as_affine, is_standard
from micronet_onnx.optimize.graph import NodeIO, Uses
from micronet_onnx.optimize.shapes import SymShape, channels_of, same_shape


@dataclass
class Slot:
    """One TernaryConv node of the working graph: its node model, the proto it was read from and the
    constant inputs the pass recomputed (the rest keep their stored tensors and names)."""

    node: TernaryConvNode
    proto: onnx.NodeProto
    changed: set[int] = field(default_factory=set)  # input positions (spec.IN_*) recomputed
    dirty: bool = False

    @property
    def label(self) -> str:
        return self.node.name or self.proto.output[0]

    def view(self) -> onnx.NodeProto:
        """The node as the graph now reads it: X, the stored constants, the residual; output Y."""
        inputs, outputs, _ = self.io()
        return onnx.helper.make_node(spec.OP_TYPE, inputs, outputs, domain=spec.DOMAIN)

    def io(self) -> NodeIO:
        """`view`'s inputs and outputs (nothing nested), without building a proto."""
        names = list(self.proto.input) + [""] * (spec.MAX_INPUTS - len(self.proto.input))
        names[spec.IN_X] = self.node.x
        names[spec.IN_RESIDUAL] = self.node.residual or ""
        return names, [self.node.output], []


Entry = onnx.NodeProto | Slot | None


@dataclass
class Context:
    entries: list[Entry]
    uses: Uses
    constants: Mapping[str, np.ndarray]
    shapes: Mapping[str, SymShape]


@dataclass
class Plan:
    fusion: r.Fusion
    apply: Callable[[], None]
    touched: tuple[int, ...]  # the entries `apply` changes (for the index update)


Outcome = Plan | r.Refusal | None


def _f16_exact(v: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(v)) and np.all(v.astype(np.float16).astype(np.float64) == v))


def _known_channels(ctx: Context, *names: str) -> dict[str, int | None]:
    return {n: channels_of(ctx.shapes, n) for n in names}


def input_affine(ctx: Context, idx: int, slot: Slot) -> Outcome:
    """A per-channel affine producing X -> in_scale / in_bias."""
    t = slot.node
    p = ctx.uses.producer.get(t.x)
    src = ctx.entries[p] if p is not None else None
    if not isinstance(src, onnx.NodeProto) or not is_standard(src) or src.op_type not in AFFINE_OPS:
        return None
    refuse = lambda why: r.Refusal(slot.label, r.INPUT_AFFINE, src.op_type, src.name, why)  # noqa: E731
    if ctx.uses.sole_reader(t.x) is None:
        return refuse(ctx.uses.why_not_sole(t.x))
    x_channels = channels_of(ctx.shapes, t.x) or (t.n_stored if t.in_channels is None else None)
    affine = as_affine(src, ctx.constants, channels=x_channels,
                       known_channels=_known_channels(ctx, *src.input))
    if isinstance(affine, str):
        return refuse(affine)
    cols = t.in_columns()
    if affine.scale.size > 1 and affine.scale.size <= int(cols.max(initial=-1)):
        return refuse(f"affine has {affine.scale.size} channels, the node reads channel {int(cols.max())}")
    a = affine.scale[cols] if affine.scale.size > 1 else np.full(cols.size, affine.scale[0])
    b = affine.shift[cols] if affine.shift.size > 1 else np.full(cols.size, affine.shift[0])
    s_old = np.ones(cols.size) if t.in_scale is None else t.in_scale.astype(np.float64)
    t_old = np.zeros(cols.size) if t.in_bias is None else t.in_bias.astype(np.float64)
    with np.errstate(all="ignore"):
        new_s, new_b = (s_old * a).astype(np.float32), (s_old * b + t_old).astype(np.float32)
    if not (np.all(np.isfinite(new_s)) and np.all(np.isfinite(new_b))):
        return refuse("the composed input affine overflows float32")

    def apply() -> None:
        if t.in_scale is not None or not np.all(new_s == 1):
            t.in_scale = new_s
            slot.changed.add(spec.IN_IN_SCALE)
        if t.in_bias is not None or np.any(new_b != 0):
            t.in_bias = new_b
            slot.changed.add(spec.IN_IN_BIAS)
        t.x = affine.x
        ctx.entries[p] = None

    return Plan(r.Fusion(slot.label, r.INPUT_AFFINE, src.op_type, src.name), apply, (p, idx))


def _fold_output(ctx: Context, idx: int, j: int, slot: Slot, dst: onnx.NodeProto, affine: Affine) -> Outcome:
    t = slot.node
    refuse = lambda why: r.Refusal(slot.label, r.OUTPUT_AFFINE, dst.op_type, dst.name, why)  # noqa: E731
    if t.residual and not affine.is_shift:
        return refuse("the node has a residual: a scale after it would scale the residual too")
    a, b = affine.per_channel(t.m_out)
    s_old = np.ones(t.m_out) if t.scale is None else t.scale.astype(np.float64)
    b_old = np.zeros(t.m_out) if t.bias is None else t.bias.astype(np.float64)
    new_s, new_b = a * s_old, a * b_old + b
    if not (_f16_exact(new_s) and _f16_exact(new_b)):
        which = "scale" if not _f16_exact(new_s) else "bias"
        return refuse(f"the composed {which} is not exactly representable in float16 (scale and bias are "
                      "stored as float16): folding would round")

    def apply() -> None:
        if t.scale is not None or not np.all(new_s == 1):
            t.scale = new_s.astype(np.float16)
            slot.changed.add(spec.IN_SCALE)
        if t.bias is not None or np.any(new_b != 0):
            t.bias = new_b.astype(np.float16)
            slot.changed.add(spec.IN_BIAS)
        _take_output(ctx, idx, j, slot, dst)

    return Plan(r.Fusion(slot.label, r.OUTPUT_AFFINE, dst.op_type, dst.name), apply, (idx, j))


def _take_output(ctx: Context, idx: int, j: int, slot: Slot, dst: onnx.NodeProto) -> None:
    """The node now writes ``dst``'s output, at ``dst``'s place (after everything ``dst`` read)."""
    slot.node.output = dst.output[0]
    ctx.entries[j] = slot
    ctx.entries[idx] = None


def _residual(ctx: Context, idx: int, j: int, slot: Slot, dst: onnx.NodeProto) -> Outcome:
    t = slot.node
    refuse = lambda why: r.Refusal(slot.label, r.RESIDUAL, dst.op_type, dst.name, why)  # noqa: E731
    if t.attrs.activation:
        return refuse("after the node's Relu: the residual is added before the activation")
    if t.residual:
        return refuse("the node has a residual already")
    other = dst.input[1] if dst.input[0] == t.output else dst.input[0]
    want, got = ctx.shapes.get(t.output), ctx.shapes.get(other)
    if not same_shape(want, got):
        return refuse(f"{other!r} has shape {got or '?'}, not provably the output's {want or '?'} "
                      "(a broadcasting Add is no residual)")

    def apply() -> None:
        t.residual = other
        _take_output(ctx, idx, j, slot, dst)

    return Plan(r.Fusion(slot.label, r.RESIDUAL, dst.op_type, dst.name), apply, (idx, j))


def _relu(ctx: Context, idx: int, j: int, slot: Slot, dst: onnx.NodeProto) -> Outcome:
    t = slot.node
    if t.attrs.activation:
        return r.Refusal(slot.label, r.RELU, dst.op_type, dst.name, "the node has its activation already")

    def apply() -> None:
        t.attrs = replace(t.attrs, activation="Relu")
        _take_output(ctx, idx, j, slot, dst)

    return Plan(r.Fusion(slot.label, r.RELU, dst.op_type, dst.name), apply, (idx, j))


FOLLOWERS = ("BatchNormalization", "Mul", "Add", "Relu")


def output_side(ctx: Context, idx: int, slot: Slot) -> Outcome:
    """The one reader of Y: a Relu, a per-channel affine or a residual Add."""
    t = slot.node
    readers = [k for k in ctx.uses.readers.get(t.output, [])
               if isinstance(ctx.entries[k], onnx.NodeProto) and is_standard(ctx.entries[k])
               and ctx.entries[k].op_type in FOLLOWERS]
    if not readers:
        return None
    j = ctx.uses.sole_reader(t.output)
    if j is None:
        dst = ctx.entries[readers[0]]
        kind = r.RELU if dst.op_type == "Relu" else r.OUTPUT_AFFINE
        return r.Refusal(slot.label, kind, dst.op_type, dst.name, ctx.uses.why_not_sole(t.output))
    dst = ctx.entries[j]
    if dst.op_type == "Relu":
        return _relu(ctx, idx, j, slot, dst) if len(dst.input) == 1 and len(dst.output) == 1 else None
    if dst.op_type == "Add" and len(dst.input) == 2 and not any(i in ctx.constants for i in dst.input):
        return _residual(ctx, idx, j, slot, dst)
    if t.attrs.activation:
        return r.Refusal(slot.label, r.OUTPUT_AFFINE, dst.op_type, dst.name,
                         "after the node's Relu: an affine after the activation cannot fold into scale/bias")
    affine = as_affine(dst, ctx.constants, x=t.output, channels=t.m_out, known_channels={t.output: t.m_out})
    if isinstance(affine, str):
        return r.Refusal(slot.label, r.OUTPUT_AFFINE, dst.op_type, dst.name, affine)
    return _fold_output(ctx, idx, j, slot, dst, affine)
