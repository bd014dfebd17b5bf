"""``score_model``: the scoring passes in order (docs/scoring.md).

Load and check the file (`graph`), read every TernaryConv (`ternary`, through the format package),
infer shapes (`shapes`), then for each node charge the stored tensors it is the first to read and
count its storage (`storage`) and its operations (`counters`), and sum the records into the report
(`report`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import onnx

from micronet_onnx.format import spec, versions
from micronet_onnx.scoring.affine import affine_pair, affine_storage, shift_storage
from micronet_onnx.scoring.counters import CountContext, OpTally, count_node, op_key
from micronet_onnx.scoring.graph import (
    Graph,
    ScoreInputError,
    all_tensors,
    is_standard,
    load,
    node_key,
    one_line,
    tensor_bytes,
)
from micronet_onnx.scoring.options import REFERENCE_MODEL, ScoreOptions
from micronet_onnx.scoring.portable import read_portable_conv
from micronet_onnx.scoring.report import (
    LayerRecord,
    Reference,
    ScoreReport,
    ScoreTerms,
    TernaryLayerRecord,
    UnusedConstantsRecord,
    report_to_json,
)
from micronet_onnx.scoring.shapes import Shapes, infer_shapes, input_shapes
from micronet_onnx.scoring.storage import bn_storage, generic_storage, stored, ternary_record
from micronet_onnx.scoring.ternary import TernaryFacts, facts, is_ternary, read_node, standard_form

__all__ = ["ScoreInputError", "ScoreOptions", "report_to_json", "score_model"]

T = TypeVar("T")


def _format_version(model: onnx.ModelProto, label: str) -> int | None:
    """The model's format version (``micronet`` opset) when it has TernaryConv nodes, else None (a
    dense file is scored whatever else it imports)."""
    if not any(is_ternary(n) for n in model.graph.node):
        return None
    try:
        return versions.micronet_version(model)
    except spec.FormatError as e:
        raise ScoreInputError(f"{label}: {one_line(e)}") from None


def score_model(model_or_path: Any, options: ScoreOptions | None = None) -> ScoreReport:
    """Score an ONNX model (path, bytes or ModelProto): storage, operations and the MicroNet score.

    Returns a `ScoreReport` (``report.to_dict()`` is the JSON form, see ``docs/scoring.md`` for every
    key). Raises ScoreInputError (a ValueError) for a missing, truncated, non-ONNX or malformed input.
    """
    opts = (options or ScoreOptions()).validate()
    model, label, file_bytes = load(model_or_path)
    warnings: list[str] = []
    g = Graph(model, label)
    for t in all_tensors(model):
        g.check_tensor(t)
    version = _format_version(model, label)
    inputs = input_shapes(g, opts, warnings)
    nodes = {node_key(n): _ternary(label, read_node, n, g, version) for n in model.graph.node if is_ternary(n)}
    shapes = infer_shapes(model, g, inputs, {k: standard_form(t) for k, t in nodes.items()}, warnings)
    ternary = {k: _ternary(label, facts, t, shapes) for k, t in nodes.items()}
    # A portable export's Conv on an INT2 lookup chain: counted as the TernaryConv it stands for.
    portable = {node_key(n): t for n in model.graph.node if (t := read_portable_conv(g, n)) is not None}
    ternary.update({k: _ternary(label, facts, t, shapes) for k, t in portable.items()})
    layers, by_category, unknown_ops = _layer_records(model, g, shapes, ternary, opts, warnings)
    initializer_bytes = sum(tensor_bytes(t) for t in model.graph.initializer)
    constant_bytes = sum(tensor_bytes(t) for t in g.const_nodes.values())
    return _report(label, file_bytes, initializer_bytes, constant_bytes, opts, inputs, len(ternary), layers,
                   by_category, unknown_ops, warnings)


def _ternary(label: str, fn: Callable[..., T], node: Any, *args: Any) -> T:
    """``fn(node, *args)`` with a format error as a one-line ScoreInputError naming the node."""
    try:
        return fn(node, *args)
    except spec.FormatError as e:
        raise ScoreInputError(f"{label}: TernaryConv {node.name!r}: {one_line(e)}") from None


def _layer_records(model: onnx.ModelProto, g: Graph, shapes: Shapes, ternary: dict[str, TernaryFacts],
                   opts: ScoreOptions, warnings: list[str]) -> tuple[list[LayerRecord], dict[str, float], set[str]]:
    """One record per node (weight paths and Constants folded into their readers), each stored tensor
    charged to the first node that reads it; the ops per category and the unknown op keys."""
    owned: set[str] = set()
    layers: list[LayerRecord] = []
    by_category: dict[str, float] = {}
    unknown_ops: set[str] = set()
    shifts: set[str] = set()  # outputs of the Adds of per-channel affine pairs (`affine`), counted with their Mul
    for node in model.graph.node:
        if g.is_weight_path(node) or (node.op_type == "Constant" and is_standard(node)):
            continue  # folded into the layer that uses the constant
        new_sources = [s for s in g.sources(node) if s[0] not in owned]
        owned.update(s[0] for s in new_sources)
        layer = LayerRecord(
            name=node.name or (node.output[0] if node.output else node.op_type),
            op_type=node.op_type,
            domain=node.domain or "",
            output_shape=shapes.get(node.output[0]) if node.output else None,
            params_stored=stored(g, new_sources),
            initializers=[n for n, _ in new_sources],
        )
        if is_ternary(node) or (node.op_type == "Conv" and node_key(node) in ternary):
            layer = ternary_record(layer, ternary[node_key(node)])
        elif node.op_type == "BatchNormalization" and is_standard(node):
            bn_storage(layer, node, g, ternary, shapes)
        elif (add := affine_pair(g, node)) is not None:
            affine_storage(layer, node, add, g, ternary, shapes)
            shifts.add(add.output[0])
        elif node.output and node.output[0] in shifts:
            shift_storage(layer)
        else:
            generic_storage(layer, node, g, shapes, new_sources)
        tally = OpTally()
        if not count_node(CountContext(node, g, shapes, opts, layer, tally, ternary)):
            unknown_ops.add(op_key(node))
        if layer.shape_unknown:
            warnings.append(f"{layer.name}: output shape unknown, its ops count 0")
        layer.mults, layer.adds, layer.ops = tally.mults, tally.adds, tally.ops
        layer.ops_detail = tally.by_category()
        for cat, v in layer.ops_detail.items():
            by_category[cat] = by_category.get(cat, 0.0) + v
        layers.append(layer)
    # Whatever the file stores that no node needs.
    unused = [t for t in model.graph.initializer if t.name not in owned]
    unused += [t for n, t in g.const_nodes.items() if n not in owned]
    if unused:
        layers.append(
            UnusedConstantsRecord(
                params_stored=sum(tensor_bytes(t) for t in unused) / 4,
                initializers=[t.name for t in unused],
            )
        )
        warnings.append(f"{len(unused)} stored constant(s) are not used by any node")
    return layers, by_category, unknown_ops


def _report(label: str, file_bytes: int, initializer_bytes: int, constant_bytes: int, opts: ScoreOptions,
            inputs: dict[str, list[int]], num_ternary: int, layers: list[LayerRecord], by_category: dict[str, float],
            unknown_ops: set[str], warnings: list[str]) -> ScoreReport:
    """The totals, the score and the compression ratios of the layer records."""
    params_paper = sum(layer.params_paper for layer in layers)
    params_stored = sum(layer.params_stored for layer in layers)
    dense_fp32 = sum(layer.dense_fp32_params for layer in layers)
    ops_total = sum(layer.ops for layer in layers)
    best_format = 0.0
    for layer in layers:
        alt, fmt = layer.best_alternative, layer.weight_format_params
        if alt is not None and fmt is not None and alt.params < fmt:
            best_format += layer.params_paper - fmt + alt.params
        else:
            best_format += layer.params_paper
    ops_term = ops_total / opts.reference_ops
    ternary = [layer for layer in layers if isinstance(layer, TernaryLayerRecord)]
    return ScoreReport(
        model=label,
        file_bytes=int(file_bytes),
        initializer_bytes=int(initializer_bytes),
        constant_bytes=int(constant_bytes),
        params_paper=float(params_paper),
        params_stored=float(params_stored),
        params_best_format=float(best_format),
        entropy_bound=float(sum(layer.entropy_bound for layer in ternary)),
        assignment_params=float(sum(layer.assignment_params or 0.0 for layer in ternary)),
        dense_fp32_params=float(dense_fp32),
        compression_ratio=float(dense_fp32 / params_stored) if params_stored else None,
        compression_ratio_paper=float(dense_fp32 / params_paper) if params_paper else None,
        ops=float(ops_total),
        mults=float(sum(layer.mults for layer in layers)),
        adds=float(sum(layer.adds for layer in layers)),
        ops_by_category=by_category,
        score=float(params_paper / opts.reference_params + ops_term),
        score_stored=float(params_stored / opts.reference_params + ops_term),
        score_terms=ScoreTerms(
            params_paper=float(params_paper / opts.reference_params),
            params_stored=float(params_stored / opts.reference_params),
            ops=float(ops_term),
        ),
        reference=Reference(model=REFERENCE_MODEL, params=opts.reference_params, ops=opts.reference_ops),
        options=opts,
        input_shapes=inputs,
        num_ternary_layers=num_ternary,
        unknown_ops=sorted(unknown_ops),
        warnings=warnings,
        layers=layers,
    )
