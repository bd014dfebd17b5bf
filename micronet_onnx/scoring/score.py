"""Storage and operation scorer for ONNX models (``mnx score``).

It reads only the ONNX file and works on any model: ``micronet::TernaryConv`` nodes are counted by the
paper's Appendix B, every other value at the dtype it is stored in, and operations by the MicroNet
Challenge rules. The rules and their sources are written down in ``docs/scoring.md``.

The module is a set of analysis passes that return plain data (``score_model`` returns a dict of plain
Python values, so ``json.dumps(report)`` is the JSON form); ``render_table`` turns that dict into text.

Units: parameters are in 32-bit-parameter units (a b-bit value counts b/32), operations in 32-bit
operation units (an operation on b-bit operands counts b/32).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from micronet_onnx.format import spec as tf

__all__ = [
    "REFERENCE_MODEL",
    "REFERENCE_OPS",
    "REFERENCE_PARAMS",
    "ScoreInputError",
    "ScoreOptions",
    "alternative_formats",
    "best_alternative",
    "render_table",
    "report_to_json",
    "score_model",
    "tree_adder_bits",
]

# MicroNet Challenge normalisation for CIFAR-100: WideResNet-28-10 (ec2t-reference.md, "Counting").
REFERENCE_PARAMS = 36.5e6
REFERENCE_OPS = 10.49e9
REFERENCE_MODEL = "WideResNet-28-10 (MicroNet Challenge CIFAR reference)"

_ALT_VALUE_BITS = 16  # the improved reference scorer stores values (and indices) in 16 bits


class ScoreInputError(ValueError):
    """The input is not a scorable ONNX model (missing, truncated, not ONNX, or malformed)."""


@dataclass(frozen=True)
class ScoreOptions:
    """Knobs of the operation count (and the input size). Bit widths are of the operands."""

    input_shape: tuple[int, ...] | dict[str, tuple[int, ...]] | None = None
    """Shape of the (first) graph input, e.g. ``(1, 3, 32, 32)``, or ``{input name: shape}``.
    Default: the graph's own, with a symbolic first (batch) dimension set to 1."""
    mult_bits: int = 16
    """Multiplications that do not involve a dense weight tensor: the two ternary centroid
    multiplications, BatchNorm / scale multiplications, ReLU and comparisons, pooling divisions."""
    add_bits: int = 32
    """Every addition (accumulators, bias, BatchNorm shift, residual adds, pooling sums)."""
    dense_bits: int | None = None
    """Multiplications by a dense weight (Conv, Gemm, MatMul). None: the bits of the weight's stored
    dtype (32 for float32, 16 for float16; 32 when the weight is not a constant)."""
    tree_adder: bool = False
    """Accumulate each ternary dot product in a tree adder at tree_base_bits, +1 bit per level
    (the improved reference scorer) instead of at add_bits."""
    tree_base_bits: int = 16
    merge_scale: bool = True
    """A TernaryConv's per-channel scale is merged into its two centroid multiplications (0 ops)."""
    reference_params: float = REFERENCE_PARAMS
    reference_ops: float = REFERENCE_OPS

    def validate(self) -> ScoreOptions:
        for name in ("mult_bits", "add_bits", "tree_base_bits"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.dense_bits is not None and int(self.dense_bits) <= 0:
            raise ValueError("dense_bits must be positive")
        if self.reference_params <= 0 or self.reference_ops <= 0:
            raise ValueError("reference_params and reference_ops must be positive")
        return self


# ----------------------------------------------------------------------------------------------
# Generic formulas
# ----------------------------------------------------------------------------------------------


def tree_adder_bits(n_terms: int, base_bits: int = 16, max_bits: int = 32) -> int:
    """Bit-weighted additions of summing ``n_terms`` values in a binary tree.

    Level 1 adds pairs at ``base_bits``, each next level one bit wider (capped at ``max_bits``); a
    level of n terms makes n // 2 additions and leaves ceil(n / 2) terms, so n terms cost n - 1
    additions in all. Returns the sum over additions of their bit width.
    """
    total, n, bits = 0, int(n_terms), int(base_bits)
    while n > 1:
        pairs = n // 2
        total += pairs * bits
        n -= pairs
        bits = min(bits + 1, max(int(max_bits), int(base_bits)))
    return total


def alternative_formats(n_weights: int, nnz: int, rows: int, two_valued: bool = True) -> dict[str, float]:
    """Parameter cost of the improved reference scorer's storage formats for one weight tensor.

    ``n_weights``: all weights of the layer (zeros included), ``nnz``: the non-zeros, ``rows``: output
    rows (channels). ``two_valued``: the non-zeros take at most two values (ternary), which the two mask
    formats need. Values and indices are 16 bit, masks 1 bit per entry.
    """
    n, z, m, b = int(n_weights), int(nnz), int(rows), _ALT_VALUE_BITS
    out: dict[str, float] = {
        # fp16 values of the non-zeros, plus a 1-bit location mask when anything is zero
        "fp16+mask": z * b / 32 + (n / 32 if z < n else 0.0),
        "CSR": float(math.ceil((z * (b + 1) + (m + 1) * b + 2 * b) / 32)),
        "CER": float(math.ceil((z * b + 2 * (m + 1) * b + 2 * b) / 32)),
    }
    if two_valued:
        out["2 masks"] = float(math.ceil((2 * n + 2 * b) / 32))
        out["mask+sign"] = float(math.ceil((n + z + 2 * b) / 32))
    return out


def best_alternative(n_weights: int, nnz: int, rows: int, two_valued: bool = True) -> dict[str, Any]:
    """The cheapest of :func:`alternative_formats` as ``{"name", "params", "all"}``."""
    alts = alternative_formats(n_weights, nnz, rows, two_valued)
    name = min(alts, key=lambda k: alts[k])
    return {"name": name, "params": alts[name], "all": alts}


# ----------------------------------------------------------------------------------------------
# Loading and graph index
# ----------------------------------------------------------------------------------------------

_DTYPE_BITS = {
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
    if hasattr(TensorProto, _name):
        _DTYPE_BITS[getattr(TensorProto, _name)] = _bits


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:300]


def _load(model_or_path: Any) -> tuple[onnx.ModelProto, str, int]:
    """(model, source label, bytes on disk) or ScoreInputError."""
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, "<ModelProto>", model_or_path.ByteSize()
    if isinstance(model_or_path, (bytes, bytearray)):
        model = onnx.ModelProto()
        try:
            model.ParseFromString(bytes(model_or_path))
        except Exception as e:  # noqa: BLE001 - protobuf raises several types
            raise ScoreInputError(f"<bytes>: not an ONNX model ({_one_line(e)})") from None
        _check_model_header(model, "<bytes>")
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
            f"{path}: not a readable ONNX model ({type(e).__name__}: {_one_line(e)})"
        ) from None
    _check_model_header(model, path)
    size = os.path.getsize(path)
    base = os.path.dirname(os.path.abspath(path))
    # External data files (if any) are part of what the model stores on disk.
    seen = set()
    for t in _all_tensors(model):
        if t.data_location == TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and loc not in seen:
                seen.add(loc)
                p = os.path.join(base, loc)
                if os.path.isfile(p):
                    size += os.path.getsize(p)
    return model, path, size


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def _check_model_header(model: onnx.ModelProto, label: str) -> None:
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ScoreInputError(f"{label}: not an ONNX model (no IR version or graph)")
    if not model.opset_import:
        raise ScoreInputError(f"{label}: truncated or not an ONNX model (no opset_import)")
    if len(model.graph.node) == 0:
        raise ScoreInputError(f"{label}: the graph has no nodes")


def _tensor_bits(t: TensorProto) -> int:
    if t.data_type == TensorProto.STRING:
        return 8 * sum(len(s) for s in t.string_data)
    bits = _DTYPE_BITS.get(t.data_type)
    if bits is None:
        raise ScoreInputError(f"tensor {t.name!r}: unsupported data type {t.data_type}")
    return int(np.prod([int(d) for d in t.dims], dtype=np.int64)) * bits


def _tensor_bytes(t: TensorProto) -> int:
    return (_tensor_bits(t) + 7) // 8


def _constant_tensor(node: onnx.NodeProto) -> TensorProto | None:
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


# Layout ops a weight may pass through on its way from an initializer to the op that uses it; their
# inputs other than 0 are shape metadata.
_WEIGHT_PATH_OPS = {
    "Cast",
    "Identity",
    "DequantizeLinear",
    "Transpose",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
}

# Inputs that are shapes / indices / axes rather than model values (params_paper counts them 0).
_META_INPUTS: dict[str, set[int]] = {
    "Reshape": {1},
    "Expand": {1},
    "Tile": {1},
    "Slice": {1, 2, 3, 4},
    "Pad": {1, 2, 3},
    "Resize": {1, 2, 3},
    "Upsample": {1},
    "Squeeze": {1},
    "Unsqueeze": {1},
    "ReduceMean": {1},
    "ReduceSum": {1},
    "ReduceMax": {1},
    "ReduceMin": {1},
    "ReduceProd": {1},
    "ReduceL1": {1},
    "ReduceL2": {1},
    "ReduceSumSquare": {1},
    "ReduceLogSum": {1},
    "ReduceLogSumExp": {1},
    "TopK": {1},
    "Split": {1},
    "ConstantOfShape": {0},
    "Gather": {1},
    "GatherElements": {1},
    "GatherND": {1},
    "ScatterND": {1},
    "ScatterElements": {1},
    "OneHot": {0, 1},
    "Range": {0, 1, 2},
    "CumSum": {1},
    "Trilu": {1},
}


class _Graph:
    """Name lookups over one graph, and constant tracing."""

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
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                t = _constant_tensor(node)
                if t is not None:
                    t.name = node.output[0]
                    self.const_nodes[node.output[0]] = t
        for name in self.graph_outputs:
            if name not in defined:
                raise ScoreInputError(
                    f"{label}: graph output {name!r} is not produced (truncated or malformed)"
                )
        self._arrays: dict[str, np.ndarray] = {}
        self._trace_cache: dict[str, list[tuple[str, str]] | None] = {}

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
            raise ScoreInputError(f"{self.label}: tensor {name!r} cannot be read ({_one_line(e)})") from None
        self._arrays[name] = a
        return a

    def check_tensor(self, t: TensorProto) -> None:
        """A raw tensor must hold exactly the bytes its shape and dtype need."""
        if t.HasField("raw_data") and t.data_type != TensorProto.STRING:
            if len(t.raw_data) != _tensor_bytes(t):
                raise ScoreInputError(
                    f"{self.label}: tensor {t.name!r} holds {len(t.raw_data)} bytes, its shape needs "
                    f"{_tensor_bytes(t)} (truncated or corrupt)"
                )

    def trace(self, name: str) -> list[tuple[str, str]] | None:
        """Constant sources of a tensor as ``[(const name, "value" | "meta"), ...]``, or None.

        A tensor is constant when it is an initializer / Constant output, or the output of a
        weight-path op (Cast, Identity, DequantizeLinear, layout ops) whose inputs are all constant.
        The first entry is the tensor that holds the values.
        """
        if name in self._trace_cache:
            return self._trace_cache[name]
        result: list[tuple[str, str]] | None
        if self.const_tensor(name) is not None:
            result = [(name, "value")]
        else:
            node = self.producer.get(name)
            result = None
            if node is not None and node.op_type in _WEIGHT_PATH_OPS and node.domain in ("", "ai.onnx"):
                parts: list[tuple[str, str]] = []
                ok = True
                for i, inp in enumerate(node.input):
                    if not inp:
                        continue
                    sub = self.trace(inp)
                    if sub is None:
                        ok = False
                        break
                    if i == 0 or node.op_type == "DequantizeLinear":
                        parts.extend(sub)
                    else:
                        parts.extend((n, "meta") for n, _ in sub)
                result = parts if ok and parts else None
        self._trace_cache[name] = result
        return result

    def is_weight_path(self, node: onnx.NodeProto) -> bool:
        return (
            node.op_type in _WEIGHT_PATH_OPS
            and node.domain in ("", "ai.onnx")
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


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _eval_weight_path(g: _Graph, node: onnx.NodeProto) -> np.ndarray | None:
    x = g.value(node.input[0])
    if x is None:
        return None
    a = _attrs(node)
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


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------


def _dims(t: onnx.TypeProto) -> list[int | None] | None:
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]


def _infer_shapes(
    model: onnx.ModelProto, g: _Graph, opts: ScoreOptions, warnings: list[str]
) -> tuple[dict[str, list[int | None]], dict[str, list[int]]]:
    """Shapes of all tensors (None where unknown) and the graph input shapes used."""
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    if not any(o.domain in ("", "ai.onnx") for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("", 17))
    gr = m.graph
    gr.name = model.graph.name or "g"

    # Graph inputs with the override / batch 1.
    overrides: dict[str, tuple[int, ...]] = {}
    if isinstance(opts.input_shape, dict):
        overrides = {k: tuple(int(v) for v in s) for k, s in opts.input_shape.items()}
        unknown = set(overrides) - {vi.name for vi in g.graph_inputs}
        if unknown:
            raise ScoreInputError(f"input_shape names unknown graph inputs: {sorted(unknown)}")
    elif opts.input_shape is not None:
        if not g.graph_inputs:
            raise ScoreInputError("input_shape given but the graph has no inputs")
        overrides = {g.graph_inputs[0].name: tuple(int(v) for v in opts.input_shape)}
    input_shapes: dict[str, list[int]] = {}
    for vi in g.graph_inputs:
        new = onnx.ValueInfoProto()
        new.CopyFrom(vi)
        dims = _dims(vi.type)
        if vi.name in overrides:
            shape = list(overrides[vi.name])
            if any(d <= 0 for d in shape):
                raise ScoreInputError(f"input_shape for {vi.name!r} must be positive, got {shape}")
            if dims is not None and len(dims) != len(shape):
                raise ScoreInputError(
                    f"input_shape for {vi.name!r} has rank {len(shape)}, the graph says {len(dims)}"
                )
        elif dims is None:
            raise ScoreInputError(f"graph input {vi.name!r} has no shape: pass input_shape")
        else:
            shape = list(dims)
            if shape and shape[0] is None:
                shape[0] = 1
            if any(d is None for d in shape):
                raise ScoreInputError(
                    f"graph input {vi.name!r} has symbolic dims {_shape_str(vi.type)}: pass input_shape, "
                    "e.g. (1, 3, 32, 32)"
                )
            if shape and shape[0] != 1:
                warnings.append(f"input {vi.name!r} has batch {shape[0]}: ops are for the whole batch")
        new.type.tensor_type.ClearField("shape")
        new.type.tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension(dim_value=d) for d in shape)
        gr.input.append(new)
        input_shapes[vi.name] = [int(d) for d in shape]

    # Initializers: keep small integer ones (shape data for data propagation), declare the rest as
    # inputs of known type and shape (cheap).
    for t in model.graph.initializer:
        if (
            t.data_type in (TensorProto.INT64, TensorProto.INT32)
            and int(np.prod(t.dims, dtype=np.int64)) <= 64
        ):
            gr.initializer.append(t)
        else:
            gr.input.append(helper.make_tensor_value_info(t.name, t.data_type, [int(d) for d in t.dims]))
    # Nodes; a TernaryConv becomes a standard Conv of the same geometry with a declared weight.
    for i, node in enumerate(model.graph.node):
        if node.domain == tf.DOMAIN and node.op_type == tf.OP_TYPE:
            try:
                ca = tf.ConvAttrs.from_onnx(_attrs(node))
            except tf.FormatError:
                continue  # reported by the ternary pass
            wname = f"__mnx_w{i}"
            ws = ca.weight_shape
            gr.input.append(
                helper.make_tensor_value_info(wname, TensorProto.FLOAT, [ca.m_out, "c", ws[2], ws[3]])
            )
            gr.node.append(
                helper.make_node(
                    "Conv",
                    [node.input[0], wname],
                    [node.output[0]],
                    name=node.name,
                    strides=list(ca.strides),
                    pads=list(ca.pads),
                    dilations=list(ca.dilations),
                    group=ca.group,
                    kernel_shape=[ws[2], ws[3]],
                )
            )
        else:
            gr.node.append(node)
    for vi in model.graph.output:
        o = gr.output.add()
        o.name = vi.name
        if vi.type.HasField("tensor_type"):
            o.type.tensor_type.elem_type = vi.type.tensor_type.elem_type
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001
        warnings.append(f"shape inference failed ({_one_line(e)}); using the file's value_info only")
        inferred = m

    shapes: dict[str, list[int | None]] = {}
    for vi in model.graph.value_info:  # the file's own, as fallback
        d = _dims(vi.type)
        if d is not None:
            shapes[vi.name] = d
    for coll in (inferred.graph.value_info, inferred.graph.input, inferred.graph.output):
        for vi in coll:
            d = _dims(vi.type)
            if d is not None:
                shapes[vi.name] = d
    for t in model.graph.initializer:
        shapes[t.name] = [int(x) for x in t.dims]
    for name, t in g.const_nodes.items():
        shapes[name] = [int(x) for x in t.dims]
    return shapes, input_shapes


def _shape_str(t: onnx.TypeProto) -> str:
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return "?"
    return (
        "["
        + ", ".join(
            str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
            for d in t.tensor_type.shape.dim
        )
        + "]"
    )


def _known(shape: list[int | None] | None) -> bool:
    return shape is not None and all(d is not None for d in shape)


def _numel(shape: list[int | None] | None) -> int | None:
    if not _known(shape):
        return None
    return int(np.prod(shape, dtype=np.int64))


# ----------------------------------------------------------------------------------------------
# Operation records
# ----------------------------------------------------------------------------------------------


class _Ops:
    """Operation entries of one layer: (category, kind, count, bits) with kind 'mult' or 'add'."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, float, float]] = []

    def mult(self, category: str, count: float, bits: float) -> None:
        if count:
            self.entries.append((category, "mult", float(count), float(bits)))

    def add(self, category: str, count: float, bits: float) -> None:
        if count:
            self.entries.append((category, "add", float(count), float(bits)))

    def add_bitweighted(self, category: str, count: float, bit_sum: float) -> None:
        """Additions given as their summed bit width (tree adders)."""
        if count:
            self.entries.append((category, "add", float(count), float(bit_sum) / float(count)))

    @property
    def mults(self) -> float:
        return sum(c for _, k, c, _ in self.entries if k == "mult")

    @property
    def adds(self) -> float:
        return sum(c for _, k, c, _ in self.entries if k == "add")

    @property
    def ops(self) -> float:
        return sum(c * b / 32 for _, _, c, b in self.entries)

    def by_category(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for cat, _, c, b in self.entries:
            out[cat] = out.get(cat, 0.0) + c * b / 32
        return out


# Ops that move or reshape data without arithmetic.
_ZERO_OPS = {
    "Identity",
    "Cast",
    "CastLike",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "GatherElements",
    "GatherND",
    "Shape",
    "Size",
    "Constant",
    "ConstantOfShape",
    "Dropout",
    "Pad",
    "Expand",
    "Tile",
    "DepthToSpace",
    "SpaceToDepth",
}

# Elementwise op -> (mults per element, adds per element); comparisons count as multiplications
# (the MicroNet Challenge counts a ReLU as one multiplication).
_ELEMENTWISE = {
    "Relu": (1, 0),
    "LeakyRelu": (2, 0),
    "PRelu": (2, 0),
    "Clip": (2, 0),
    "Sigmoid": (2, 1),
    "Add": (0, 1),
    "Sub": (0, 1),
    "Mul": (1, 0),
    "Div": (1, 0),
    "Neg": (0, 0),
    "Abs": (0, 0),
}


# ----------------------------------------------------------------------------------------------
# The passes
# ----------------------------------------------------------------------------------------------


def _ternary_analysis(
    node: onnx.NodeProto, g: _Graph, shapes: dict[str, list[int | None]], version: int = tf.OPSET_VERSION
) -> dict[str, Any]:
    """Decode a TernaryConv's weight and collect what the counts need (``version``: the imported
    ``micronet`` opset, which limits the node's inputs)."""
    tf.check_input_count(len(node.input), version)
    attrs = tf.ConvAttrs.from_onnx(_attrs(node))
    inputs = list(node.input) + [""] * (tf.MAX_INPUTS - len(node.input))

    def const(i: int) -> np.ndarray | None:
        name = inputs[i]
        if not name:
            return None
        a = g.array(name)
        if a is None:
            raise tf.FormatError(f"input {i} ({tf.INPUT_NAMES[i]}) must be an initializer")
        return a

    mask, sign, centroids = const(tf.IN_MASK), const(tf.IN_SIGN), const(tf.IN_CENTROIDS)
    scale, bias = const(tf.IN_SCALE), const(tf.IN_BIAS)
    in_map, out_map = const(tf.IN_IN_CHANNELS), const(tf.IN_OUT_CHANNELS)
    in_scale, in_bias = const(tf.IN_IN_SCALE), const(tf.IN_IN_BIAS)
    ws = attrs.weight_shape
    m_stored, cg, kh, kw = ws
    groups = attrs.group
    n_stored = cg * groups
    m_out = attrs.m_out
    x_shape = shapes.get(inputs[tf.IN_X])
    c_in = x_shape[1] if x_shape is not None and len(x_shape) == 4 else None
    codes = tf.check_node_tensors(attrs, mask, sign, centroids, scale, bias, in_map, out_map, x_channels=c_in,
                                  in_scale=in_scale, in_bias=in_bias).codes
    residual = inputs[tf.IN_RESIDUAL]
    if residual and _known(x_shape) and len(x_shape) == 4:
        r_shape = shapes.get(residual)
        y_shape = [x_shape[0], m_out, *attrs.output_hw(x_shape[2], x_shape[3])]
        if _known(r_shape) and list(r_shape) != y_shape:
            raise tf.FormatError(f"residual has shape {list(r_shape)}, the output has {y_shape}")

    nnz_rows = np.count_nonzero(codes.reshape(m_stored, -1), axis=1).astype(np.int64)
    live = nnz_rows > 0
    mg = m_stored // groups
    used_in = np.zeros(n_stored, dtype=bool)
    eff_weights = 0
    for gi in range(groups):
        rows = codes[gi * mg : (gi + 1) * mg]
        used = np.any(rows != 0, axis=(0, 2, 3))
        used_in[gi * cg : (gi + 1) * cg] = used
        eff_weights += int(used.sum()) * kh * kw * int(live[gi * mg : (gi + 1) * mg].sum())
    x_channels_read = (in_map[used_in] if in_map is not None else np.flatnonzero(used_in)).astype(np.int64)
    if c_in is None:
        c_in = int(max(n_stored, (int(in_map.max()) + 1) if in_map is not None and in_map.size else 0))
    distinct_codes = {int(v) for v in np.unique(codes) if v != 0}
    return {
        "attrs": attrs,
        "codes_nnz_rows": nnz_rows,
        "m_stored": m_stored,
        "m_out": m_out,
        "m_eff": int(live.sum()),
        "n_stored": n_stored,
        "n_eff": int(used_in.sum()),
        "c_in": int(c_in),
        "k2": kh * kw,
        "kernel": (kh, kw),
        "numel": int(codes.size),
        "nnz": int(nnz_rows.sum()),
        "eff_weights": int(eff_weights),
        "has_scale": scale is not None,
        "has_bias": bias is not None,
        "has_in_scale": in_scale is not None,
        "has_in_bias": in_bias is not None,
        "has_residual": bool(residual),
        "x_shape": list(x_shape) if _known(x_shape) and len(x_shape) == 4 else None,
        "x_channels_read": x_channels_read,
        "two_valued": len(distinct_codes) <= 2,
    }


_CHANNELWISE_UNARY = {"Relu", "Identity", "Dropout", "Cast", "LeakyRelu", "Clip", "Sigmoid", "Tanh"}


def _channels_read(
    name: str, g: _Graph, ternary: dict[str, dict[str, Any]], channels: int, depth: int = 0
) -> set[int] | None:
    """Channels (axis 1) of tensor ``name`` that some consumer reads; None = all (or unknown)."""
    if name in g.graph_outputs or depth > 8:
        return None
    used: set[int] = set()
    for node, idx in g.consumers.get(name, []):
        if node.domain == tf.DOMAIN and node.op_type == tf.OP_TYPE and idx == tf.IN_X:
            info = ternary.get(_node_key(node))
            if info is None:
                return None
            used.update(int(c) for c in info["x_channels_read"])
        elif node.op_type == "Conv" and node.domain in ("", "ai.onnx") and idx == 0 and len(node.input) > 1:
            w = g.value(node.input[1])
            if w is None or w.ndim < 3 or w.shape[1] * int(_attrs(node).get("group", 1)) != channels:
                return None
            groups = int(_attrs(node).get("group", 1))
            mg, cg = w.shape[0] // groups, w.shape[1]
            for gi in range(groups):
                nz = np.any(w[gi * mg : (gi + 1) * mg] != 0, axis=tuple(i for i in range(w.ndim) if i != 1))
                used.update(int(gi * cg + c) for c in np.flatnonzero(nz))
        elif node.op_type in _CHANNELWISE_UNARY and node.domain in ("", "ai.onnx") and idx == 0:
            sub = _channels_read(node.output[0], g, ternary, channels, depth + 1)
            if sub is None:
                return None
            used |= sub
        else:
            return None
    return used


def _node_key(node: onnx.NodeProto) -> str:
    """Outputs are unique in a graph, so the first one names a node."""
    return node.output[0] if node.output else node.name


def score_model(model_or_path: Any, options: ScoreOptions | None = None) -> dict[str, Any]:
    """Score an ONNX model (path, bytes or ModelProto): storage, operations and the MicroNet score.

    Returns a dict of plain Python values (see ``docs/scoring.md`` for every key). Raises
    ScoreInputError (a ValueError) for a missing, truncated, non-ONNX or malformed input.
    """
    opts = (options or ScoreOptions()).validate()
    model, label, file_bytes = _load(model_or_path)
    warnings: list[str] = []
    g = _Graph(model, label)
    for t in _all_tensors(model):
        g.check_tensor(t)

    imported = {o.domain: o.version for o in model.opset_import}
    has_ternary = any(n.domain == tf.DOMAIN and n.op_type == tf.OP_TYPE for n in model.graph.node)
    if has_ternary:
        if tf.DOMAIN not in imported:
            raise ScoreInputError(f"{label}: uses domain {tf.DOMAIN!r} but does not import it (truncated?)")
        if imported[tf.DOMAIN] not in tf.SUPPORTED_OPSET_VERSIONS:
            raise ScoreInputError(
                f"{label}: {tf.DOMAIN} opset {imported[tf.DOMAIN]} is not supported "
                f"(this scorer reads {list(tf.SUPPORTED_OPSET_VERSIONS)})"
            )

    shapes, input_shapes = _infer_shapes(model, g, opts, warnings)

    # Pass 1: ternary layers.
    ternary: dict[Any, dict[str, Any]] = {}
    for node in model.graph.node:
        if node.domain == tf.DOMAIN and node.op_type == tf.OP_TYPE:
            try:
                ternary[_node_key(node)] = _ternary_analysis(node, g, shapes, imported[tf.DOMAIN])
            except tf.FormatError as e:
                raise ScoreInputError(f"{label}: TernaryConv {node.name!r}: {_one_line(e)}") from None

    # Pass 2: per layer storage and operations.
    owned: set[str] = set()
    layers: list[dict[str, Any]] = []
    unknown_ops: set[str] = set()
    for node in model.graph.node:
        if g.is_weight_path(node) or (node.op_type == "Constant" and node.domain in ("", "ai.onnx")):
            continue  # folded into the layer that uses the constant
        layer = _layer_skeleton(node, shapes)
        ops = _Ops()
        sources = _owned_sources(node, g)
        new_sources = [s for s in sources if s[0] not in owned]
        owned.update(s[0] for s in new_sources)
        layer["params_stored"] = sum(_tensor_bytes(g.const_tensor(n)) for n, _ in new_sources) / 4
        layer["initializers"] = [n for n, _ in new_sources]
        out_shape = shapes.get(node.output[0]) if node.output else None

        if node.domain == tf.DOMAIN and node.op_type == tf.OP_TYPE:
            _ternary_layer(layer, ternary[_node_key(node)], out_shape, ops, opts)
        elif node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx"):
            _bn_layer(layer, node, g, ternary, shapes, ops, opts)
        else:
            known = _generic_layer(layer, node, g, shapes, new_sources, ops, opts)
            if not known:
                std = node.domain in ("", "ai.onnx")
                unknown_ops.add(node.op_type if std else f"{node.domain}::{node.op_type}")
        if layer.get("shape_unknown"):
            warnings.append(f"{layer['name']}: output shape unknown, its ops count 0")
        layer["mults"] = ops.mults
        layer["adds"] = ops.adds
        layer["ops"] = ops.ops
        layer["ops_detail"] = ops.by_category()
        layer["_ops"] = ops
        layers.append(layer)

    # Whatever the file stores that no node needs.
    stored_extra = [t for t in model.graph.initializer if t.name not in owned]
    stored_extra += [t for n, t in g.const_nodes.items() if n not in owned]
    if stored_extra:
        layers.append(
            {
                "name": "(unused constants)",
                "op_type": "-",
                "params_paper": 0.0,
                "params_stored": sum(_tensor_bytes(t) for t in stored_extra) / 4,
                "dense_fp32_params": 0.0,
                "initializers": [t.name for t in stored_extra],
                "sparsity": None,
                "mults": 0.0,
                "adds": 0.0,
                "ops": 0.0,
                "ops_detail": {},
                "_ops": _Ops(),
            }
        )
        warnings.append(f"{len(stored_extra)} stored constant(s) are not used by any node")

    totals_by_cat: dict[str, float] = {}
    for layer in layers:
        for cat, v in layer.pop("_ops").by_category().items():
            totals_by_cat[cat] = totals_by_cat.get(cat, 0.0) + v

    initializer_bytes = sum(_tensor_bytes(t) for t in model.graph.initializer)
    constant_bytes = sum(_tensor_bytes(t) for t in g.const_nodes.values())
    params_paper = sum(layer["params_paper"] for layer in layers)
    params_stored = sum(layer["params_stored"] for layer in layers)
    dense_fp32 = sum(layer.get("dense_fp32_params", 0.0) for layer in layers)
    ops_total = sum(layer["ops"] for layer in layers)
    best_format = 0.0
    for layer in layers:
        alt = layer.get("best_alternative")
        fmt = layer.get("weight_format_params")
        if alt is not None and fmt is not None and alt["params"] < fmt:
            best_format += layer["params_paper"] - fmt + alt["params"]
        else:
            best_format += layer["params_paper"]
    ops_term = ops_total / opts.reference_ops
    report: dict[str, Any] = {
        "model": label,
        "file_bytes": int(file_bytes),
        "initializer_bytes": int(initializer_bytes),
        "constant_bytes": int(constant_bytes),
        "params_paper": float(params_paper),
        "params_stored": float(params_stored),
        "params_best_format": float(best_format),
        "dense_fp32_params": float(dense_fp32),
        "compression_ratio": float(dense_fp32 / params_stored) if params_stored else None,
        "compression_ratio_paper": float(dense_fp32 / params_paper) if params_paper else None,
        "ops": float(ops_total),
        "mults": float(sum(layer["mults"] for layer in layers)),
        "adds": float(sum(layer["adds"] for layer in layers)),
        "ops_by_category": totals_by_cat,
        "score": float(params_paper / opts.reference_params + ops_term),
        "score_stored": float(params_stored / opts.reference_params + ops_term),
        "score_terms": {
            "params_paper": float(params_paper / opts.reference_params),
            "params_stored": float(params_stored / opts.reference_params),
            "ops": float(ops_term),
        },
        "reference": {"model": REFERENCE_MODEL, "params": opts.reference_params, "ops": opts.reference_ops},
        "options": _plain(asdict(opts)),
        "input_shapes": input_shapes,
        "num_ternary_layers": len(ternary),
        "unknown_ops": sorted(unknown_ops),
        "warnings": warnings,
        "layers": layers,
    }
    return _plain(report)


def _layer_skeleton(node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> dict[str, Any]:
    out_shape = shapes.get(node.output[0]) if node.output else None
    return {
        "name": node.name or (node.output[0] if node.output else node.op_type),
        "op_type": node.op_type,
        "domain": node.domain or "",
        "output_shape": out_shape,
        "in_channels": None,
        "out_channels": None,
        "kernel": None,
        "sparsity": None,
        "params_paper": 0.0,
        "params_paper_detail": {},
        "params_stored": 0.0,
        "dense_fp32_params": 0.0,
        "weight_format_params": None,
        "best_alternative": None,
        "unknown": False,
        "shape_unknown": False,
    }


def _owned_sources(node: onnx.NodeProto, g: _Graph) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name in node.input:
        if not name:
            continue
        for src in g.trace(name) or []:
            if src[0] not in seen:
                seen.add(src[0])
                out.append(src)
    return out


def _ternary_layer(layer: dict, info: dict, out_shape: list | None, ops: _Ops, opts: ScoreOptions) -> None:
    m_eff, eff, nnz = info["m_eff"], info["eff_weights"], info["nnz"]
    loc = eff / 32  # location mask over the effective weights (Appendix B)
    sgn = nnz / 32  # sign mask: sigma * N K^2 M / 32 = nnz / 32
    centroids = 1.0  # two fp16 centroids
    bn = m_eff / 2 if (info["has_bias"] or info["has_scale"]) else 0.0  # folded BN: 16-bit bias per channel
    in_affine = info["has_in_scale"] or info["has_in_bias"]
    # The BN before the conv (in_scale / in_bias): Appendix B's BN rule, a 16-bit bias per effective
    # input channel with the scale merged, as for a standalone BatchNormalization.
    in_bn = info["n_eff"] / 2 if in_affine else 0.0
    layer["params_paper"] = loc + sgn + centroids + bn + in_bn
    layer["params_paper_detail"] = {
        "location_mask": loc,
        "sign_mask": sgn,
        "centroids": centroids,
        "bn_bias": bn,
        "in_bn_bias": in_bn,
    }
    layer["weight_format_params"] = loc + sgn + centroids
    layer["in_channels"] = [info["n_eff"], info["c_in"]]
    layer["out_channels"] = [m_eff, info["m_out"]]
    layer["stored_channels"] = [info["n_stored"], info["m_stored"]]
    layer["kernel"] = list(info["kernel"])
    layer["group"] = info["attrs"].group
    layer["nnz"] = nnz
    layer["weights_effective"] = eff
    layer["weights_stored"] = info["numel"]
    layer["sparsity"] = 1 - nnz / eff if eff else 1.0
    layer["sparsity_stored"] = 1 - nnz / info["numel"]
    folded_bias = info["m_out"] if (info["has_bias"] or info["has_scale"]) else 0
    in_bn_dense = 4 * info["n_stored"] if in_affine else 0  # the dense export's BatchNormalization: 4 vectors
    layer["dense_fp32_params"] = float(
        info["m_out"] * (info["c_in"] // info["attrs"].group) * info["k2"] + folded_bias + in_bn_dense
    )
    layer["best_alternative"] = best_alternative(eff, nnz, m_eff, info["two_valued"])
    if not _known(out_shape) or len(out_shape) != 4:
        layer["shape_unknown"] = True
        return
    b, _, oh, ow = out_shape
    positions = b * oh * ow
    # Two centroid multiplications per output position and live channel.
    ops.mult("ternary_mult", 2 * positions * m_eff, opts.mult_bits)
    rows = info["codes_nnz_rows"]
    rows = rows[rows > 0]
    n_adds = int((rows - 1).sum())
    if opts.tree_adder:
        vals, counts = np.unique(rows, return_counts=True)
        bit_sum = sum(
            int(c) * tree_adder_bits(int(v), opts.tree_base_bits, opts.add_bits)
            for v, c in zip(vals, counts, strict=True)
        )
        ops.add_bitweighted("ternary_add", positions * n_adds, positions * bit_sum)
    else:
        ops.add("ternary_add", positions * n_adds, opts.add_bits)
    if info["has_scale"] and not opts.merge_scale:
        ops.mult("scale_mult", positions * m_eff, opts.mult_bits)
    if info["has_bias"]:
        ops.add("bias_add", positions * m_eff, opts.add_bits)
    # With a residual, a dead output channel is act(bias + residual), no longer a constant: the add and
    # the activation run on every output element.
    if info["has_residual"]:
        ops.add("residual_add", positions * info["m_out"], opts.add_bits)
    if info["attrs"].activation == "Relu":
        ops.mult("activation", positions * (info["m_out"] if info["has_residual"] else m_eff), opts.mult_bits)
    if in_affine:
        x_shape = info["x_shape"]
        if x_shape is None:
            layer["shape_unknown"] = True
            return
        normalised = x_shape[0] * info["n_eff"] * x_shape[2] * x_shape[3]  # the read channels of X
        if info["has_in_scale"]:
            ops.mult("bn_mult", normalised, opts.mult_bits)
        if info["has_in_bias"]:
            ops.add("bn_add", normalised, opts.add_bits)


def _value_params(g: _Graph, sources: list[tuple[str, str]]) -> float:
    """Paper count of constants at their stored dtype (metadata counts 0)."""
    return sum(_tensor_bits(g.const_tensor(n)) / 32 for n, role in sources if role == "value")


def _bn_layer(
    layer: dict,
    node: onnx.NodeProto,
    g: _Graph,
    ternary: dict,
    shapes: dict,
    ops: _Ops,
    opts: ScoreOptions,
) -> None:
    out_shape = shapes.get(node.output[0])
    scale_shape = shapes.get(node.input[1]) if len(node.input) > 1 else None
    channels = None
    if scale_shape and _known(scale_shape) and len(scale_shape) == 1:
        channels = int(scale_shape[0])
    elif _known(out_shape) and len(out_shape) > 1:
        channels = int(out_shape[1])
    if channels is None:
        layer["shape_unknown"] = True
        return
    read = _channels_read(node.output[0], g, ternary, channels)
    m_eff = channels if read is None else len(read)
    layer["in_channels"] = [channels, channels]
    layer["out_channels"] = [m_eff, channels]
    layer["params_paper"] = m_eff / 2
    layer["params_paper_detail"] = {"bn_bias": m_eff / 2}
    layer["dense_fp32_params"] = float(
        sum(_numel(shapes.get(n)) or 0 for n in node.input[1:5] if n and g.trace(n) is not None)
    )
    n = _numel(out_shape)
    if n is None:
        layer["shape_unknown"] = True
        return
    ops.mult("bn_mult", n, opts.mult_bits)
    ops.add("bn_add", n, opts.add_bits)


def _weight_bits(g: _Graph, name: str, opts: ScoreOptions) -> int:
    if opts.dense_bits is not None:
        return int(opts.dense_bits)
    src = g.trace(name)
    if not src:
        return 32
    t = g.const_tensor(src[0][0])
    return _DTYPE_BITS.get(t.data_type, 32)


def _dense_weight_info(layer: dict, g: _Graph, wname: str, rows: int) -> None:
    w = g.value(wname)
    if w is None:
        return
    w = np.asarray(w)
    if w.dtype.kind not in "fiuc":
        return
    nz = w != 0
    nnz, numel = int(nz.sum()), int(w.size)
    layer["nnz"] = nnz
    layer["sparsity"] = 1 - nnz / numel if numel else 0.0
    distinct = np.unique(w[nz]).size if nnz else 0
    src = g.trace(wname)
    layer["weight_format_params"] = _tensor_bits(g.const_tensor(src[0][0])) / 32 if src else None
    layer["best_alternative"] = best_alternative(numel, nnz, rows, distinct <= 2)


def _count_dense(layer: dict, g: _Graph, node: onnx.NodeProto, rows: int, k: int, n_out: int, ops: _Ops,
                 opts: ScoreOptions) -> None:
    """A dense weight layer (Conv, Gemm): weight storage, k mults and k-1 adds per output, bias adds."""
    _dense_weight_info(layer, g, node.input[1], rows)
    ops.mult("dense_mult", n_out * k, _weight_bits(g, node.input[1], opts))
    ops.add("dense_add", n_out * (k - 1), opts.add_bits)
    if len(node.input) > 2 and node.input[2]:
        ops.add("bias_add", n_out, opts.add_bits)


def _generic_layer(
    layer: dict,
    node: onnx.NodeProto,
    g: _Graph,
    shapes: dict,
    new_sources: list[tuple[str, str]],
    ops: _Ops,
    opts: ScoreOptions,
) -> bool:
    """Params and ops of a standard node; False when the op is unknown (0 ops)."""
    op = node.op_type
    default_domain = node.domain in ("", "ai.onnx")
    meta_idx = _META_INPUTS.get(op, set()) if default_domain else set()
    meta_names = {n for i, n in enumerate(node.input) if i in meta_idx and n}
    paper = 0.0
    dense = 0.0
    for name in dict.fromkeys(n for n in node.input if n):
        src = g.trace(name)
        if src is None or name in meta_names:
            continue
        mine = [s for s in src if s in new_sources]
        paper += _value_params(g, mine)
        if src[0] in new_sources:
            dense += float(_numel(shapes.get(name)) or _numel(shapes.get(src[0][0])) or 0)
    layer["params_paper"] = paper
    layer["params_paper_detail"] = {"values": paper} if paper else {}
    layer["dense_fp32_params"] = dense

    out_shape = shapes.get(node.output[0]) if node.output else None
    n_out = _numel(out_shape)
    in_shape = shapes.get(node.input[0]) if node.input and node.input[0] else None
    if not default_domain:
        layer["unknown"] = True
        return False
    if op in _ZERO_OPS:
        return True

    def need(n: int | None) -> bool:
        if n is None:
            layer["shape_unknown"] = True
            return False
        return True

    if op == "Conv":
        w_shape = shapes.get(node.input[1])
        if not need(n_out) or not _known(w_shape):
            layer["shape_unknown"] = True
            return True
        a = _attrs(node)
        k = int(np.prod(w_shape[1:]))
        layer["out_channels"] = [int(w_shape[0]), int(w_shape[0])]
        cin = int(w_shape[1]) * int(a.get("group", 1))
        layer["in_channels"] = [cin, cin]
        layer["kernel"] = [int(v) for v in w_shape[2:]]
        _count_dense(layer, g, node, int(w_shape[0]), k, n_out, ops, opts)
        return True
    if op == "Gemm":
        a_shape, b_shape = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not need(n_out) or not _known(a_shape) or not _known(b_shape):
            layer["shape_unknown"] = True
            return True
        a = _attrs(node)
        k = a_shape[0] if int(a.get("transA", 0)) else a_shape[1]
        rows = b_shape[0] if int(a.get("transB", 0)) else b_shape[1]
        layer["in_channels"] = [int(k), int(k)]
        layer["out_channels"] = [int(rows), int(rows)]
        _count_dense(layer, g, node, int(rows), int(k), n_out, ops, opts)
        return True
    if op == "MatMul":
        a_shape = shapes.get(node.input[0])
        if not need(n_out) or not _known(a_shape):
            layer["shape_unknown"] = True
            return True
        k = int(a_shape[-1])
        b_shape = shapes.get(node.input[1])
        if g.trace(node.input[1]) is not None and _known(b_shape):
            rows = int(b_shape[-1])
            layer["in_channels"] = [k, k]
            layer["out_channels"] = [rows, rows]
            _dense_weight_info(layer, g, node.input[1], rows)
            bits = _weight_bits(g, node.input[1], opts)
        elif g.trace(node.input[0]) is not None:
            bits = _weight_bits(g, node.input[0], opts)
        else:
            bits = opts.dense_bits or 32
        ops.mult("dense_mult", n_out * k, bits)
        ops.add("dense_add", n_out * (k - 1), opts.add_bits)
        return True
    if op in ("GlobalAveragePool", "GlobalMaxPool"):
        if not need(n_out) or not need(_numel(in_shape)):
            return True
        spatial = _numel(in_shape) // n_out
        if op == "GlobalAveragePool":
            ops.mult("pool", n_out, opts.mult_bits)  # one division per channel
            ops.add("pool", n_out * (spatial - 1), opts.add_bits)
        else:
            ops.mult("pool", n_out * (spatial - 1), opts.mult_bits)  # comparisons
        return True
    if op in ("AveragePool", "MaxPool"):
        if not need(n_out):
            return True
        window = int(np.prod(_attrs(node).get("kernel_shape", [1])))
        if op == "AveragePool":
            ops.add("pool", n_out * (window - 1), opts.add_bits)
            ops.mult("pool", n_out, opts.mult_bits)
        else:
            ops.mult("pool", n_out * (window - 1), opts.mult_bits)
        return True
    if op in ("ReduceMean", "ReduceSum"):
        n_in = _numel(in_shape)
        if not need(n_out) or not need(n_in):
            return True
        ops.add("reduce", n_in - n_out, opts.add_bits)
        if op == "ReduceMean":
            ops.mult("reduce", n_out, opts.mult_bits)
        return True
    if op in ("Sum", "Max", "Min", "Mean"):
        if not need(n_out):
            return True
        k = max(len([i for i in node.input if i]) - 1, 0)
        if op in ("Sum", "Mean"):
            ops.add("elementwise", n_out * k, opts.add_bits)
            if op == "Mean":
                ops.mult("elementwise", n_out, opts.mult_bits)
        else:
            ops.mult("elementwise", n_out * k, opts.mult_bits)
        return True
    if op in ("DequantizeLinear", "QuantizeLinear"):
        if not need(n_out):
            return True
        ops.mult("elementwise", n_out, opts.mult_bits)
        ops.add("elementwise", n_out, opts.add_bits)
        return True
    if op in _ELEMENTWISE:
        if not need(n_out):
            return True
        mults, adds = _ELEMENTWISE[op]
        cat = "activation" if op in ("Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid") else "elementwise"
        if op == "Add" and len(node.input) == 2 and all(g.trace(i) is None for i in node.input):
            cat = "residual_add"
        ops.mult(cat, n_out * mults, opts.mult_bits)
        ops.add(cat, n_out * adds, opts.add_bits)
        return True
    layer["unknown"] = True
    return False


def _plain(v: Any) -> Any:
    """Convert to JSON-serializable plain Python types."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def report_to_json(report: dict[str, Any], indent: int | None = 2) -> str:
    """The JSON form of a report (it is the report dict itself)."""
    return json.dumps(report, indent=indent, sort_keys=False)


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    ax = abs(x)
    if ax < 10_000:
        return f"{x:,.1f}" if x != int(x) else f"{int(x):,}"
    if ax < 10_000_000:
        return f"{x / 1e3:,.1f}K"
    return f"{x / 1e6:,.2f}M"


def _chan(v: list | None) -> str:
    return "-" if not v else f"{v[0]}/{v[1]}"


def render_table(report: dict[str, Any]) -> str:
    """A fixed-width per-layer table with totals and a summary block."""
    cols = [
        ("layer", 30, "<"),
        ("op", 18, "<"),
        ("in", 9, ">"),
        ("out", 9, ">"),
        ("kernel", 6, ">"),
        ("sparsity", 8, ">"),
        ("params_paper", 12, ">"),
        ("params_stored", 13, ">"),
        ("ops", 10, ">"),
        ("best alternative", 22, "<"),
    ]

    def row(values: list[str]) -> str:
        cells = []
        for (_, width, align), v in zip(cols, values, strict=True):
            v = v if len(v) <= width else v[: width - 1] + "~"
            cells.append(f"{v:{align}{width}}")
        return "  ".join(cells).rstrip()

    lines = [row([c[0] for c in cols]), row(["-" * c[1] for c in cols])]
    for layer in report["layers"]:
        op = layer["op_type"] + ("?" if layer.get("unknown") else "")
        kernel = "x".join(str(k) for k in layer["kernel"]) if layer.get("kernel") else "-"
        sp = layer.get("sparsity")
        alt = layer.get("best_alternative")
        alt_s = "-"
        if alt is not None:
            fmt = layer.get("weight_format_params")
            mark = " *" if fmt is not None and alt["params"] < fmt else ""
            alt_s = f"{alt['name']} {_fmt(alt['params'])}{mark}"
        lines.append(
            row(
                [
                    str(layer["name"]),
                    op,
                    _chan(layer.get("in_channels")),
                    _chan(layer.get("out_channels")),
                    kernel,
                    "-" if sp is None else f"{100 * sp:.1f}%",
                    _fmt(layer["params_paper"]),
                    _fmt(layer["params_stored"]),
                    _fmt(layer["ops"]),
                    alt_s,
                ]
            )
        )
    lines.append(row(["-" * c[1] for c in cols]))
    lines.append(
        row(
            [
                f"total ({len(report['layers'])} layers)",
                "",
                "",
                "",
                "",
                "",
                _fmt(report["params_paper"]),
                _fmt(report["params_stored"]),
                _fmt(report["ops"]),
                "",
            ]
        )
    )
    ref = report["reference"]
    comp = report.get("compression_ratio")
    comp_p = report.get("compression_ratio_paper")
    summary = [
        "",
        f"model                  {report['model']}",
        f"params_paper           {report['params_paper']:,.1f}  (Appendix B, 32-bit units)",
        f"params_stored          {report['params_stored']:,.1f}  (every stored bit / 32)",
        f"params_best_format     {report['params_best_format']:,.1f}  (cheapest reference format per layer)",
        f"file size              {report['file_bytes']:,} bytes  "
        f"(initializers {report['initializer_bytes']:,} bytes)",
        f"dense fp32 equivalent  {report['dense_fp32_params']:,.0f} params "
        f"({4 * report['dense_fp32_params']:,.0f} bytes)",
        "compression            "
        + (f"{comp:.2f}x stored" if comp else "-")
        + (f", {comp_p:.2f}x paper" if comp_p else ""),
        f"ops                    {report['ops']:,.1f}  (32-bit units; {report['mults']:,.0f} mults, "
        f"{report['adds']:,.0f} adds)",
        f"score                  {report['score']:.6f}  "
        f"= params_paper/{ref['params']:.4g} + ops/{ref['ops']:.4g}",
        f"score (stored params)  {report['score_stored']:.6f}",
    ]
    if report.get("unknown_ops"):
        summary.append(f"unknown ops (0 ops)    {', '.join(report['unknown_ops'])}")
    if any(
        layer.get("best_alternative") is not None
        and layer.get("weight_format_params") is not None
        and layer["best_alternative"]["params"] < layer["weight_format_params"]
        for layer in report["layers"]
    ):
        summary.append("* = the alternative format is cheaper than the stored one")
    for w in report.get("warnings", []):
        summary.append(f"warning: {w}")
    return "\n".join(lines + summary) + "\n"
