"""Recognising a per-channel affine: ``y[:, c] = a[c] * x[:, c] + b[c]`` written as a standard
``BatchNormalization`` (inference form), a ``Mul`` or an ``Add`` with a per-channel constant.

Per-channel means the constant broadcasts against ``[B, C, H, W]`` along the channel axis only:
shape ``[K, 1, 1]`` or ``[1, K, 1, 1]`` with ``K`` 1 or ``C`` (a scalar is per-channel too). A
``[C]`` vector is *not*: ONNX broadcasting aligns trailing axes, so it scales the width axis. The
tensor the affine reads must itself have the ``C`` channels (a ``[B, 1, H, W]`` times ``[1, C, 1, 1]``
broadcasts to a new tensor, which is no affine of its input), which is where shapes come in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

AFFINE_OPS = ("BatchNormalization", "Mul", "Add")
_DEFAULT_EPSILON = 1e-5


@dataclass(frozen=True)
class Affine:
    """``y = scale * x + shift`` per channel (float64, length ``K``: 1 for a scalar, else C)."""

    x: str  # the tensor the affine reads
    scale: np.ndarray
    shift: np.ndarray

    def per_channel(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, shift)`` broadcast to ``channels`` entries."""
        return (np.broadcast_to(self.scale, (channels,)).copy(), np.broadcast_to(self.shift, (channels,)).copy())

    @property
    def is_shift(self) -> bool:
        """Whether the scale is exactly 1 everywhere (an Add)."""
        return bool(np.all(self.scale == 1.0))


def is_standard(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _channel_vector(c: np.ndarray, channels: int | None, x_channels: int | None) -> np.ndarray | str:
    """A per-channel constant as a float64 vector of length 1 or C, or why it is not one."""
    shape = list(c.shape)
    if c.dtype != np.float32:
        return f"constant is {c.dtype}, not float32"
    if c.ndim > 4:
        return f"constant of shape {shape} has rank above 4"
    full = [1] * (4 - c.ndim) + shape
    k = full[1]
    if full[0] != 1 or full[2] != 1 or full[3] != 1:
        return (f"constant of shape {shape} is not per-channel (per-channel is [C, 1, 1], [1, C, 1, 1] or a "
                f"scalar; a [C] vector broadcasts along the last axis)")
    if k != 1:
        if channels is not None and k != channels:
            return f"constant has {k} channels, the tensor has {channels}"
        if x_channels is None:
            return "the tensor's channel count is unknown, so the per-channel constant may broadcast it"
        if x_channels != k:
            return f"constant has {k} channels, its operand {x_channels} (the op broadcasts)"
    return c.reshape(-1).astype(np.float64)


def _batchnorm(node: onnx.NodeProto, constants: Mapping[str, np.ndarray], channels: int | None) -> Affine | str:
    if len(node.input) != 5 or not node.input[0]:
        return "BatchNormalization without its five inputs"
    if any(o for o in node.output[1:]):
        return "BatchNormalization in training form (running statistics are outputs)"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("training_mode", 0) != 0 or attrs.get("spatial", 1) != 1:
        return "BatchNormalization in training or non-spatial form"
    params = []
    for name in node.input[1:]:
        v = constants.get(name)
        if v is None:
            return f"BatchNormalization parameter {name!r} is not a constant"
        if v.dtype != np.float32 or v.ndim != 1 or (channels is not None and v.shape[0] != channels):
            return f"BatchNormalization parameter {name!r} is {v.dtype} {list(v.shape)}, not float32 [{channels}]"
        params.append(v.astype(np.float64))
    gamma, beta, mean, var = params
    if len({p.shape[0] for p in params}) != 1:
        return "BatchNormalization parameters of different lengths"
    eps = float(attrs.get("epsilon", _DEFAULT_EPSILON))
    with np.errstate(all="ignore"):
        a = gamma / np.sqrt(var + eps)
    if not np.all(np.isfinite(a)):
        return "BatchNormalization with a variance + epsilon that is not positive"
    return Affine(x=node.input[0], scale=a, shift=beta - mean * a)


def as_affine(node: onnx.NodeProto, constants: Mapping[str, np.ndarray], *, x: str | None = None,
              channels: int | None = None, known_channels: Mapping[str, int | None] | None = None
              ) -> Affine | str:
    """The per-channel affine ``node`` computes, or the reason it is not one (a string).

    ``x``: the tensor the affine must read (its one non-constant operand), when that is fixed.
    ``channels``: the channel count the affine must act on, when known; ``known_channels``: the
    channel counts known by tensor name (they prove that a Mul or Add does not broadcast its operand).
    """
    if not is_standard(node) or node.op_type not in AFFINE_OPS:
        return f"{node.op_type} is not a per-channel affine"
    if node.op_type == "BatchNormalization":
        affine = _batchnorm(node, constants, channels)
    else:
        if len(node.input) != 2 or len(node.output) != 1:
            return f"{node.op_type} with {len(node.input)} inputs"
        const = [i for i in node.input if i in constants]
        if len(const) != 1:
            return f"{node.op_type} has {'no' if not const else 'two'} constant operands"
        operand = node.input[1] if node.input[0] == const[0] else node.input[0]
        x_channels = (known_channels or {}).get(operand)
        vec = _channel_vector(np.asarray(constants[const[0]]), channels, x_channels)
        if isinstance(vec, str):
            return vec
        if node.op_type == "Mul":
            affine = Affine(x=operand, scale=vec, shift=np.zeros_like(vec))
        else:
            affine = Affine(x=operand, scale=np.ones_like(vec), shift=vec)
    if isinstance(affine, Affine):
        if x is not None and affine.x != x:
            return f"{node.op_type} does not read {x!r} as its variable operand"
        if not (np.all(np.isfinite(affine.scale)) and np.all(np.isfinite(affine.shift))):
            return f"{node.op_type} constant is not finite"
    return affine
