"""The TernaryConv file format: the one place its constants, bit layouts and attributes live.

The node built from them (reading, validation, the decode, output size, writing, lowering) is
`micronet_onnx.format.node.TernaryConvNode`; the version rules are in `micronet_onnx.format.versions`.
`runtime_ops/` mirrors these constants in C++ (its tests cross-check them against this module).
The normative description is `docs/ternary-conv.md`; keep the two in step, and when the layout
changes bump `OPSET_VERSION` and keep reading the old one.

Layout of one node (domain ``micronet``, opset 3, op ``TernaryConv``; opset 1 is inputs 0..7; opset 3
adds the ``encoding`` attribute: with ``rows`` or ``entropy`` input 1 is one uint8 ``stream`` holding the
whole assignment and input 2 is absent; the streams' bit layouts are `micronet_onnx.format.encodings`'):

====  ===================  =========  ====================================================
idx   name                 dtype      meaning
====  ===================  =========  ====================================================
0     X                    float32    ``[B, C, H, W]`` activations
1     mask                 uint8      1 bit per stored weight, row-major, LSB first; 1 = non-zero
2     sign                 uint8      1 bit per set mask bit, same order; 1 = positive
3     centroids            float16    ``[2]`` = ``[negative value, positive value]``
4     scale     (opt.)     float16    ``[M_out]`` per-output-channel multiplier (folded BN scale)
5     bias      (opt.)     float16    ``[M_out]`` per-output-channel bias (folded BN shift)
6     in_channels (opt.)   int32      ``[N_stored]`` which channels of X the stored weight reads
7     out_channels (opt.)  int32      ``[M_stored]`` which output channels the stored rows write
8     in_scale  (opt., v2) float32    ``[N_stored]`` per-input-channel multiplier (a pre-activation BN)
9     in_bias   (opt., v2) float32    ``[N_stored]`` per-input-channel shift, applied before zero padding
10    residual  (opt., v2) float32    ``[B, M_out, OH, OW]`` added before the activation (not a constant)
====  ===================  =========  ====================================================

``Xa[:, c] = in_scale[c] * X[:, in_channels[c]] + in_bias[c]`` (then zero-padded), and
``Y[:, o] = act(scale[o] * conv(Xa, W)[row(o)] + bias[o] + residual[:, o])`` where an output
channel with no stored row has ``conv = 0``, i.e. it is ``act(bias[o] + residual[:, o])``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DOMAIN = "micronet"
OPSET_VERSION = 3
"""Version of the ``micronet`` domain that writers emit; it is the format version of every op in the
domain. Version 2 added the optional inputs 8..10 (input affine and residual), version 3 the
``encoding`` attribute (the assignment as masks, sparse rows or an entropy-coded stream); version 1
and 2 files are read unchanged."""
OP_TYPE = "TernaryConv"
SUPPORTED_OPSET_VERSIONS = (1, 2, 3)
ENCODING_VERSION = 3  # the first format version with the encoding attribute

# Input positions (the contract fixes 0..3; the rest are optional and may be given as empty names).
IN_X = 0
IN_MASK = 1
IN_STREAM = 1  # since opset 3: the same slot holds the encoded stream with encoding rows / entropy
IN_SIGN = 2  # absent (empty name) with encoding rows / entropy
IN_CENTROIDS = 3
IN_SCALE = 4
IN_BIAS = 5
IN_IN_CHANNELS = 6
IN_OUT_CHANNELS = 7
IN_IN_SCALE = 8  # since opset 2
IN_IN_BIAS = 9  # since opset 2
IN_RESIDUAL = 10  # since opset 2; the only optional input that is not a constant
NUM_REQUIRED_INPUTS = 4
MAX_INPUTS = 11
MAX_INPUTS_V1 = 8  # inputs a version-1 node may have
INPUT_NAMES = ("X", "mask", "sign", "centroids", "scale", "bias", "in_channels", "out_channels",
               "in_scale", "in_bias", "residual")

# Attributes.
ATTR_WEIGHT_SHAPE = "weight_shape"  # ints [M_stored, N_stored / group, kH, kW]; required
ATTR_STRIDES = "strides"  # ints [sH, sW]; default [1, 1]
ATTR_PADS = "pads"  # ints [top, left, bottom, right]; default zeros
ATTR_DILATIONS = "dilations"  # ints [dH, dW]; default [1, 1]
ATTR_GROUP = "group"  # int; default 1
ATTR_OUT_CHANNELS = "num_output_channels"  # int M_out; default M_stored (needed with out_channels)
ATTR_ACTIVATION = "activation"  # string: "" (none) or "Relu"; default ""
ATTR_ENCODING = "encoding"  # int (since opset 3): index into ENCODINGS; default 0 (masks)

ACTIVATIONS = ("", "Relu")
ENCODINGS = ("masks", "rows", "entropy")  # the value of `encoding` is the index of the name here
ENCODING_MASKS = 0
ENCODING_ROWS = 1
ENCODING_ENTROPY = 2
STREAM_NAME = "stream"  # the initializer suffix of input 1 with encoding rows / entropy

# rows (docs/ternary-conv.md, "Encoding rows"): 2 header bytes [rice_k, count_bits], then the bits.
ROWS_HEADER_BYTES = 2
ROWS_MAX_RICE_K = 56
ROWS_MAX_COUNT_BITS = 57
# entropy (docs/ternary-conv.md, "Encoding entropy"): rANS with a static 3-symbol model.
ENTROPY_HEADER_BYTES = 4  # uint16 LE frequencies of -1 and +1; 0's is 2**ENTROPY_PROB_BITS minus both
ENTROPY_PROB_BITS = 15
ENTROPY_STATE_BYTES = 4
ENTROPY_STATE_LOW = 8388608  # 2**23: the rANS state lies in [2**23, 2**31)
MAX_ENCODED_WEIGHTS = 2147483648  # 2**31: weights of one node with encoding rows / entropy (a stream
# can describe many weights in few bytes; this bounds the decode's memory and time)

MAX_ATTRIBUTE_VALUE = 1 << 24  # upper bound of every shape, stride, pad, dilation and channel count

MASK_DTYPE = np.uint8
STREAM_DTYPE = np.uint8
SIGN_DTYPE = np.uint8
CENTROID_DTYPE = np.float16
AFFINE_DTYPE = np.float16  # scale and bias
IN_AFFINE_DTYPE = np.float32  # in_scale and in_bias (a pre-activation BatchNorm, kept at full precision)
CHANNEL_MAP_DTYPE = np.int32
BIT_ORDER = "little"  # least significant bit first within each byte


class FormatError(ValueError):
    """A TernaryConv node or tensor that does not follow the format."""


def packed_length(num_bits: int) -> int:
    """Bytes needed for ``num_bits`` bits."""
    return (int(num_bits) + 7) // 8


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Flatten a boolean array row-major and pack it LSB first into uint8."""
    return np.packbits(np.asarray(bits, dtype=bool).reshape(-1), bitorder=BIT_ORDER)


def unpack_bits(packed: np.ndarray, count: int) -> np.ndarray:
    """Unpack the first ``count`` bits (LSB first) of a uint8 array into a bool vector."""
    packed = np.asarray(packed)
    if packed.dtype != MASK_DTYPE:
        raise FormatError(f"bit array must be uint8, got {packed.dtype}")
    if packed.ndim != 1 or packed.size != packed_length(count):
        raise FormatError(f"bit array holds {packed.size} bytes, expected {packed_length(count)} for {count} bits")
    bits = np.unpackbits(packed, bitorder=BIT_ORDER).astype(bool)
    if bits[count:].any():
        raise FormatError("padding bits after the last bit must be 0")
    return bits[:count]


@dataclass(frozen=True)
class PackedTernary:
    """A ternary weight tensor in its stored form."""

    mask: np.ndarray  # uint8 [ceil(numel / 8)]
    sign: np.ndarray  # uint8 [ceil(nnz / 8)]
    centroids: np.ndarray  # float16 [2] = [negative, positive]
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nnz(self) -> int:
        return int(unpack_bits(self.mask, self.numel).sum())


def pack_ternary(codes: np.ndarray, w_neg: float, w_pos: float) -> PackedTernary:
    """Pack a code tensor in {-1, 0, +1} with centroid magnitudes into the stored form.

    ``w_neg`` is the (negative) value of the -1 code, ``w_pos`` the value of the +1 code; both are
    stored as float16, which is what the file's function is defined by.
    """
    codes = np.asarray(codes)
    if not np.isin(codes, (-1, 0, 1)).all():
        raise FormatError("ternary codes must be in {-1, 0, +1}")
    flat = codes.reshape(-1)
    nz = flat != 0
    return PackedTernary(
        mask=pack_bits(nz),
        sign=pack_bits(flat[nz] > 0),
        centroids=np.array([w_neg, w_pos], dtype=CENTROID_DTYPE),
        shape=tuple(int(s) for s in codes.shape),
    )


def unpack_codes(mask: np.ndarray, sign: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Decode the two bit arrays into an int8 code tensor in {-1, 0, +1}."""
    numel = int(np.prod(shape))
    nz = unpack_bits(mask, numel)
    nnz = int(nz.sum())
    sign = np.asarray(sign)
    if sign.dtype != SIGN_DTYPE or sign.ndim != 1 or sign.size != packed_length(nnz):
        raise FormatError(
            f"sign holds {sign.size} bytes of {sign.dtype}, expected {packed_length(nnz)} uint8 "
            f"bytes for {nnz} non-zeros"
        )
    positive = unpack_bits(sign, nnz)
    codes = np.zeros(numel, dtype=np.int8)
    codes[np.flatnonzero(nz)] = np.where(positive, 1, -1)
    return codes.reshape(shape)


@dataclass(frozen=True)
class ConvAttrs:
    """The attributes of a TernaryConv node with defaults applied and ranges checked."""

    weight_shape: tuple[int, int, int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    group: int = 1
    num_output_channels: int = 0  # 0 = M_stored
    activation: str = ""

    @property
    def m_stored(self) -> int:
        return self.weight_shape[0]

    @property
    def m_out(self) -> int:
        return self.num_output_channels or self.weight_shape[0]

    def validate(self) -> ConvAttrs:
        ws = self.weight_shape
        if len(ws) != 4 or any(int(v) <= 0 for v in ws):
            raise FormatError(f"weight_shape must be 4 positive ints, got {list(ws)}")
        if len(self.strides) != 2 or any(s <= 0 for s in self.strides):
            raise FormatError(f"strides must be 2 positive ints, got {list(self.strides)}")
        if len(self.dilations) != 2 or any(d <= 0 for d in self.dilations):
            raise FormatError(f"dilations must be 2 positive ints, got {list(self.dilations)}")
        if len(self.pads) != 4 or any(p < 0 for p in self.pads):
            raise FormatError(f"pads must be 4 non-negative ints, got {list(self.pads)}")
        if self.group <= 0 or ws[0] % self.group:
            raise FormatError(f"group {self.group} must be positive and divide weight_shape[0]={ws[0]}")
        if self.num_output_channels < 0:
            raise FormatError("num_output_channels must be non-negative")
        if self.num_output_channels and self.num_output_channels < ws[0]:
            raise FormatError(f"num_output_channels {self.num_output_channels} < weight_shape[0] {ws[0]}")
        if self.activation not in ACTIVATIONS:
            raise FormatError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        values = (*ws, *self.strides, *self.pads, *self.dilations, self.num_output_channels)
        if any(v > MAX_ATTRIBUTE_VALUE for v in values):
            raise FormatError("an attribute value is out of range")
        return self

    def to_onnx(self) -> dict:
        """Keyword attributes for ``onnx.helper.make_node``."""
        attrs: dict = {
            ATTR_WEIGHT_SHAPE: list(self.weight_shape),
            ATTR_STRIDES: list(self.strides),
            ATTR_PADS: list(self.pads),
            ATTR_DILATIONS: list(self.dilations),
            ATTR_GROUP: int(self.group),
        }
        if self.num_output_channels:
            attrs[ATTR_OUT_CHANNELS] = int(self.num_output_channels)
        if self.activation:
            attrs[ATTR_ACTIVATION] = self.activation
        return attrs

    @classmethod
    def from_onnx(cls, attrs: dict) -> ConvAttrs:
        """Build from a name -> python value mapping (``onnx.helper.get_attribute_value``)."""
        if ATTR_WEIGHT_SHAPE not in attrs:
            raise FormatError("missing required attribute weight_shape")
        if ATTR_OUT_CHANNELS in attrs and int(attrs[ATTR_OUT_CHANNELS]) <= 0:
            raise FormatError(f"num_output_channels must be positive, got {attrs[ATTR_OUT_CHANNELS]}")
        act = attrs.get(ATTR_ACTIVATION, "")
        if isinstance(act, bytes):
            act = act.decode("utf-8", "replace")
        return cls(
            weight_shape=tuple(int(v) for v in attrs[ATTR_WEIGHT_SHAPE]),
            strides=tuple(int(v) for v in attrs.get(ATTR_STRIDES, (1, 1))),
            pads=tuple(int(v) for v in attrs.get(ATTR_PADS, (0, 0, 0, 0))),
            dilations=tuple(int(v) for v in attrs.get(ATTR_DILATIONS, (1, 1))),
            group=int(attrs.get(ATTR_GROUP, 1)),
            num_output_channels=int(attrs.get(ATTR_OUT_CHANNELS, 0)),
            activation=str(act),
        ).validate()

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        """``(OH, OW)`` for an ``h`` x ``w`` input: the one copy of the output-size formula (a node's
        `TernaryConvNode.output_shape` adds the rank and positive-size rules; dense convs of the
        exporter use it too). May be below 1 for a kernel larger than the padded input."""
        kh, kw = self.weight_shape[2], self.weight_shape[3]
        oh = (h + self.pads[0] + self.pads[2] - self.dilations[0] * (kh - 1) - 1) // self.strides[0] + 1
        ow = (w + self.pads[1] + self.pads[3] - self.dilations[1] * (kw - 1) - 1) // self.strides[1] + 1
        return oh, ow
