"""BatchNorm folding and float16 rounding: the arithmetic every export path shares.

All folding is done in float64 and rounded once, to float16 where the file stores float16 and to
float32 otherwise, so the ternary file, the dense file and the rounded PyTorch reference
(`rounded_reference`) are built from the very same numbers.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from micronet_onnx.export.errors import ExportError
from micronet_onnx.format.node import decode_codes
from micronet_onnx.model import MicroNet
from micronet_onnx.training.ec2t import TernaryConv2d


def bn_params(bn: nn.BatchNorm2d, name: str) -> dict[str, np.ndarray]:
    """The four inputs of an ONNX BatchNormalization (``scale``, ``B``, ``mean``, ``var``), float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError(f"{name}: BatchNorm without running statistics cannot be exported")
    mean = bn.running_mean.detach().double().cpu().numpy()
    return {
        "scale": bn.weight.detach().double().cpu().numpy() if bn.weight is not None else np.ones_like(mean),
        "B": bn.bias.detach().double().cpu().numpy() if bn.bias is not None else np.zeros_like(mean),
        "mean": mean,
        "var": bn.running_var.detach().double().cpu().numpy(),
    }


def bn_affine(bn: nn.BatchNorm2d, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` in float64 with ``bn(x) == scale * x + shift`` per channel in eval mode."""
    p = bn_params(bn, name)
    scale = p["scale"] / np.sqrt(p["var"] + bn.eps)
    return scale, p["B"] - p["mean"] * scale


def to_fp16(values: np.ndarray | float, what: str) -> np.ndarray:
    """Round to float16, refusing values that are not finite there (overflow past 65504)."""
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ExportError(f"{what}: holds a non-finite value")
    with np.errstate(over="ignore"):
        out = arr.astype(np.float16)
    if not np.isfinite(out).all():
        raise ExportError(f"{what}: a value of magnitude {np.abs(arr).max():.4g} exceeds the float16 range")
    return out


def to_fp32(values: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ExportError(f"{what}: holds a non-finite value")
    return arr.astype(np.float32)


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A full-precision conv followed by BN, folded: (weight, bias) in float64. Exact in real
    arithmetic because the BN acts after the convolution, padding included."""
    if isinstance(conv, TernaryConv2d):
        raise TypeError("use ternary_parts for a TernaryConv2d")
    scale, shift = bn_affine(bn, name)
    w = conv.weight.detach().double().cpu().numpy() * scale[:, None, None, None]
    b = shift.copy()
    if conv.bias is not None:
        b += scale * conv.bias.detach().double().cpu().numpy()
    return w, b


class TernaryParts:
    """A `TernaryConv2d` and the BN after it, in the numbers the file stores.

    ``codes`` int8 [M, N/g, kH, kW]; ``centroids`` float16 ``[negative value, positive value]``;
    ``scale``/``bias`` float16 [M] (the folded BN, plus the conv's own bias if it has one).
    """

    def __init__(self, conv: TernaryConv2d, bn: nn.BatchNorm2d, name: str) -> None:
        self.name = name
        self.codes = conv.codes.detach().cpu().numpy().astype(np.int8)
        if not np.isin(self.codes, (-1, 0, 1)).all():
            raise ExportError(f"{name}: codes outside {{-1, 0, +1}}")
        w_neg = -float(conv.w_n.detach())
        w_pos = float(conv.w_p.detach())
        self.centroids = to_fp16([w_neg, w_pos], f"{name} centroids")
        self.centroids_unrounded = np.array([w_neg, w_pos])
        scale, shift = bn_affine(bn, name)
        if conv.bias is not None:
            shift = shift + scale * conv.bias.detach().double().cpu().numpy()
        self.scale = to_fp16(scale, f"{name} folded BatchNorm scale")
        self.bias = to_fp16(shift, f"{name} folded BatchNorm bias")
        self.scale_unrounded, self.bias_unrounded = scale, shift
        # Values that fell into the float16 subnormal range keep less than 11 bits of precision.
        tiny = np.finfo(np.float16).tiny
        self.subnormal = int(
            sum(((np.abs(v) < tiny) & (v != 0)).sum() for v in (self.centroids_unrounded, scale, shift))
        )
        self.stride = tuple(int(s) for s in conv.stride)
        self.padding = _pads(conv, name)
        self.dilation = tuple(int(d) for d in conv.dilation)
        self.groups = int(conv.groups)

    def dense_weight(self) -> np.ndarray:
        """The decoded weight times the folded scale, float64 [M, N/g, kH, kW]."""
        w = decode_codes(self.codes, self.centroids).astype(np.float64)  # exact: float16 values
        return w * self.scale.astype(np.float64)[:, None, None, None]


def _pads(conv: nn.Conv2d, name: str) -> tuple[int, int, int, int]:
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ExportError(f"{name}: only explicit zero padding is supported")
    ph, pw = (int(p) for p in conv.padding)
    return (ph, pw, ph, pw)


def conv_geometry(conv: nn.Conv2d, name: str) -> dict:
    """strides / pads / dilations / group of a torch conv in ONNX form."""
    return {
        "strides": [int(s) for s in conv.stride],
        "pads": list(_pads(conv, name)),
        "dilations": [int(d) for d in conv.dilation],
        "group": int(conv.groups),
    }


class _ChannelAffine(nn.Module):
    """``x * scale + bias`` per channel: a BN whose folded values were rounded to float16."""

    def __init__(self, scale: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("scale", torch.from_numpy(scale.astype(np.float32)).view(1, -1, 1, 1))
        self.register_buffer("bias", torch.from_numpy(bias.astype(np.float32)).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.bias


@torch.no_grad()
def rounded_reference(model: MicroNet) -> MicroNet:
    """A copy of ``model`` with exactly the float16 rounding a ternary file applies.

    Each ternary conv gets its centroids rounded to float16, and the BN after it (`Block.conv_bn_pairs`,
    plus the conv's bias) becomes the per-channel affine with float16-rounded scale and bias. Everything
    else is untouched. For a full-precision model this is a plain copy. Eval mode.
    """
    ref = copy.deepcopy(model).eval()
    for block_name, _, block in ref.iter_blocks():
        for unit in list(block.conv_bn_pairs()):
            if not isinstance(unit.conv, TernaryConv2d):
                continue
            parts = TernaryParts(unit.conv, unit.bn, f"{block_name}.{unit.name}")
            unit.conv.w_n.fill_(-float(parts.centroids[0]))
            unit.conv.w_p.fill_(float(parts.centroids[1]))
            unit.conv.register_parameter("bias", None)
            block.set_submodule(unit.bn_name, _ChannelAffine(parts.scale, parts.bias))
    return ref
