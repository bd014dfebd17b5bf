"""The dense twin: a graph pass that replaces each ``micronet::TernaryConv`` by its standard-ONNX
lowering, so the same function runs in stock onnxruntime (the other side of every benchmark).

The pass owns no TernaryConv semantics: each node is read and validated by
`TernaryConvNode.from_onnx` (at the model's format version, `versions.micronet_version`) and
replaced by what `TernaryConvNode.lower` writes (micronet_onnx/format/lower.py). What is left here is
graph plumbing: X's channel count from the recorded shapes, the initializers the new graph still
uses, the opset imports and the export-kind metadata.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from micronet_onnx.format import spec as tf
from micronet_onnx.format import versions
from micronet_onnx.format.node import TernaryConvNode, is_ternary_conv


def _tensor_shapes(graph: onnx.GraphProto) -> dict[str, list[int | None]]:
    shapes: dict[str, list[int | None]] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return shapes


def _x_channels(shapes: dict[str, list[int | None]], node: onnx.NodeProto) -> int | None:
    """X's channel count where the graph records it (then no Gather is needed for ``in_channels``)."""
    shape = shapes.get(node.input[0])
    return shape[1] if shape is not None and len(shape) == 4 else None


def dense_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every ``micronet::TernaryConv`` replaced by standard ONNX ops.

    Each node becomes its `TernaryConvNode.lower` form, the layout of the dense export:
    [Gather] -> [BatchNormalization] -> ``Conv`` (decoded weight x ``scale`` through the channel maps,
    Conv bias = ``bias``) -> [Add] -> [Relu], the same function up to float32 rounding. A ``Gather``
    is written only when ``in_channels`` is present and X's channel count is not recorded in the
    graph. A node that breaks the format raises `spec.FormatError` naming it. Initializers no node
    uses any more are dropped, and so is the ``micronet`` domain import: the result runs in stock
    onnxruntime.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    version = versions.micronet_version(out)
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    shapes = _tensor_shapes(graph)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if not is_ternary_conv(node):
            nodes.append(node)
            continue
        x_channels = _x_channels(shapes, node)
        try:
            ternary = TernaryConvNode.from_onnx(node, constants, version, x_channels=x_channels)
        except tf.FormatError as e:
            raise tf.FormatError(f"{node.name or node.output[0]}: {e}") from e
        new_nodes, new_inits = ternary.lower(x_channels)
        nodes.extend(new_nodes)
        graph.initializer.extend(new_inits)
    used = {name for node in nodes for name in node.input}
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    imports = [o for o in out.opset_import if o.domain != tf.DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(imports)
    for prop in out.metadata_props:
        if prop.key == "micronet.export_kind":
            prop.value = "dense-twin"
    return out
