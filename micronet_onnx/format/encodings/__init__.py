"""The encodings of a TernaryConv's ternary assignment (format version 3's ``encoding`` attribute):
one module per encoding (`masks`, `rows`, `entropy`), registered here by name and attribute value.

Each module has ``encode(codes) -> (input 1, input 2 or None)`` and ``decode(input 1, input 2, shape)
-> codes`` (int8 in {-1, 0, +1}, `spec.FormatError` for anything invalid). `TernaryConvNode`
(`micronet_onnx.format.node`) reads and writes every version through `encode` / `decode`; the
exporter's ``auto`` is `cheapest`; `entropy_bound_bits` is the limit `mnx score` reports. The C++
library mirrors the decoders in runtime_ops/ternary_conv/encoded_decode.cc.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np

from micronet_onnx.format import spec
from micronet_onnx.format.encodings import entropy, masks, rows

AUTO = "auto"
REGISTRY: dict[str, ModuleType] = {m.NAME: m for m in (masks, rows, entropy)}
assert tuple(REGISTRY) == spec.ENCODINGS, "registry order is the attribute value"
CHOICES = (AUTO, *spec.ENCODINGS)


def check_name(name: str) -> str:
    """``name`` if it is an encoding; `spec.FormatError` otherwise."""
    if name not in REGISTRY:
        raise spec.FormatError(f"unknown encoding {name!r} (one of {', '.join(spec.ENCODINGS)})")
    return name


def name_of(value: int) -> str:
    """The encoding named by an ``encoding`` attribute value."""
    if not 0 <= value < len(spec.ENCODINGS):
        raise spec.FormatError(f"attribute encoding = {value} is not one of 0..{len(spec.ENCODINGS) - 1} "
                               f"({', '.join(spec.ENCODINGS)})")
    return spec.ENCODINGS[value]


def value_of(name: str) -> int:
    """The ``encoding`` attribute value of an encoding name."""
    return spec.ENCODINGS.index(check_name(name))


def encode(name: str, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs 1 and 2 (None: absent) of ``codes`` in encoding ``name``."""
    return REGISTRY[check_name(name)].encode(np.asarray(codes))


def decode(name: str, first: np.ndarray, second: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """The int8 code tensor of ``shape`` from inputs 1 and 2 in encoding ``name``."""
    if name != "masks" and math.prod(int(s) for s in shape) > spec.MAX_ENCODED_WEIGHTS:
        raise spec.FormatError(f"weight_shape {list(shape)} has more than {spec.MAX_ENCODED_WEIGHTS} weights, "
                               f"the most a node with encoding {name} may have")
    return REGISTRY[check_name(name)].decode(first, second, tuple(int(s) for s in shape))


def stored_bytes(arrays: tuple[np.ndarray, np.ndarray | None]) -> int:
    """Bytes of the assignment's stored tensors (inputs 1 and 2)."""
    return sum(int(a.nbytes) for a in arrays if a is not None)


def cheapest(codes: np.ndarray, names: tuple[str, ...] = spec.ENCODINGS) -> tuple[str, tuple]:
    """The encoding of ``names`` whose inputs 1 and 2 take the fewest bytes (ties: the earlier in
    ``names``, the simpler) and those inputs."""
    best: tuple[str, tuple] | None = None
    for name in names:
        arrays = encode(name, codes)
        if best is None or stored_bytes(arrays) < stored_bytes(best[1]):
            best = (name, arrays)
    assert best is not None
    return best


def entropy_bound_bits(codes: np.ndarray) -> float:
    """``n * H(p)``: the zero-order empirical entropy of the assignment in bits (``p`` the shares of
    0, -1 and +1 among its ``n`` weights), the least any coder of independent symbols can store."""
    flat = np.asarray(codes).reshape(-1)
    n = flat.size
    counts = np.array([np.count_nonzero(flat == c) for c in (0, -1, 1)], dtype=np.float64)
    p = counts[counts > 0] / n
    return float(-(counts[counts > 0] * np.log2(p)).sum())
