"""A TernaryConv as the scorer sees it: read, checked and lowered by the format's node model
(`micronet_onnx.format.node.TernaryConvNode`), plus the effective-channel bookkeeping that
Appendix B counts by.

The scorer keeps no format rule of its own: the decode, every validation (constants, X, residual),
the version rules and the standard-ONNX form are the node model's. What is here is which stored rows
and input channels are live, which the storage rules and the counters need.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from micronet_onnx.format import spec
from micronet_onnx.format.node import TernaryConvNode, is_ternary_conv
from micronet_onnx.scoring.graph import Graph
from micronet_onnx.scoring.shapes import Shapes, StandardForm, known

__all__ = ["COUNTER_KEY", "TernaryFacts", "facts", "is_ternary", "read_node", "reads_x", "standard_form"]

COUNTER_KEY = f"{spec.DOMAIN}::{spec.OP_TYPE}"
"""The node's key in the counter registry (and in ``unknown_ops`` naming)."""

is_ternary = is_ternary_conv


def reads_x(node: onnx.NodeProto, input_index: int) -> bool:
    """Whether ``node`` is a TernaryConv reading a tensor as its activation input X."""
    return is_ternary_conv(node) and input_index == spec.IN_X


class _Constants(Mapping[str, np.ndarray]):
    """The graph's initializers and Constant outputs as the name -> array mapping the node model reads
    (arrays decoded on first use)."""

    def __init__(self, g: Graph) -> None:
        self._g = g

    def __getitem__(self, name: str) -> np.ndarray:
        a = self._g.array(name)
        if a is None:
            raise KeyError(name)
        return a

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._g.const_tensor(name) is not None

    def __iter__(self) -> Iterator[str]:
        yield from self._g.init
        yield from (n for n in self._g.const_nodes if n not in self._g.init)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def read_node(node: onnx.NodeProto, g: Graph, version: int) -> TernaryConvNode:
    """Read and validate one TernaryConv's attributes and constant inputs (``version``: the model's
    format version). Raises `spec.FormatError`; X's run-time rules are checked by `facts`."""
    return TernaryConvNode.from_onnx(node, _Constants(g), version)


def standard_form(t: TernaryConvNode) -> StandardForm:
    """The node's standard-ONNX lowering for shape inference; the lowering's initializers are declared
    as inputs of their type and shape (their values do not change a shape)."""
    nodes, inits = t.lower()
    declared = [helper.make_tensor_value_info(i.name, i.data_type, [int(d) for d in i.dims]) for i in inits]
    return nodes, declared


@dataclass(frozen=True)
class TernaryFacts:
    """What the counts need of one TernaryConv (channel counts: M output rows, N input channels)."""

    node: TernaryConvNode
    nnz_rows: np.ndarray  # int64 [M_stored]: non-zeros of each stored row
    m_eff: int  # stored rows with a non-zero weight
    n_eff: int  # stored input channels some non-zero weight reads
    c_in: int  # channels of X (estimated from the channel map when X's shape does not say)
    eff_weights: int  # sum over groups of N_g K^2 M_g over the effective channels
    x_shape: list[int] | None  # X's shape when fully known and of rank 4
    x_channels_read: np.ndarray  # int64: the channels of X some non-zero weight reads
    two_valued: bool  # the non-zeros take at most two values

    @property
    def group(self) -> int:
        return self.node.attrs.group

    @property
    def kernel(self) -> tuple[int, int]:
        return self.node.attrs.weight_shape[2], self.node.attrs.weight_shape[3]

    @property
    def k2(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def numel(self) -> int:
        return int(self.node.codes.size)

    @property
    def nnz(self) -> int:
        return int(self.nnz_rows.sum())

    @property
    def has_residual(self) -> bool:
        return bool(self.node.residual)


def facts(t: TernaryConvNode, shapes: Shapes) -> TernaryFacts:
    """Check X and the residual against the node's run-time rules (where their shapes are known) and
    summarise its live rows and read channels. Raises `spec.FormatError`."""
    x_shape = shapes.get(t.x)
    if x_shape is not None:
        t.check_x(x_shape)
        if t.residual and shapes.get(t.residual) is not None:
            t.check_residual_shape(shapes[t.residual], x_shape)
    columns = t.in_columns()
    c_in = x_shape[1] if x_shape is not None else None
    if c_in is None:
        c_in = max(t.n_stored, int(columns.max()) + 1 if columns.size else 0)
    m_stored, cg, kh, kw = t.attrs.weight_shape
    groups = t.attrs.group
    codes = t.codes
    nnz_rows = np.count_nonzero(codes.reshape(m_stored, -1), axis=1).astype(np.int64)
    live = nnz_rows > 0
    mg = m_stored // groups
    used_in = np.zeros(t.n_stored, dtype=bool)
    eff_weights = 0
    for gi in range(groups):
        used = np.any(codes[gi * mg : (gi + 1) * mg] != 0, axis=(0, 2, 3))
        used_in[gi * cg : (gi + 1) * cg] = used
        eff_weights += int(used.sum()) * kh * kw * int(live[gi * mg : (gi + 1) * mg].sum())
    distinct_codes = {int(v) for v in np.unique(codes) if v != 0}
    return TernaryFacts(
        node=t,
        nnz_rows=nnz_rows,
        m_eff=int(live.sum()),
        n_eff=int(used_in.sum()),
        c_in=int(c_in),
        eff_weights=int(eff_weights),
        x_shape=list(x_shape) if known(x_shape) and len(x_shape) == 4 else None,
        x_channels_read=columns[used_in].astype(np.int64),
        two_valued=len(distinct_codes) <= 2,
    )
