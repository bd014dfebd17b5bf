"""`optimize_model`: read every TernaryConv through the node model, apply the fusions of `rules`
until none applies (so a second run finds nothing: the pass is idempotent), write the result in the
current format version and check it against the input in the reference evaluator.

Only what a fusion touches changes: a rewritten node keeps its name, extra attributes and the stored
tensors (and their names) of every constant input the fusion did not recompute; new tensors are
named ``<node>.<input>`` as the exporter names them; removed nodes' constants go only when nothing
else reads them. Untouched nodes, initializers and value_info stay byte for byte.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from micronet_onnx.format import encodings, spec, versions
from micronet_onnx.format.node import ATTR_TYPES, TernaryConvNode, is_ternary_conv
from micronet_onnx.optimize import report as r
from micronet_onnx.optimize.graph import Uses, constant_node_value, constants_of, node_io
from micronet_onnx.optimize.parity import check_parity
from micronet_onnx.optimize.rules import Context, Entry, Plan, Slot, input_affine, output_side
from micronet_onnx.optimize.shapes import symbolic_shapes

RULES = (input_affine, output_side)


KEEP_ENCODING = "keep"
# `optimize_model`'s ``encoding``: keep each node's, the cheapest per node (auto), or one for all.
ENCODING_REQUESTS = (encodings.AUTO, KEEP_ENCODING, *spec.ENCODINGS)


class OptimizeError(ValueError):
    """The model cannot be optimized (e.g. its probe cannot be built), or the result failed parity."""


def _read(model: onnx.ModelProto, version: int) -> list[Entry]:
    """Every node, TernaryConvs read through the node model (their constants may be initializers that
    an old-IR file also lists as graph inputs: onnxruntime reads those as the stored values too)."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer} | constants_of(model.graph)
    entries: list[Entry] = []
    for n in model.graph.node:
        if is_ternary_conv(n):
            try:
                node = TernaryConvNode.from_onnx(n, consts, version)
            except spec.FormatError as e:
                raise spec.FormatError(f"{spec.OP_TYPE} node {n.name!r}: {e}") from None
            entries.append(Slot(node=node, proto=n))
        else:
            entries.append(n)
    return entries


class _Sweeper:
    """The rule context over the working entries, rebuilt only after a fusion changed the graph
    (the standard nodes' `NodeIO` is read once)."""

    def __init__(self, entries: list[Entry], model: onnx.ModelProto, consts, shapes) -> None:
        self.entries, self.consts, self.shapes = entries, consts, shapes
        self.outputs = [o.name for o in model.graph.output]
        self.io = {id(e): node_io(e) for e in entries if isinstance(e, onnx.NodeProto)}
        self.ctx = self.rebuild()

    def io_of(self, e: Entry):
        return e.io() if isinstance(e, Slot) else self.io[id(e)] if e is not None else ([], [], [])

    def rebuild(self) -> Context:
        self.ctx = Context(self.entries, Uses(map(self.io_of, self.entries), self.outputs), self.consts, self.shapes)
        return self.ctx

    def apply(self, plan: Plan) -> None:
        """Make the fusion and update the reader index for the entries it touched."""
        before = {k: self.io_of(self.entries[k]) for k in plan.touched}
        plan.apply()
        for k, io in before.items():
            self.ctx.uses.remove(k, io)
        for k in plan.touched:
            self.ctx.uses.add(k, self.io_of(self.entries[k]))


def _fuse_all(entries: list[Entry], model: onnx.ModelProto, consts, shapes) -> list[r.Fusion]:
    """Apply rules until a whole sweep applies none (the fixpoint idempotence rests on)."""
    sweeper = _Sweeper(entries, model, consts, shapes)
    fused: list[r.Fusion] = []
    progress = True
    while progress:
        progress = False
        for idx in range(len(entries)):
            for rule in RULES:
                while isinstance(entries[idx], Slot):
                    slot = entries[idx]
                    plan = rule(sweeper.ctx, idx, slot)
                    if not isinstance(plan, Plan):
                        break
                    sweeper.apply(plan)
                    slot.dirty = True
                    slot.node.version = spec.OPSET_VERSION
                    fused.append(plan.fusion)
                    progress = True
    return fused


def _refusals(entries: list[Entry], model: onnx.ModelProto, consts, shapes) -> list[r.Refusal]:
    ctx = _Sweeper(entries, model, consts, shapes).ctx
    return [out for idx, e in enumerate(entries) if isinstance(e, Slot)
            for out in (rule(ctx, idx, e) for rule in RULES) if isinstance(out, r.Refusal)]


def _emit(slot: Slot, taken: set[str]) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """The rewritten node: `TernaryConvNode.to_onnx`, with the original tensors (and names) kept for
    the inputs the pass did not recompute, and unique names for those it did."""
    proto, inits = slot.node.to_onnx()
    by_name = {t.name: t for t in inits}
    orig = list(slot.proto.input) + [""] * (spec.MAX_INPUTS - len(slot.proto.input))
    prefix = slot.node.name or slot.proto.output[0]
    new_inits = []
    names = list(proto.input)
    for pos in range(spec.IN_MASK, min(len(names), spec.IN_RESIDUAL)):
        if not names[pos]:
            continue
        tensor = by_name[names[pos]]
        if pos not in slot.changed and orig[pos]:
            names[pos] = orig[pos]
            continue
        what = tensor.name.rsplit(".", 1)[-1]  # to_onnx's input name (``stream`` for an encoded mask)
        base, k = f"{prefix}.{what}", 0
        name = base
        while name in taken:
            k += 1
            name = f"{base}.{k}"
        taken.add(name)
        tensor.name = names[pos] = name
        new_inits.append(tensor)
    del proto.input[:]
    proto.input.extend(names)
    proto.attribute.extend(a for a in slot.proto.attribute if a.name not in ATTR_TYPES)
    proto.doc_string = slot.proto.doc_string
    return proto, new_inits


def _pending(e: Slot | onnx.NodeProto) -> onnx.NodeProto:
    """A kept node as it will read the graph; a rewritten node's recomputed inputs get new names, so
    they are left out here (their old tensors may go)."""
    if not isinstance(e, Slot):
        return e
    if not e.dirty:
        return e.proto
    v = e.view()
    for p in e.changed:
        v.input[p] = ""
    return v


def _rebuild(model: onnx.ModelProto, entries: list[Entry]) -> onnx.ModelProto:
    """The output model: the fused graph, constants nothing reads any more dropped (only those a
    removed or rewritten node read), value_info of vanished tensors dropped, the format version raised."""
    g = model.graph
    kept = [e for e in entries if e is not None]
    kept_ids = {id(e.proto) if isinstance(e, Slot) else id(e) for e in kept}
    touched = {i for n in g.node if id(n) not in kept_ids for i in n.input}
    touched |= {i for e in kept if isinstance(e, Slot) and e.dirty for i in e.proto.input}
    pending = [_pending(e) for e in kept]
    reads = Uses((node_io(n) for n in pending), [o.name for o in g.output])
    dead = {name for name in touched if name and reads.count[name] == 0}
    nodes = [n for n in kept if not (isinstance(n, onnx.NodeProto) and constant_node_value(n) is not None
                                     and n.output[0] in dead)]
    inits = [t for t in g.initializer if t.name not in dead]
    dropped = {t.name for t in g.initializer} - {t.name for t in inits}
    taken = {t.name for t in inits} | {vi.name for vi in g.input} | {o.name for o in g.output}
    taken |= {x for n in pending for x in (*n.input, *n.output)}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    og = out.graph
    del og.node[:]
    new_inits: list[onnx.TensorProto] = []
    for e in nodes:
        if isinstance(e, Slot):
            proto, extra = _emit(e, taken) if e.dirty else (e.proto, [])
            og.node.append(proto)
            new_inits.extend(extra)
        else:
            og.node.append(e)
    del og.initializer[:]
    graph_inputs = [vi for vi in g.input if vi.name not in dropped]  # an old-IR file lists initializers
    del og.input[:]
    og.input.extend(graph_inputs)
    og.initializer.extend(inits + new_inits)
    alive = {x for n in og.node for x in (*n.input, *n.output)} | {t.name for t in og.initializer}
    vis = [vi for vi in g.value_info if vi.name in alive]
    del og.value_info[:]
    og.value_info.extend(vis)
    for o in out.opset_import:
        if o.domain == spec.DOMAIN:
            o.version = spec.OPSET_VERSION
    return out


def _analyse(model: onnx.ModelProto, encoding: str = encodings.AUTO) -> tuple[list[Entry], r.OptimizeReport]:
    """The working entries with every fusion applied, and the report so far (no output model yet)."""
    version_in = versions.micronet_version(model)
    entries = _read(model, version_in) if version_in is not None else []
    slots = {i: e.node for i, e in enumerate(entries) if isinstance(e, Slot)}
    report = r.OptimizeReport(format_version_in=version_in, format_version_out=version_in,
                              ternary_nodes=len(slots), nodes_before=len(model.graph.node),
                              nodes_after=len(model.graph.node))
    if slots:
        consts = constants_of(model.graph)
        shapes = symbolic_shapes(model, slots)
        report.fused = _fuse_all(entries, model, consts, shapes)
        report.left = _refusals(entries, model, consts, shapes)
        report.format_version_out = spec.OPSET_VERSION
        report.reencoded = _reencode(entries, encoding)
    return entries, report


def _reencode(entries: list[Entry], request: str) -> list[r.Reencoding]:
    """Store each node's assignment in ``request`` (``auto``: its cheapest encoding, the exporter's
    default; ``keep``: as it is). The output is written in the current format version, so a file from
    before version 3 gains the encodings as it is optimized."""
    if request == KEEP_ENCODING:
        return []
    out = []
    for e in entries:
        if not isinstance(e, Slot):
            continue
        before, size_before = e.node.encoding, e.node.stored_assignment_bytes()
        e.node.version = spec.OPSET_VERSION
        e.node.choose_encoding(request)
        if e.node.encoding == before:
            continue
        e.changed |= {spec.IN_MASK, spec.IN_MASK + 1}
        e.dirty = True
        out.append(r.Reencoding(e.label, before, e.node.encoding, size_before, e.node.stored_assignment_bytes()))
    return out


def optimize_model(model: onnx.ModelProto, *, check: bool = True, probe_batch: int = 2,
                   seed: int = 0, encoding: str = encodings.AUTO) -> tuple[onnx.ModelProto, r.OptimizeReport]:
    """``model`` in the current TernaryConv format with the fusions of `rules` made, and the report.

    A model without TernaryConv nodes comes back unchanged. With ``check`` (the default) the result
    is run against ``model`` in the reference evaluator on a fixed-seed probe (first symbolic dim of
    each input: ``probe_batch``); a mismatch raises `OptimizeError`. A malformed TernaryConv node
    raises `spec.FormatError`.
    """
    if encoding not in ENCODING_REQUESTS:
        raise OptimizeError(f"unknown encoding {encoding!r} (one of {', '.join(ENCODING_REQUESTS)})")
    entries, report = _analyse(model, encoding)
    if not report.ternary_nodes:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out, report
    out = _rebuild(model, entries)
    report.nodes_after = len(out.graph.node)
    if check and report.changed:
        report.parity = check_parity(model, out, batch=probe_batch, seed=seed)
        if not report.parity.passed:
            p = report.parity
            raise OptimizeError(f"parity check failed: max |diff| {p.max_abs_diff:.3g} between the optimized "
                                f"and the input model exceeds {p.tolerance:.3g}; nothing written")
    return out, report


def would_optimize(model: onnx.ModelProto) -> int:
    """How many fusions `optimize_model` would make on ``model`` (0: it would gain nothing from
    `mnx optimize`). Nothing is written or checked; cheap next to a benchmark."""
    return len(_analyse(model, KEEP_ENCODING)[1].fused)


__all__ = ["ENCODING_REQUESTS", "KEEP_ENCODING", "OptimizeError", "optimize_model", "would_optimize"]
