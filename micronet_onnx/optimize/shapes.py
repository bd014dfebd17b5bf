"""Symbolic tensor shapes of the graph, to prove that an ``Add`` is a residual (both operands of
exactly the output's shape) rather than a broadcast.

``onnx.shape_inference`` cannot see through a custom op, so each TernaryConv is replaced by a
stand-in ``Conv`` of the same output shape (weight ``[M_out, c, kH, kW]`` with a symbolic ``c``, the
node's strides, pads and dilations); the graph inputs keep their symbolic dims, so the batch stays a
name (``batch``) that two shapes share or not. Initializers are declared as inputs of their shape
(no data), but for small integer ones that shape ops read. A dim is an int, a dim name, or None.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from micronet_onnx.format import spec, versions
from micronet_onnx.format.node import TernaryConvNode

Dim = int | str | None
SymShape = list[Dim]


def _dims(t: onnx.TypeProto) -> SymShape | None:
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.tensor_type.shape.dim]


def _stand_in(t: TernaryConvNode, idx: int) -> tuple[onnx.NodeProto, onnx.ValueInfoProto]:
    a = t.attrs
    kh, kw = a.weight_shape[2:]
    w = f"__optimize_shape_w{idx}"
    node = helper.make_node("Conv", [t.x, w], [t.output], kernel_shape=[kh, kw], strides=list(a.strides),
                            pads=list(a.pads), dilations=list(a.dilations))
    return node, helper.make_tensor_value_info(w, TensorProto.FLOAT, [a.m_out, f"__c{idx}", kh, kw])


def symbolic_shapes(model: onnx.ModelProto, ternary: Mapping[int, TernaryConvNode]) -> dict[str, SymShape]:
    """Shapes of the tensors of ``model``'s graph, by name; ``ternary`` maps node index -> its read node.
    Where inference fails the file's own value_info is all there is (the pass then refuses residuals
    it cannot prove)."""
    g = model.graph
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(o for o in model.opset_import if o.domain != spec.DOMAIN)
    if not any(o.domain in ("", "ai.onnx") for o in m.opset_import):
        m.opset_import.append(versions.onnx_opsetid())
    sg = m.graph
    sg.name = g.name or "g"
    sg.input.extend(g.input)
    declared = {vi.name for vi in g.input}
    for t in g.initializer:
        if t.name in declared:
            continue
        if t.data_type in (TensorProto.INT64, TensorProto.INT32) and int(np.prod(t.dims, dtype=np.int64)) <= 64:
            sg.initializer.append(t)
        else:
            sg.input.append(helper.make_tensor_value_info(t.name, t.data_type, [int(d) for d in t.dims]))
    for idx, n in enumerate(g.node):
        if idx in ternary:
            node, w = _stand_in(ternary[idx], idx)
            sg.node.append(node)
            sg.input.append(w)
        else:
            sg.node.append(n)
    for vi in g.output:
        o = sg.output.add()
        o.name = vi.name
    shapes: dict[str, SymShape] = {}
    for vi in g.value_info:
        d = _dims(vi.type)
        if d is not None:
            shapes[vi.name] = d
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    except Exception:  # noqa: BLE001 - no shapes means no residual fusion, never a failure
        return shapes
    for coll in (inferred.graph.input, inferred.graph.value_info, inferred.graph.output):
        for vi in coll:
            d = _dims(vi.type)
            if d is not None:
                shapes[vi.name] = d
    return shapes


def same_shape(a: SymShape | None, b: SymShape | None) -> bool:
    """Whether two shapes are provably equal: the same rank, every dim known and equal (a dim name
    equals only the same name)."""
    return a is not None and b is not None and len(a) == len(b) and all(
        x is not None and x == y for x, y in zip(a, b, strict=True))


def channels_of(shapes: Mapping[str, SymShape], name: str) -> int | None:
    """The (known) channel count of a rank-4 tensor, else None."""
    s = shapes.get(name)
    if s is None or len(s) != 4 or not isinstance(s[1], int):
        return None
    return s[1]
