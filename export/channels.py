"""Effective channels: which rows and input channels of a ternary conv need no storage.

Only what provably changes nothing is dropped (see docs/export.md, "Dead channels"):

- An output row whose codes are all zero is *dead*: its convolution result is 0 and the node still
  produces ``act(scale * 0 + bias) = act(bias[o])`` for it, so the row need not be stored
  (``out_channels`` map). The same holds for a row whose only non-zero codes read input channels
  that are provably zero.
- An input channel is *provably zero* when its producer is a dead channel of the conv before and
  ``act(bias[o]) == 0`` with the float16 bias the file stores. Its weights multiply zeros, so they
  are dropped (``in_channels`` map). A dead producer with a non-zero constant stays: with zero padding
  its contribution differs at the borders, so it is not a constant that could be folded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ChannelPlan:
    """What one ternary conv stores, and why the rest is not stored."""

    out_rows: np.ndarray  # int32, the stored output rows (indices of the M output channels)
    in_channels: np.ndarray  # int32, the stored input channels (indices of the N input channels)
    stored_codes: np.ndarray  # int8 [len(out_rows), len(in_channels) / group, kH, kW]
    num_outputs: int  # M
    num_inputs: int  # N
    dead_all_zero: list[int] = field(default_factory=list)  # rows with every code 0
    dead_zero_inputs: list[int] = field(default_factory=list)  # rows whose codes only read zero inputs
    dropped_inputs: list[int] = field(default_factory=list)  # provably-zero input channels
    kept_constant_inputs: list[int] = field(default_factory=list)  # dead producers with act(bias) != 0

    @property
    def dead_rows(self) -> list[int]:
        return sorted(self.dead_all_zero + self.dead_zero_inputs)

    @property
    def needs_out_map(self) -> bool:
        return len(self.out_rows) != self.num_outputs

    @property
    def needs_in_map(self) -> bool:
        return len(self.in_channels) != self.num_inputs


def activation(values: np.ndarray, act: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return np.maximum(v, 0.0) if act == "Relu" else v


def dead_rows(codes: np.ndarray) -> np.ndarray:
    """Boolean [M]: rows whose codes are all zero."""
    return ~(codes.reshape(codes.shape[0], -1) != 0).any(axis=1)


def zero_outputs(codes: np.ndarray, bias16: np.ndarray, act: str) -> np.ndarray:
    """Boolean [M]: output channels of a ternary conv that are exactly 0 everywhere.

    ``codes`` must be the effective codes (after dropping this conv's own zero inputs).
    """
    return dead_rows(codes) & (activation(bias16.astype(np.float64), act) == 0.0)


def plan_channels(
    codes: np.ndarray,
    *,
    group: int = 1,
    zero_inputs: np.ndarray | None = None,
    dead_inputs: np.ndarray | None = None,
) -> ChannelPlan:
    """Plan the stored part of a ternary conv with codes ``[M, N/group, kH, kW]``.

    ``zero_inputs`` (bool [N]) marks input channels known to be 0 everywhere; ``dead_inputs`` (bool
    [N]) marks input channels that come from a dead producer (constant, maybe non-zero), for the
    report only. The format allows ``in_channels`` only with ``group == 1``; with groups the inputs
    are all kept. At least one row and one input channel are always stored, since the format needs
    a positive ``weight_shape``; an extra row kept that way is all zero and still exact.
    """
    codes = np.asarray(codes, dtype=np.int8)
    m, ng = codes.shape[:2]
    n = ng * group
    effective = codes.copy()
    in_keep = np.arange(n)
    dropped: list[int] = []
    if zero_inputs is not None and group == 1:
        zero_inputs = np.asarray(zero_inputs, dtype=bool)
        if zero_inputs.shape != (n,):
            raise ValueError(f"zero_inputs has shape {zero_inputs.shape}, expected ({n},)")
        effective[:, zero_inputs] = 0  # weights that multiply zeros
        dropped = [int(i) for i in np.flatnonzero(zero_inputs)]
        in_keep = np.flatnonzero(~zero_inputs)
        if in_keep.size == 0:
            in_keep = np.array([0])
    all_zero = dead_rows(codes)
    dead = dead_rows(effective)
    live = np.flatnonzero(~dead)
    out_rows = live if live.size else np.array([0])
    stored = effective[out_rows][:, in_keep] if group == 1 else effective[out_rows]
    kept_constant: list[int] = []
    if dead_inputs is not None:
        dead_inputs = np.asarray(dead_inputs, dtype=bool)
        zero = np.zeros(n, dtype=bool)
        zero[dropped] = True
        kept_constant = [int(i) for i in np.flatnonzero(dead_inputs & ~zero)]
    return ChannelPlan(
        out_rows=out_rows.astype(np.int32),
        in_channels=in_keep.astype(np.int32),
        stored_codes=np.ascontiguousarray(stored),
        num_outputs=m,
        num_inputs=n,
        dead_all_zero=[int(i) for i in np.flatnonzero(all_zero)],
        dead_zero_inputs=[int(i) for i in np.flatnonzero(dead & ~all_zero)],
        dropped_inputs=dropped,
        kept_constant_inputs=kept_constant,
    )
