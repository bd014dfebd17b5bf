"""Encoding ``entropy`` (2): the weights' symbols (0, -1, +1), row-major, coded by a range
asymmetric numeral system (rANS) with a static per-layer model, in one uint8 ``stream`` (input 1;
input 2 absent). Its size is within a few bytes of the layer's zero-order empirical entropy.

Stream (docs/ternary-conv.md, "Encoding entropy"): bytes 0..1 and 2..3 are the uint16 little-endian
frequencies ``f(-1)`` and ``f(+1)`` out of ``M = 2**15``, ``f(0) = M - f(-1) - f(+1)``; the symbols'
cumulative order is 0, -1, +1. Bytes 4..7 are the decoder's initial state ``x`` (big-endian), in
``[2**23, 2**31)``; the rest are renormalisation bytes, read in order. Each weight: ``s`` is the
symbol whose interval ``[c(s), c(s) + f(s))`` holds ``x mod M``; ``x = f(s) * (x >> 15) + (x mod M)
- c(s)``; while ``x < 2**23``, ``x = (x << 8) | next byte``. A valid stream ends with every byte read
and ``x == 2**23``, the encoder's initial state.
"""

from __future__ import annotations

import numpy as np

from micronet_onnx.format import spec
from micronet_onnx.format.encodings.rows import _check_stream

NAME = "entropy"
PROB_BITS = spec.ENTROPY_PROB_BITS
TOTAL = 1 << PROB_BITS
LOW = spec.ENTROPY_STATE_LOW
SYMBOL_CODES = (0, -1, 1)  # symbol index -> code


def model(codes: np.ndarray) -> list[int]:
    """Frequencies ``[f(0), f(-1), f(+1)]`` summing to ``2**15``: proportional to the counts, at least
    1 for a symbol that occurs, 0 for one that does not (the largest absorbs the rounding)."""
    flat = np.asarray(codes).reshape(-1)
    counts = [int(np.count_nonzero(flat == c)) for c in SYMBOL_CODES]
    n = sum(counts)
    freq = [0 if c == 0 else max(1, round(c * TOTAL / n)) for c in counts]
    top = int(np.argmax(counts))
    freq[top] += TOTAL - sum(freq)
    return freq


def encode(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(stream, None)`` of an int8 code tensor."""
    flat = np.asarray(codes).reshape(-1)
    freq = model(flat)
    cum = [0, freq[0], freq[0] + freq[1]]
    symbols = np.where(flat == 0, 0, np.where(flat < 0, 1, 2)).astype(np.int64)
    x_max = [((LOW >> PROB_BITS) << 8) * f for f in freq]
    out = bytearray()
    x = LOW
    for s in reversed(symbols.tolist()):
        f = freq[s]
        while x >= x_max[s]:
            out.append(x & 0xFF)
            x >>= 8
        q, r = divmod(x, f)
        x = (q << PROB_BITS) + r + cum[s]
    out += x.to_bytes(spec.ENTROPY_STATE_BYTES, "little")
    out.reverse()
    head = np.array([freq[1] & 0xFF, freq[1] >> 8, freq[2] & 0xFF, freq[2] >> 8], dtype=np.uint8)
    return np.concatenate([head, np.frombuffer(bytes(out), dtype=np.uint8)]), None


def decode(first: np.ndarray, second: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """The int8 code tensor of ``shape`` from an entropy stream; `spec.FormatError` for bad model
    frequencies, a state out of range, a truncated stream or one that does not end exactly."""
    stream = _check_stream(first, second, NAME)
    head = spec.ENTROPY_HEADER_BYTES + spec.ENTROPY_STATE_BYTES
    if stream.size < head:
        raise spec.FormatError("entropy stream is truncated (no header)")
    f_neg = int(stream[0]) | int(stream[1]) << 8
    f_pos = int(stream[2]) | int(stream[3]) << 8
    if f_neg + f_pos > TOTAL:
        raise spec.FormatError(f"entropy stream model frequencies {f_neg} + {f_pos} exceed {TOTAL}")
    freq = [TOTAL - f_neg - f_pos, f_neg, f_pos]
    cum = [0, freq[0], freq[0] + freq[1]]
    slot_symbol = bytes(np.repeat(np.arange(3, dtype=np.uint8), freq))
    buf = stream.tobytes()
    x = int.from_bytes(buf[spec.ENTROPY_HEADER_BYTES:head], "big")
    if not LOW <= x < LOW << 8:
        raise spec.FormatError("entropy stream has an initial state out of range")
    n = int(np.prod(shape))
    out = bytearray(n)
    pos, mask = head, TOTAL - 1
    try:
        for i in range(n):
            slot = x & mask
            s = slot_symbol[slot]
            out[i] = s
            x = freq[s] * (x >> PROB_BITS) + slot - cum[s]
            while x < LOW:
                x = (x << 8) | buf[pos]
                pos += 1
    except IndexError:
        raise spec.FormatError("entropy stream is truncated") from None
    if pos != len(buf) or x != LOW:
        raise spec.FormatError("entropy stream is corrupt (it does not end where the weights do)")
    table = np.array(SYMBOL_CODES, dtype=np.int8)
    return table[np.frombuffer(bytes(out), dtype=np.uint8)].reshape(shape)
