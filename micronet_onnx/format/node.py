"""One ``micronet::TernaryConv`` node as data: read, validated, decoded, written and lowered here only.

In the spirit of QONNX's CustomOp, `TernaryConvNode` is the single Python owner of the node's
semantics (docs/ternary-conv.md): the exporter writes through `TernaryConvNode.to_onnx`, readers
(scorer, reference op, dense twin) go through `TernaryConvNode.from_onnx`, and every rule a reader
must check is in `TernaryConvNode.validate` (constants), `check_x` and `check_residual_shape` (run-time
shapes). The assignment's encodings (format version 3's ``encoding``: masks, rows, entropy) are
`micronet_onnx.format.encodings`, through which `from_tensors` decodes and `constant_inputs` encodes;
the mask bit layout stays in `spec` (`pack_ternary`, `unpack_codes`); the version rules in `versions`;
the standard-ONNX form in `lower`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from micronet_onnx.format import encodings, spec, versions

# Attribute name -> the AttributeProto type a node must give it (docs/ternary-conv.md, "Attributes").
ATTR_TYPES = {
    spec.ATTR_WEIGHT_SHAPE: onnx.AttributeProto.INTS,
    spec.ATTR_STRIDES: onnx.AttributeProto.INTS,
    spec.ATTR_PADS: onnx.AttributeProto.INTS,
    spec.ATTR_DILATIONS: onnx.AttributeProto.INTS,
    spec.ATTR_GROUP: onnx.AttributeProto.INT,
    spec.ATTR_OUT_CHANNELS: onnx.AttributeProto.INT,
    spec.ATTR_ACTIVATION: onnx.AttributeProto.STRING,
    spec.ATTR_ENCODING: onnx.AttributeProto.INT,  # since opset 3
}
CONSTANT_INPUTS = range(spec.IN_MASK, spec.IN_RESIDUAL)  # inputs 1..9 must be initializers
V2_INPUTS = (spec.IN_IN_SCALE, spec.IN_IN_BIAS, spec.IN_RESIDUAL)


def is_ternary_conv(node: onnx.NodeProto) -> bool:
    """Whether ``node`` is a ``micronet::TernaryConv``."""
    return node.domain == spec.DOMAIN and node.op_type == spec.OP_TYPE


def decode_codes(codes: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The float32 weight of a code tensor: ``centroids[0]`` for -1, ``centroids[1]`` for +1, else 0.
    The one decode (`TernaryConvNode.dense_weight`, and the exporter's parts before a node exists)."""
    c = np.asarray(centroids).astype(np.float32)
    return np.where(codes > 0, c[1], np.where(codes < 0, c[0], np.float32(0))).astype(np.float32)


def read_attributes(node: onnx.NodeProto) -> spec.ConvAttrs:
    """The node's attributes with their exact AttributeProto types checked, defaults applied, ranges
    validated. Attributes the format does not define are ignored (``encoding``: `read_encoding`)."""
    values = _attribute_values(node)
    values.pop(spec.ATTR_ENCODING, None)
    return spec.ConvAttrs.from_onnx(values)


def read_encoding(node: onnx.NodeProto, version: int) -> str:
    """The name of the node's assignment encoding: its ``encoding`` attribute (format version 3; absent
    = masks); a version-1 or 2 node may not have one (a reader that cannot see the version, the C++
    library, would decode by it)."""
    value = _attribute_values(node).get(spec.ATTR_ENCODING)
    if value is None:
        return spec.ENCODINGS[spec.ENCODING_MASKS]
    if version < spec.ENCODING_VERSION:
        raise spec.FormatError(f"attribute {spec.ATTR_ENCODING} came with {spec.DOMAIN} opset "
                               f"{spec.ENCODING_VERSION}; this node is opset {version}")
    return encodings.name_of(int(value))


def _attribute_values(node: onnx.NodeProto) -> dict:
    """The format's attributes of ``node`` as name -> python value, their types checked."""
    values: dict = {}
    for a in node.attribute:
        want = ATTR_TYPES.get(a.name)
        if want is None:
            continue
        if a.name in values:
            raise spec.FormatError(f"attribute {a.name} is given twice")
        if a.type != want:
            raise spec.FormatError(f"attribute {a.name} must be of type {onnx.AttributeProto.AttributeType.Name(want)},"
                                   f" got {onnx.AttributeProto.AttributeType.Name(a.type)}")
        values[a.name] = helper.get_attribute_value(a)
    return values


def _array(v: np.ndarray | None) -> np.ndarray | None:
    return None if v is None else np.asarray(v)


@dataclass(kw_only=True)
class TernaryConvNode:
    """A TernaryConv node: graph names, format version, attributes and decoded constant inputs.

    ``codes`` int8 ``weight_shape`` in {-1, 0, +1}; ``centroids`` float16 [2]; ``scale``/``bias``
    float16 [M_out]; ``in_channels`` int32 [N_stored]; ``out_channels`` int32 [M_stored];
    ``in_scale``/``in_bias`` float32 [N_stored]; each None when absent. ``residual`` is the name of
    the run-time input 10 (None when absent). ``encoding`` (one of `spec.ENCODINGS`) is how inputs 1
    and 2 store ``codes``: ``masks`` in every version, ``rows`` and ``entropy`` from version 3 on.
    Build with `from_onnx` or `from_tensors` (both validate), or directly and call `validate`.
    """

    name: str
    x: str
    output: str
    attrs: spec.ConvAttrs
    codes: np.ndarray
    centroids: np.ndarray
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    in_channels: np.ndarray | None = None
    out_channels: np.ndarray | None = None
    in_scale: np.ndarray | None = None
    in_bias: np.ndarray | None = None
    residual: str | None = None
    version: int = spec.OPSET_VERSION
    encoding: str = "masks"
    # (encoding, digest of codes, inputs 1 and 2): the last encode, so a node is encoded once
    _encoded: tuple | None = field(default=None, init=False, repr=False, compare=False)

    # -- reading -------------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, node: onnx.NodeProto, constants: Mapping[str, np.ndarray], version: int, *,
                  x_channels: int | None = None) -> TernaryConvNode:
        """Read and validate ``node``; ``constants`` maps initializer names to arrays (inputs 1..9 must
        be there), ``version`` is the model's format version (`versions.micronet_version`),
        ``x_channels`` X's channel count when known. Raises `spec.FormatError` naming what is wrong."""
        if not is_ternary_conv(node):
            raise spec.FormatError(f"not a {spec.DOMAIN}::{spec.OP_TYPE} node: {node.domain}::{node.op_type}")
        versions.check_input_count(len(node.input), version)
        if len(node.output) != 1 or not node.output[0]:
            raise spec.FormatError(f"must have exactly one output, has {len(node.output)}")
        names = list(node.input) + [""] * (spec.MAX_INPUTS - len(node.input))
        if not names[spec.IN_X]:
            raise spec.FormatError("input 0 (X) must be given")
        arrays: dict[int, np.ndarray | None] = {}
        for idx in CONSTANT_INPUTS:
            name = names[idx]
            if not name:
                arrays[idx] = None
            elif name not in constants:
                raise spec.FormatError(f"input {idx} ({spec.INPUT_NAMES[idx]}) must be an initializer")
            else:
                arrays[idx] = np.asarray(constants[name])
        encoding = read_encoding(node, version)
        masks = encoding == spec.ENCODINGS[spec.ENCODING_MASKS]
        for idx in (spec.IN_MASK, spec.IN_SIGN, spec.IN_CENTROIDS):
            what = spec.INPUT_NAMES[idx] if masks or idx != spec.IN_MASK else spec.STREAM_NAME
            if arrays[idx] is None and (masks or idx != spec.IN_SIGN):
                raise spec.FormatError(f"input {idx} ({what}) is required")
        return cls.from_tensors(
            read_attributes(node), *(arrays[i] for i in CONSTANT_INPUTS), name=node.name, x=names[spec.IN_X],
            output=node.output[0], residual=names[spec.IN_RESIDUAL] or None, version=version,
            x_channels=x_channels, encoding=encoding)

    @classmethod
    def from_tensors(cls, attrs: spec.ConvAttrs, mask: np.ndarray, sign: np.ndarray | None, centroids: np.ndarray,
                     scale: np.ndarray | None = None, bias: np.ndarray | None = None,
                     in_channels: np.ndarray | None = None, out_channels: np.ndarray | None = None,
                     in_scale: np.ndarray | None = None, in_bias: np.ndarray | None = None, *,
                     name: str = "", x: str = "X", output: str = "Y", residual: str | None = None,
                     version: int = spec.OPSET_VERSION, x_channels: int | None = None,
                     encoding: str = "masks") -> TernaryConvNode:
        """A node from its stored constant inputs (inputs 1..9 in order; with encoding rows or entropy
        ``mask`` is the stream and ``sign`` None), decoded and validated."""
        if encodings.check_name(encoding) != "masks" and version < spec.ENCODING_VERSION:
            raise spec.FormatError(f"encoding {encoding} came with {spec.DOMAIN} opset {spec.ENCODING_VERSION}")
        codes = encodings.decode(encoding, mask, sign, attrs.weight_shape)
        node = cls(name=name, x=x, output=output, attrs=attrs, codes=codes, centroids=np.asarray(centroids),
                   scale=_array(scale), bias=_array(bias), in_channels=_array(in_channels),
                   out_channels=_array(out_channels), in_scale=_array(in_scale), in_bias=_array(in_bias),
                   residual=residual, version=version, encoding=encoding).validate(x_channels)
        node._encoded = (encoding, _digest(codes), (np.asarray(mask), None if sign is None else np.asarray(sign)))
        return node

    # -- the rules -----------------------------------------------------------------------
    @property
    def m_stored(self) -> int:
        return self.attrs.m_stored

    @property
    def m_out(self) -> int:
        return self.attrs.m_out

    @property
    def n_stored(self) -> int:
        return self.attrs.weight_shape[1] * self.attrs.group

    def validate(self, x_channels: int | None = None) -> TernaryConvNode:
        """Every constant-input rule of docs/ternary-conv.md, "Validation a reader must do", in one
        place; ``x_channels`` (X's channel count when known) adds the in_channels bound. Returns self."""
        versions.check_format_version(self.version)
        encodings.check_name(self.encoding)
        if self.encoding != "masks" and self.version < spec.ENCODING_VERSION:
            raise spec.FormatError(f"encoding {self.encoding} came with {spec.DOMAIN} opset {spec.ENCODING_VERSION};"
                                   f" this node is opset {self.version}")
        a = self.attrs.validate()
        codes = np.asarray(self.codes)
        if codes.dtype != np.int8 or codes.shape != a.weight_shape:
            raise spec.FormatError(f"codes must be int8 {list(a.weight_shape)}, got {codes.dtype} {list(codes.shape)}")
        if not np.isin(codes, (-1, 0, 1)).all():
            raise spec.FormatError("ternary codes must be in {-1, 0, +1}")
        c = np.asarray(self.centroids)
        if c.dtype != spec.CENTROID_DTYPE or c.shape != (2,):
            raise spec.FormatError(f"centroids must be float16 [2], got {c.dtype} {list(c.shape)}")
        if self.version < 2:
            given = [spec.INPUT_NAMES[i] for i, v in zip(V2_INPUTS, (self.in_scale, self.in_bias, self.residual),
                                                         strict=True) if v is not None]
            if given:
                raise spec.FormatError(f"{', '.join(given)} came with {spec.DOMAIN} opset 2; this node is opset "
                                       f"{self.version}")
        m_out, n_stored = self.m_out, self.n_stored
        for what, v in (("scale", self.scale), ("bias", self.bias)):
            if v is not None and (v.dtype != spec.AFFINE_DTYPE or v.shape != (m_out,)):
                raise spec.FormatError(f"{what} must be float16 [{m_out}], got {v.dtype} {list(v.shape)}")
        for what, v in (("in_scale", self.in_scale), ("in_bias", self.in_bias)):
            if v is not None and (v.dtype != spec.IN_AFFINE_DTYPE or v.shape != (n_stored,)):
                raise spec.FormatError(f"{what} must be float32 [{n_stored}], got {v.dtype} {list(v.shape)}")
        if self.in_channels is not None:
            if a.group != 1:
                raise spec.FormatError("in_channels requires group == 1")
            _check_channel_map(self.in_channels, n_stored, x_channels, "in_channels")
        elif x_channels is not None and x_channels != n_stored:
            raise spec.FormatError(f"X has {x_channels} channels, the weight reads {n_stored} (and no in_channels map)")
        if self.out_channels is not None:
            _check_channel_map(self.out_channels, self.m_stored, m_out, "out_channels")
        elif m_out != self.m_stored:
            raise spec.FormatError("num_output_channels differs from weight_shape[0] without out_channels")
        return self

    def check_x(self, shape: Sequence[int | None], dtype: np.dtype | None = None) -> None:
        """The run-time rule for X: float32 (when ``dtype`` is given) of rank 4, with ``C == N_stored``
        without in_channels and every in_channels entry below C with it (when C is known)."""
        if (dtype is not None and np.dtype(dtype) != np.float32) or len(shape) != 4:
            raise spec.FormatError(f"X must be float32 [B, C, H, W], got {dtype} {list(shape)}")
        c = shape[1]
        if c is None:
            return
        if self.in_channels is None:
            if c != self.n_stored:
                raise spec.FormatError(f"X has {c} channels, the weight reads {self.n_stored} (and no in_channels map)")
        elif self.in_channels.size and int(self.in_channels.max()) >= c:
            raise spec.FormatError(f"in_channels has an index outside [0, {c})")

    def output_shape(self, x_shape: Sequence[int | None]) -> list[int | None]:
        """``[B, M_out, OH, OW]`` for an X of ``x_shape`` (None for unknown dims): the one output-size
        rule (docs/ternary-conv.md, "Semantics"). A known OH or OW below 1 is a `spec.FormatError`."""
        if len(x_shape) != 4:
            raise spec.FormatError(f"X must have rank 4, got shape {list(x_shape)}")
        b, _, h, w = x_shape
        oh, ow = self.attrs.output_hw(h if h is not None else 0, w if w is not None else 0)
        out = [b, self.m_out, oh if h is not None else None, ow if w is not None else None]
        if any(v is not None and v <= 0 for v in out[2:]):
            raise spec.FormatError(f"kernel larger than padded input: output {out[2:]} for input {[h, w]}")
        return out

    def check_residual_shape(self, shape: Sequence[int | None], x_shape: Sequence[int | None],
                             dtype: np.dtype | None = None) -> None:
        """The one residual rule: float32 (when ``dtype`` is given) of exactly the output's shape;
        dims unknown on either side (None) are not compared."""
        want = self.output_shape(x_shape)
        bad = (dtype is not None and np.dtype(dtype) != np.float32) or len(shape) != 4 or any(
            a is not None and b is not None and a != b for a, b in zip(shape, want, strict=True))
        if bad:
            got = f"{np.dtype(dtype)} {list(shape)}" if dtype is not None else str(list(shape))
            raise spec.FormatError(f"residual must be float32 {want} (the output's shape), got {got}")

    # -- derived tensors -----------------------------------------------------------------
    def dense_weight(self) -> np.ndarray:
        """The decoded weight, float32 ``[M_stored, N_stored/group, kH, kW]``."""
        return decode_codes(self.codes, self.centroids)

    def out_rows(self) -> np.ndarray:
        """For each stored row, the output channel it writes (int64 [M_stored])."""
        if self.out_channels is None:
            return np.arange(self.m_stored, dtype=np.int64)
        return self.out_channels.astype(np.int64)

    def in_columns(self) -> np.ndarray:
        """For each stored input channel, the channel of X it reads (int64 [N_stored])."""
        if self.in_channels is None:
            return np.arange(self.n_stored, dtype=np.int64)
        return self.in_channels.astype(np.int64)

    def packed(self) -> spec.PackedTernary:
        """The codes in their stored form (mask and sign bits), with this node's centroids."""
        p = spec.pack_ternary(self.codes, 0.0, 0.0)
        return spec.PackedTernary(p.mask, p.sign, np.asarray(self.centroids), p.shape)

    def encoded(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Inputs 1 and 2 (None: absent) holding the codes in this node's ``encoding``; encoded once
        (and as read, for a node read from a file) while the codes and the encoding stay the same."""
        digest = _digest(np.asarray(self.codes))
        if self._encoded is None or self._encoded[:2] != (self.encoding, digest):
            self._encoded = (self.encoding, digest, encodings.encode(self.encoding, self.codes))
        return self._encoded[2]

    def choose_encoding(self, request: str) -> TernaryConvNode:
        """Set ``encoding`` to ``request``, or with ``"auto"`` to the one whose inputs 1 and 2 take the
        fewest bytes (masks only before format version 3). Returns self."""
        if request == encodings.AUTO:
            allowed = spec.ENCODINGS if self.version >= spec.ENCODING_VERSION else ("masks",)
            name, arrays = encodings.cheapest(self.codes, allowed)
            self.encoding = name
            self._encoded = (name, _digest(np.asarray(self.codes)), arrays)
        else:
            self.encoding = encodings.check_name(request)
        return self

    def stored_assignment_bytes(self) -> int:
        """Bytes of inputs 1 and 2 (the assignment as stored)."""
        return encodings.stored_bytes(self.encoded())

    def constant_inputs(self) -> list[np.ndarray | None]:
        """Inputs 1..9 as stored (None where absent)."""
        first, second = self.encoded()
        return [first, second, np.asarray(self.centroids), self.scale, self.bias, self.in_channels,
                self.out_channels, self.in_scale, self.in_bias]

    # -- writing -------------------------------------------------------------------------
    def to_onnx(self) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
        """The node and its initializers, named ``<name>.<input>`` (``<name>.mask``, ...) as the
        exporter names them; absent optional inputs are empty names, trailing ones left out, and
        the attributes in `spec.ConvAttrs.to_onnx` order (the written bytes depend on it)."""
        self.validate()
        inits: list[onnx.TensorProto] = []
        names = [self.x]
        for idx, arr in enumerate(self.constant_inputs(), start=spec.IN_MASK):
            if arr is None:
                names.append("")
                continue
            what = spec.STREAM_NAME if idx == spec.IN_STREAM and self.encoding != "masks" else spec.INPUT_NAMES[idx]
            name = f"{self.name}.{what}"
            names.append(name)
            inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        names.append(self.residual or "")
        while names[-1] == "":
            names.pop()
        node = helper.make_node(spec.OP_TYPE, names, [self.output], name=self.name, domain=spec.DOMAIN)
        node.attribute.extend(helper.make_attribute(k, v) for k, v in self.attrs.to_onnx().items())
        if self.version >= spec.ENCODING_VERSION:
            node.attribute.append(helper.make_attribute(spec.ATTR_ENCODING, encodings.value_of(self.encoding)))
        return node, inits

    def lower(self, x_channels: int | None = None) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        """The same function in standard ONNX (see `lower.lower_node`)."""
        from micronet_onnx.format.lower import lower_node

        return lower_node(self, x_channels)


def _digest(codes: np.ndarray) -> bytes:
    h = hashlib.blake2b(str(codes.shape).encode(), digest_size=16)
    h.update(np.ascontiguousarray(codes).tobytes())
    return h.digest()


def _check_channel_map(v: np.ndarray, length: int, bound: int | None, name: str) -> None:
    if v.dtype != spec.CHANNEL_MAP_DTYPE or v.shape != (length,):
        raise spec.FormatError(f"{name} must be int32 [{length}], got {v.dtype} {list(v.shape)}")
    if v.size and (v.min() < 0 or (bound is not None and v.max() >= bound)):
        raise spec.FormatError(f"{name} has an index outside [0, {bound})")
    if np.unique(v).size != v.size:
        raise spec.FormatError(f"{name} repeats an index")
