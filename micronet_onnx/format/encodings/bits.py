"""Bit fields to bytes and back, least significant bit first (the format's `spec.BIT_ORDER`).

The writer is vectorised (a layer of a paper-scale model has about a million fields); the reader is a
cursor over the unpacked bits as a bytes object of ``b"0"`` / ``b"1"``, so a unary run is one
``bytes.find`` and a k-bit field one ``int(..., 2)``: both in C, both bounded by the stream's length.
"""

from __future__ import annotations

import numpy as np

from micronet_onnx.format import spec


def pack_fields(values: np.ndarray, widths: np.ndarray, unary: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Concatenate bit fields into packed bytes; returns ``(uint8 bytes, number of bits)``.

    A plain field writes the low ``width`` bits of its value, least significant first (``width`` at
    most 64); a ``unary`` field of value q writes q one-bits then one zero-bit (its width must be q + 1).
    """
    values = np.asarray(values, dtype=np.uint64)
    widths = np.asarray(widths, dtype=np.int64)
    total = int(widths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.uint8), 0
    field = np.repeat(np.arange(widths.size), widths)
    starts = np.cumsum(widths) - widths
    j = np.arange(total, dtype=np.int64) - starts[field]
    if unary is None:
        bits = (values[field] >> j.astype(np.uint64)) & np.uint64(1)
    else:
        u = np.asarray(unary, dtype=bool)[field]
        plain = (values[field] >> np.minimum(j, 63).astype(np.uint64)) & np.uint64(1)
        bits = np.where(u, j < values[field].astype(np.int64), plain)
    return np.packbits(bits.astype(bool), bitorder=spec.BIT_ORDER), total


class BitReader:
    """Reads fields from packed bytes; every read past the end raises `spec.FormatError`."""

    def __init__(self, data: np.ndarray) -> None:
        data = np.asarray(data, dtype=np.uint8).reshape(-1)
        self.text = (spec.unpack_bits(data, data.size * 8).astype(np.uint8) + 48).tobytes()  # b"0" / b"1" per bit
        self.pos = 0
        self.size = len(self.text)

    def read(self, width: int) -> int:
        """A ``width``-bit field, least significant bit first."""
        end = self.pos + width
        if end > self.size:
            raise spec.FormatError("stream is truncated")
        if width == 0:
            return 0
        v = int(self.text[self.pos:end][::-1], 2)
        self.pos = end
        return v

    def unary(self, limit: int) -> int:
        """The count of one-bits before the next zero-bit (which is consumed); more than ``limit``
        one-bits is a corrupt stream."""
        z = self.text.find(b"0", self.pos, self.pos + limit + 1)
        if z < 0:
            if self.pos + limit + 1 > self.size:
                raise spec.FormatError("stream is truncated")
            raise spec.FormatError("stream has a gap longer than the row")
        q = z - self.pos
        self.pos = z + 1
        return q

    def finish(self) -> None:
        """Every bit was read, up to the zero padding of the last byte."""
        rest = self.size - self.pos
        if rest >= 8:
            raise spec.FormatError(f"stream has {rest // 8} bytes after its last field")
        if b"1" in self.text[self.pos:]:
            raise spec.FormatError("stream has non-zero padding bits")
