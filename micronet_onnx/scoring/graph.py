"""Loading a model to score, its header checks, a name index over its graph and constant tracing.

Everything here is about the file as a graph of named tensors; nothing counts anything. A constant is
traced through the weight-path ops (Cast, Identity, DequantizeLinear, layout ops) so the counters see
an fp16 initializer behind a ``Cast(to=float)`` as the weight of the Conv that reads it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from micronet_onnx.format import spec, versions

__all__ = [
    "DTYPE_BITS",
    "Graph",
    "ScoreInputError",
    "Source",
    "all_tensors",
    "attrs",
    "is_standard",
    "load",
    "node_key",
    "one_line",
    "tensor_bits",
    "tensor_bytes",
]


class ScoreInputError(ValueError):
    """The input is not a scorable ONNX model (missing, truncated, not ONNX, or malformed)."""


Source = tuple[str, str]
"""A constant behind a tensor: (name of the stored tensor, ``"value"`` or ``"meta"``)."""

DTYPE_BITS: dict[int, int] = {
    TensorProto.FLOAT: 32,
    TensorProto.UINT8: 8,
    TensorProto.INT8: 8,
    TensorProto.UINT16: 16,
    TensorProto.INT16: 16,
    TensorProto.INT32: 32,
    TensorProto.INT64: 64,
    TensorProto.BOOL: 8,
    TensorProto.FLOAT16: 16,
    TensorProto.DOUBLE: 64,
    TensorProto.UINT32: 32,
    TensorProto.UINT64: 64,
    TensorProto.COMPLEX64: 64,
    TensorProto.COMPLEX128: 128,
    TensorProto.BFLOAT16: 16,
}
for _name, _bits in (
    ("FLOAT8E4M3FN", 8),
    ("FLOAT8E4M3FNUZ", 8),
    ("FLOAT8E5M2", 8),
    ("FLOAT8E5M2FNUZ", 8),
    ("FLOAT8E8M0", 8),
    ("UINT4", 4),
    ("INT4", 4),
    ("FLOAT4E2M1", 4),
    ("UINT2", 2),
    ("INT2", 2),
    ("FLOAT6E2M3", 6),
    ("FLOAT6E3M2", 6),
):
    if hasattr(TensorProto, _name):  # the newer dtypes exist only in newer onnx releases
        DTYPE_BITS[getattr(TensorProto, _name)] = _bits

# Layout ops a weight may pass through on its way from an initializer to the op that uses it; their
# inputs other than 0 are shape metadata.
WEIGHT_PATH_OPS = frozenset(
    {"Cast", "Identity", "DequantizeLinear", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten",
     "Gather", "Pad", "Mul"}
)
"""Gather, Pad and Mul on constants are the lookup chain of a portable export (scoring/portable.py):
a table (Gather's input 0) indexed by INT2 codes, times a per-channel scale; like DequantizeLinear,
every input of a Mul holds values, the other ops' inputs past 0 are indices / pads (metadata)."""


def one_line(text: object) -> str:
    """An error text as one short line (the CLI prints ScoreInputError as one line)."""
    return " ".join(str(text).split())[:300]


def is_standard(node: onnx.NodeProto) -> bool:
    """A node of the default ONNX domain."""
    return node.domain in ("", "ai.onnx")


def node_key(node: onnx.NodeProto) -> str:
    """Outputs are unique in a graph, so the first one names a node."""
    return node.output[0] if node.output else node.name


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as a name -> python value mapping."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def tensor_bits(t: TensorProto) -> int:
    """Bits the tensor's values take at its dtype (strings: their bytes)."""
    if t.data_type == TensorProto.STRING:
        return 8 * sum(len(s) for s in t.string_data)
    bits = DTYPE_BITS.get(t.data_type)
    if bits is None:
        raise ScoreInputError(f"tensor {t.name!r}: unsupported data type {t.data_type}")
    return int(np.prod([int(d) for d in t.dims], dtype=np.int64)) * bits


def tensor_bytes(t: TensorProto) -> int:
    """Bytes the tensor's values take packed: ``ceil(numel * dtype_bits / 8)``."""
    return (tensor_bits(t) + 7) // 8


def all_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every stored tensor: initializers and tensor attributes (Constant values)."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def load(model_or_path: Any) -> tuple[onnx.ModelProto, str, int]:
    """(model, source label, bytes on disk) of a path, a ModelProto or a file's bytes, or ScoreInputError."""
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, "<ModelProto>", model_or_path.ByteSize()
    if isinstance(model_or_path, (bytes, bytearray)):
        model = onnx.ModelProto()
        try:
            model.ParseFromString(bytes(model_or_path))
        except Exception as e:  # noqa: BLE001 - protobuf raises several types
            raise ScoreInputError(f"<bytes>: not an ONNX model ({one_line(e)})") from None
        check_model_header(model, "<bytes>")
        return model, "<bytes>", len(model_or_path)
    try:
        path = os.fspath(model_or_path)
    except TypeError:
        raise ScoreInputError(
            f"cannot score a {type(model_or_path).__name__}: give a path or a ModelProto"
        ) from None
    if not os.path.exists(path):
        raise ScoreInputError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise ScoreInputError(f"{path}: not a regular file")
    try:
        model = onnx.load(path)
    except Exception as e:  # noqa: BLE001
        raise ScoreInputError(
            f"{path}: not a readable ONNX model ({type(e).__name__}: {one_line(e)})"
        ) from None
    check_model_header(model, path)
    return model, path, os.path.getsize(path) + _external_data_bytes(model, path)


def _external_data_bytes(model: onnx.ModelProto, path: str) -> int:
    """External data files (if any) are part of what the model stores on disk."""
    base = os.path.dirname(os.path.abspath(path))
    size, seen = 0, set()
    for t in all_tensors(model):
        if t.data_location == TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and loc not in seen:
                seen.add(loc)
                p = os.path.join(base, loc)
                if os.path.isfile(p):
                    size += os.path.getsize(p)
    return size


def check_model_header(model: onnx.ModelProto, label: str) -> None:
    """A parsed protobuf is an ONNX model only with an IR version, a graph, opsets and nodes; the
    scorer refuses what the runtime refuses (an IR version out of range) and what it cannot count
    (a TernaryConv inside an If/Loop/Scan body: how often a body runs is not in the file)."""
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ScoreInputError(f"{label}: not an ONNX model (no IR version or graph)")
    if not model.opset_import:
        raise ScoreInputError(f"{label}: truncated or not an ONNX model (no opset_import)")
    if len(model.graph.node) == 0:
        raise ScoreInputError(f"{label}: the graph has no nodes")
    try:
        versions.check_ir_version(model)
    except spec.FormatError as e:
        raise ScoreInputError(f"{label}: {e}") from None
    for node, depth in versions.iter_nodes(model.graph):
        if depth > 0 and node.domain == spec.DOMAIN:
            raise ScoreInputError(f"{label}: {spec.DOMAIN} node {node.name or node.op_type!r} is inside a subgraph "
                                  "(If/Loop/Scan body), which the scorer cannot count; inline it")


def _check_ternary_inputs(g: Graph, node: onnx.NodeProto, graph_input_names: set[str]) -> None:
    """What the library requires of a TernaryConv's inputs, checked before counting: X (and a
    residual) float32 where they are graph inputs, every constant input an initializer that is not
    also a graph input (onnxruntime lets a caller override such an input, so it is not a constant)."""
    for i, name in enumerate(node.input):
        if not name:
            continue
        if i in (spec.IN_X, spec.IN_RESIDUAL):
            vi = next((v for v in g.model.graph.input if v.name == name), None)
            elem = vi.type.tensor_type.elem_type if vi is not None and vi.type.HasField("tensor_type") else None
            if elem not in (None, TensorProto.FLOAT):
                raise ScoreInputError(f"{g.label}: TernaryConv {node.name!r}: input {name!r} is "
                                      f"{TensorProto.DataType.Name(elem)}, the op takes float32")
        elif name in graph_input_names:
            raise ScoreInputError(f"{g.label}: TernaryConv {node.name!r}: constant input {name!r} is also a graph "
                                  "input (overridable at run time); it must be an initializer only")


def constant_tensor(node: onnx.NodeProto) -> TensorProto | None:
    """The value of a Constant node as a TensorProto (None for sparse or unknown forms)."""
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            t = TensorProto()
            t.CopyFrom(a.t)
            return t
        if a.name == "value_float":
            return numpy_helper.from_array(np.array(a.f, dtype=np.float32))
        if a.name == "value_floats":
            return numpy_helper.from_array(np.array(list(a.floats), dtype=np.float32))
        if a.name == "value_int":
            return numpy_helper.from_array(np.array(a.i, dtype=np.int64))
        if a.name == "value_ints":
            return numpy_helper.from_array(np.array(list(a.ints), dtype=np.int64))
    return None


class Graph:
    """Name lookups over one graph, and constant tracing.

    Building it checks that every tensor a node reads and every graph output is defined (a truncated
    graph fails here with one line rather than deep inside a counter).
    """

    def __init__(self, model: onnx.ModelProto, label: str) -> None:
        g = model.graph
        self.model = model
        self.label = label
        self.init: dict[str, TensorProto] = {t.name: t for t in g.initializer}
        self.const_nodes: dict[str, TensorProto] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        self.graph_inputs = [vi for vi in g.input if vi.name not in self.init]
        self.graph_outputs = {vi.name for vi in g.output}
        defined = set(self.init) | {vi.name for vi in g.input}
        for node in g.node:
            for i, name in enumerate(node.input):
                if not name:
                    continue
                if name not in defined:
                    raise ScoreInputError(
                        f"{label}: node {node.name or node.op_type!r} reads {name!r}, which nothing defines "
                        "(truncated or malformed graph)"
                    )
                self.consumers.setdefault(name, []).append((node, i))
            for name in node.output:
                if name:
                    self.producer[name] = node
                    defined.add(name)
            if node.op_type == "Constant" and is_standard(node) and node.output:
                t = constant_tensor(node)
                if t is not None:
                    t.name = node.output[0]
                    self.const_nodes[node.output[0]] = t
        graph_input_names = {vi.name for vi in g.input}
        ternary = [n for n in g.node if n.domain == spec.DOMAIN and n.op_type == spec.OP_TYPE]
        for node in ternary:
            _check_ternary_inputs(self, node, graph_input_names)
        for vi in self.graph_inputs if ternary else ():  # the library computes in float32 only
            elem = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else None
            if elem in (TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16):
                raise ScoreInputError(f"{label}: graph input {vi.name!r} is {TensorProto.DataType.Name(elem)}; "
                                      "a model with TernaryConv nodes takes float32 data")
        for name in self.graph_outputs:
            if name not in defined:
                raise ScoreInputError(
                    f"{label}: graph output {name!r} is not produced (truncated or malformed)"
                )
        self._arrays: dict[str, np.ndarray] = {}
        self._trace_cache: dict[str, list[Source] | None] = {}

    def const_tensor(self, name: str) -> TensorProto | None:
        t = self.init.get(name)
        return t if t is not None else self.const_nodes.get(name)

    def array(self, name: str) -> np.ndarray | None:
        """numpy value of an initializer or Constant output."""
        if name in self._arrays:
            return self._arrays[name]
        t = self.const_tensor(name)
        if t is None:
            return None
        try:
            a = numpy_helper.to_array(t)
        except Exception as e:  # noqa: BLE001
            raise ScoreInputError(f"{self.label}: tensor {name!r} cannot be read ({one_line(e)})") from None
        self._arrays[name] = a
        return a

    def check_tensor(self, t: TensorProto) -> None:
        """A raw tensor must hold exactly the bytes its shape and dtype need."""
        if t.HasField("raw_data") and t.data_type != TensorProto.STRING:
            if len(t.raw_data) != tensor_bytes(t):
                raise ScoreInputError(
                    f"{self.label}: tensor {t.name!r} holds {len(t.raw_data)} bytes, its shape needs "
                    f"{tensor_bytes(t)} (truncated or corrupt)"
                )

    def trace(self, name: str) -> list[Source] | None:
        """Constant sources of a tensor as ``[(const name, "value" | "meta"), ...]``, or None.

        A tensor is constant when it is an initializer / Constant output, or the output of a
        weight-path op (Cast, Identity, DequantizeLinear, layout ops) whose inputs are all constant.
        The first entry is the tensor that holds the values.
        """
        if name in self._trace_cache:
            return self._trace_cache[name]
        result: list[Source] | None
        if self.const_tensor(name) is not None:
            result = [(name, "value")]
        else:
            node = self.producer.get(name)
            result = None
            if node is not None and node.op_type in WEIGHT_PATH_OPS and is_standard(node):
                parts: list[Source] = []
                ok = True
                for i, inp in enumerate(node.input):
                    if not inp:
                        continue
                    sub = self.trace(inp)
                    if sub is None:
                        ok = False
                        break
                    if i == 0 or node.op_type in ("DequantizeLinear", "Mul") or (
                            node.op_type == "Gather" and i == 1):
                        parts.extend(sub)
                    else:
                        parts.extend((n, "meta") for n, _ in sub)
                result = parts if ok and parts else None
        self._trace_cache[name] = result
        return result

    def is_weight_path(self, node: onnx.NodeProto) -> bool:
        """A weight-path node with constant inputs: folded into the layer that reads its output."""
        return (
            node.op_type in WEIGHT_PATH_OPS
            and is_standard(node)
            and bool(node.output)
            and self.trace(node.output[0]) is not None
        )

    def value(self, name: str) -> np.ndarray | None:
        """The float value of a constant tensor, evaluated through its weight path (best effort)."""
        if self.const_tensor(name) is not None:
            return self.array(name)
        node = self.producer.get(name)
        if node is None or self.trace(name) is None:
            return None
        try:
            return _eval_weight_path(self, node)
        except Exception:  # noqa: BLE001 - best effort; callers fall back to "dense"
            return None

    def sources(self, node: onnx.NodeProto) -> list[Source]:
        """The constant sources of all of a node's inputs, each once, in input order."""
        out: list[Source] = []
        seen: set[str] = set()
        for name in node.input:
            if not name:
                continue
            for src in self.trace(name) or []:
                if src[0] not in seen:
                    seen.add(src[0])
                    out.append(src)
        return out


def _eval_weight_path(g: Graph, node: onnx.NodeProto) -> np.ndarray | None:
    """Evaluate one weight-path op on constant inputs with numpy (None for an op it cannot)."""
    x = g.value(node.input[0])
    if x is None:
        return None
    a = attrs(node)
    op = node.op_type
    if op == "Identity":
        return x
    if op == "Cast":
        return x.astype(helper.tensor_dtype_to_np_dtype(int(a["to"])))
    if op == "Transpose":
        perm = a.get("perm")
        return np.transpose(x, perm) if perm is not None else x.T
    if op == "Flatten":
        axis = int(a.get("axis", 1)) % max(x.ndim, 1) if x.ndim else 0
        return x.reshape(int(np.prod(x.shape[:axis])), -1)
    if op == "Reshape":
        shape = [int(v) for v in g.value(node.input[1])]
        if not int(a.get("allowzero", 0)):
            shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
        return x.reshape(shape)
    if op in ("Squeeze", "Unsqueeze"):
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = [int(v) for v in g.value(node.input[1])]
        if op == "Squeeze":
            return np.squeeze(x, axis=tuple(axes)) if axes else np.squeeze(x)
        out = x
        for ax in sorted(int(v) % (x.ndim + len(axes)) for v in axes):
            out = np.expand_dims(out, ax)
        return out
    if op == "Gather":
        index = g.value(node.input[1])
        return None if index is None else np.take(x, index.astype(np.int64), axis=int(a.get("axis", 0)))
    if op == "Pad":
        pads = [int(v) for v in g.value(node.input[1])]
        if a.get("mode", b"constant") not in (b"constant", "constant") or len(node.input) > 2 and any(node.input[2:]):
            return None
        return np.pad(x, list(zip(pads[: x.ndim], pads[x.ndim:])))
    if op == "Mul":
        other = g.value(node.input[1])
        return None if other is None else x * other
    if op == "DequantizeLinear":
        scale = g.value(node.input[1]).astype(np.float64)
        zp = g.value(node.input[2]).astype(np.float64) if len(node.input) > 2 and node.input[2] else 0.0
        xv = x.astype(np.float64)
        if np.ndim(scale) == 1 and x.ndim > 1:
            axis = int(a.get("axis", 1)) % x.ndim
            shape = [1] * x.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            if np.ndim(zp) == 1:
                zp = zp.reshape(shape)
        return (xv - zp) * scale
    return None
