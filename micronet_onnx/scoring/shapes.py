"""Tensor shapes of a graph for the input size being scored.

The scorer counts per inference of one input shape, so every count needs the shapes of the tensors a
node reads and writes. They come from ``onnx.shape_inference`` run on a copy of the graph whose inputs
carry the shape being scored, and in which each custom node the standard inference cannot see through
(a TernaryConv) is replaced by its standard-ONNX form, given by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from micronet_onnx.format import versions
from micronet_onnx.scoring.graph import Graph, ScoreInputError, node_key, one_line
from micronet_onnx.scoring.options import ScoreOptions

__all__ = ["Shape", "Shapes", "StandardForm", "dims", "infer_shapes", "input_shapes", "known", "numel"]

Shape = list[int | None]
"""Dims of a tensor, None where a dim is unknown."""
Shapes = dict[str, Shape]
StandardForm = tuple[list[onnx.NodeProto], list[onnx.ValueInfoProto]]
"""Standard nodes that stand in for one custom node in shape inference, and the tensors they read that
the graph does not define (declared as inputs of known type and shape)."""


MAX_INPUT_ELEMENTS = 1 << 30  # an input_shape above this (e.g. a batch of 1e9 images) is refused


def dims(t: onnx.TypeProto) -> Shape | None:
    """The dims of a tensor type, None without a shape."""
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]


def known(shape: Shape | None) -> bool:
    return shape is not None and all(d is not None for d in shape)


def numel(shape: Shape | None) -> int | None:
    if not known(shape):
        return None
    return int(np.prod(shape, dtype=np.int64))


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


def input_shapes(g: Graph, opts: ScoreOptions, warnings: list[str]) -> dict[str, list[int]]:
    """The shape of each graph input being scored: ``opts.input_shape`` where given, else the graph's
    own with a symbolic first (batch) dim set to 1. Any other unknown dim is a ScoreInputError."""
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
    out: dict[str, list[int]] = {}
    for vi in g.graph_inputs:
        declared = dims(vi.type)
        if vi.name in overrides:
            shape = list(overrides[vi.name])
            if any(d <= 0 for d in shape):
                raise ScoreInputError(f"input_shape for {vi.name!r} must be positive, got {shape}")
            if declared is not None and len(declared) != len(shape):
                raise ScoreInputError(
                    f"input_shape for {vi.name!r} has rank {len(shape)}, the graph says {len(declared)}"
                )
            for axis, (want, got) in enumerate(zip(declared or [], shape)):
                if want is not None and want != got:
                    raise ScoreInputError(f"input_shape for {vi.name!r} sets dim {axis} to {got}, but the graph "
                                          f"fixes it at {want} ({_shape_str(vi.type)})")
            if int(np.prod(shape, dtype=np.float64)) > MAX_INPUT_ELEMENTS:
                raise ScoreInputError(f"input_shape for {vi.name!r} has {int(np.prod(shape, dtype=np.float64)):.3g} "
                                      f"elements, above the bound of {MAX_INPUT_ELEMENTS:,}")
        elif declared is None:
            raise ScoreInputError(f"graph input {vi.name!r} has no shape: pass input_shape")
        else:
            shape = list(declared)
            if shape and shape[0] is None:
                shape[0] = 1
            if any(d is None for d in shape):
                raise ScoreInputError(
                    f"graph input {vi.name!r} has symbolic dims {_shape_str(vi.type)}: pass input_shape, "
                    "e.g. (1, 3, 32, 32)"
                )
            if shape and shape[0] != 1:
                warnings.append(f"input {vi.name!r} has batch {shape[0]}: ops are for the whole batch")
        out[vi.name] = [int(d) for d in shape]
    return out


def _inference_model(model: onnx.ModelProto, g: Graph, inputs: Mapping[str, list[int]],
                     standard: Mapping[str, StandardForm]) -> onnx.ModelProto:
    """A copy of the graph for ``onnx.shape_inference``: inputs at ``inputs``; small integer
    initializers kept (shape data for data propagation), every other one declared as an input of its
    type and shape (cheap); each node named in ``standard`` (by `node_key`) replaced by its form."""
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    if not any(o.domain in ("", "ai.onnx") for o in m.opset_import):
        m.opset_import.append(versions.onnx_opsetid())
    gr = m.graph
    gr.name = model.graph.name or "g"
    for vi in g.graph_inputs:
        new = gr.input.add()
        new.CopyFrom(vi)
        new.type.tensor_type.ClearField("shape")
        new.type.tensor_type.shape.dim.extend(
            onnx.TensorShapeProto.Dimension(dim_value=d) for d in inputs[vi.name]
        )
    for t in model.graph.initializer:
        if (
            t.data_type in (TensorProto.INT64, TensorProto.INT32)
            and int(np.prod(t.dims, dtype=np.int64)) <= 64
        ):
            gr.initializer.append(t)
        else:
            gr.input.append(helper.make_tensor_value_info(t.name, t.data_type, [int(d) for d in t.dims]))
    for node in model.graph.node:
        form = standard.get(node_key(node))
        if form is None:
            gr.node.append(node)
        else:
            gr.node.extend(form[0])
            gr.input.extend(form[1])
    for vi in model.graph.output:
        o = gr.output.add()
        o.name = vi.name
        if vi.type.HasField("tensor_type"):
            o.type.tensor_type.elem_type = vi.type.tensor_type.elem_type
    return m


def infer_shapes(model: onnx.ModelProto, g: Graph, inputs: Mapping[str, list[int]],
                 standard: Mapping[str, StandardForm], warnings: list[str]) -> Shapes:
    """Shapes of all tensors (None dims where unknown) with the graph inputs at ``inputs``; the file's
    own value_info is the fallback where inference says nothing (or fails: then with a warning)."""
    m = _inference_model(model, g, inputs, standard)
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001
        warnings.append(f"shape inference failed ({one_line(e)}); using the file's value_info only")
        inferred = m
    shapes: Shapes = {}
    for vi in model.graph.value_info:  # the file's own, as fallback
        d = dims(vi.type)
        if d is not None:
            shapes[vi.name] = d
    for coll in (inferred.graph.value_info, inferred.graph.input, inferred.graph.output):
        for vi in coll:
            d = dims(vi.type)
            if d is not None:
                shapes[vi.name] = d
    for t in model.graph.initializer:
        shapes[t.name] = [int(x) for x in t.dims]
    for name, t in g.const_nodes.items():
        shapes[name] = [int(x) for x in t.dims]
    return shapes
