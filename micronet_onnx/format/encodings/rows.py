"""Encoding ``rows`` (1): per stored output row, its non-zero count and the non-zeros' column gaps
(Rice-coded) with one sign bit each, in one uint8 ``stream`` (input 1; input 2 absent).

Stream (docs/ternary-conv.md, "Encoding rows"): byte 0 is the Rice parameter ``k``, byte 1 the count
width ``b``; then, LSB first, for each stored row r (a row is the ``N_stored/group * kH * kW`` weights
of one output channel, row-major): its non-zero count in ``b`` bits, then for each non-zero, in column
order, the gap ``g`` (columns skipped since the previous non-zero, or since the row start) as
``g >> k`` one-bits, a zero-bit and the low ``k`` bits of ``g``, then the sign bit (1 = +1). The last
byte is zero-padded. The writer picks ``k`` (the smallest total) and ``b`` (the widest count) per layer.
"""

from __future__ import annotations

import numpy as np

from micronet_onnx.format import spec
from micronet_onnx.format.encodings.bits import BitReader, pack_fields

NAME = "rows"


def _layout(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, gaps, positive, counts)`` of the non-zeros of an int8 code tensor, row by row."""
    m = codes.shape[0]
    flat = codes.reshape(m, -1)
    rows, cols = np.nonzero(flat)
    prev = np.empty_like(cols)
    prev[1:] = cols[:-1]
    if cols.size:
        starts = np.ones(cols.size, dtype=bool)
        starts[1:] = rows[1:] != rows[:-1]
        prev[starts] = -1
    gaps = (cols - prev - 1).astype(np.int64)
    counts = np.bincount(rows, minlength=m).astype(np.int64)
    return rows.astype(np.int64), gaps, flat[rows, cols] > 0, counts


def best_k(gaps: np.ndarray) -> int:
    """The Rice parameter with the fewest bits for these gaps (the smallest such k)."""
    if gaps.size == 0:
        return 0
    top = int(gaps.max()).bit_length()
    costs = [int((gaps >> k).sum()) + gaps.size * (k + 1) for k in range(min(top, spec.ROWS_MAX_RICE_K) + 1)]
    return int(np.argmin(costs))


def encode(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(stream, None)`` of an int8 code tensor."""
    codes = np.asarray(codes)
    rows, gaps, positive, counts = _layout(codes)
    k = best_k(gaps)
    b = int(counts.max()).bit_length()
    nnz, m = gaps.size, counts.size
    before = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    n_fields = m + 3 * nnz
    values = np.zeros(n_fields, dtype=np.uint64)
    widths = np.zeros(n_fields, dtype=np.int64)
    unary = np.zeros(n_fields, dtype=bool)
    at_count = np.arange(m) + 3 * before
    values[at_count], widths[at_count] = counts, b
    at = rows + 1 + 3 * np.arange(nnz)
    q = gaps >> k
    values[at], widths[at], unary[at] = q, q + 1, True
    values[at + 1], widths[at + 1] = gaps & ((1 << k) - 1), k
    values[at + 2], widths[at + 2] = positive, 1
    body, _ = pack_fields(values, widths, unary)
    return np.concatenate([np.array([k, b], dtype=np.uint8), body]), None


def decode(first: np.ndarray, second: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """The int8 code tensor of ``shape`` from a rows stream; `spec.FormatError` for a stream that is
    truncated, too long, has a count above the row length, a column past the row's end, non-zero
    padding or header values out of range."""
    stream = _check_stream(first, second, NAME)
    if stream.size < spec.ROWS_HEADER_BYTES:
        raise spec.FormatError("rows stream is truncated (no header)")
    k, b = int(stream[0]), int(stream[1])
    if k > spec.ROWS_MAX_RICE_K or b > spec.ROWS_MAX_COUNT_BITS:
        raise spec.FormatError(f"rows stream header out of range (rice k {k}, count bits {b})")
    m = int(shape[0])
    row_len = int(np.prod(shape[1:]))
    r = BitReader(stream[spec.ROWS_HEADER_BYTES:])
    text, size = r.text, r.size
    q_limit = (row_len - 1) >> k
    index: list[int] = []
    sign: list[bool] = []
    for row in range(m):
        n = r.read(b)
        if n > row_len:
            raise spec.FormatError(f"rows stream: row {row} counts {n} non-zeros in a row of {row_len}")
        col = row * row_len - 1
        end = (row + 1) * row_len
        for _ in range(n):
            q = r.unary(q_limit)
            pos = r.pos
            if pos + k + 1 > size:
                raise spec.FormatError("stream is truncated")
            gap = (q << k) | (int(text[pos:pos + k][::-1], 2) if k else 0)
            col += gap + 1
            if col >= end:
                raise spec.FormatError(f"rows stream: row {row} has a column past its end")
            index.append(col)
            sign.append(text[pos + k] == 49)
            r.pos = pos + k + 1
    r.finish()
    codes = np.zeros(m * row_len, dtype=np.int8)
    codes[np.asarray(index, dtype=np.int64)] = np.where(np.asarray(sign, dtype=bool), 1, -1)
    return codes.reshape(shape)


def _check_stream(first: np.ndarray, second: np.ndarray | None, name: str) -> np.ndarray:
    """Input 1 as a 1-D uint8 stream, input 2 absent."""
    if second is not None:
        raise spec.FormatError(f"input 2 (sign) must be absent with encoding {name}")
    stream = np.asarray(first)
    if stream.dtype != spec.STREAM_DTYPE or stream.ndim != 1:
        raise spec.FormatError(f"stream must be 1-D uint8, got {stream.dtype} {list(stream.shape)}")
    return stream
