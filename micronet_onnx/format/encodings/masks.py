"""Encoding ``masks`` (0): the assignment as the location and sign bit masks of formats 1 and 2 (and
the paper's Appendix B): inputs 1 (``mask``) and 2 (``sign``); the bit layout is `spec.pack_ternary`."""

from __future__ import annotations

import numpy as np

from micronet_onnx.format import spec

NAME = "masks"


def encode(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(mask, sign)`` of an int8 code tensor."""
    p = spec.pack_ternary(codes, 0.0, 0.0)
    return p.mask, p.sign


def decode(first: np.ndarray, second: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """The int8 code tensor of ``shape`` from ``mask`` and ``sign``; `spec.FormatError` when invalid."""
    if second is None:
        raise spec.FormatError("input 2 (sign) is required with encoding masks")
    return spec.unpack_codes(first, second, shape)
