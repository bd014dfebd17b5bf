"""Netron-friendly files: a short doc string on every TernaryConv node and model metadata a person
reads without our tools.

Netron draws a ``micronet::TernaryConv`` node as a box with uint8 blobs; its doc string (shown in the
node's properties) says what those blobs hold: the conv's shape, the sparsity of its stored codes,
the two centroids, the dead channels left out, the encoding and what is fused in. Everything in it
is read back from the finished graph through the node model (`TernaryConvNode.from_onnx`), so it
describes the file as written, not what the exporter meant to write.

The metadata (`file_notes`) says in one line each what the file is, how to run it, which paper it
follows and its Appendix B storage (``params_paper``, from the scorer). Both passes change no node,
input, initializer or attribute: only doc strings and metadata props, a few hundred bytes per file
(docs/export.md, "What Netron shows").
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from micronet_onnx.format import spec, versions
from micronet_onnx.format.node import TernaryConvNode, is_ternary_conv

PAPER = ('Marban, Becking, Wiedemann, Samek: "Learning Sparse & Ternary Neural Networks with '
         'Entropy-Constrained Trained Ternarization (EC2T)", CVPR-W 2020')

DESCRIPTIONS = {
    "ternary": "MicroNet CNN whose EC2T-ternarized convs are micronet::TernaryConv nodes: weights in "
               "{w_n, 0, w_p} stored as bit planes with float16 centroids, BatchNorm folded "
               "(spec: docs/ternary-conv.md of micronet-onnx)",
    "portable": "MicroNet CNN in standard ONNX only: each EC2T-ternarized conv's codes stored as INT2 and "
                "looked up into its two centroids, BatchNorm folded",
    "dense": "MicroNet CNN in standard ONNX with float32 weights (ternary layers, if any, decoded), "
             "BatchNorm folded",
}

HOW_TO_RUN = {
    "ternary": "onnxruntime with the micronet custom-op library libmicronet_ops.so registered "
               "(SessionOptions.register_custom_ops_library); `mnx eval model.onnx` does it",
    "portable": "any ONNX runtime with opset 25 (no custom ops); `mnx eval model.onnx`",
    "dense": "any ONNX runtime (no custom ops); `mnx eval model.onnx`",
}


def _x_channels(proto: onnx.ModelProto) -> dict[str, int]:
    """Channel count of every value whose shape the file records (inputs and value_info)."""
    out: dict[str, int] = {}
    for v in (*proto.graph.input, *proto.graph.value_info):
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            out[v.name] = int(dims[1].dim_value)
    return out


def node_doc(node: TernaryConvNode, x_channels: int | None = None) -> str:
    """One short line about ``node`` (about 100 bytes: the file-size cost is per node): kernel and
    channels, stride and group when not 1, the zeros of the stored codes, the centroids, the dead
    channels left out (when any), the encoding and what is fused into the node."""
    a = node.attrs
    m_s, _, kh, kw = a.weight_shape
    n_in = x_channels if x_channels is not None else node.n_stored
    nnz = int((node.codes != 0).sum())
    head = f"{kh}x{kw} conv {n_in}->{node.m_out}"
    if set(a.strides) != {1}:
        head += f", stride {a.strides[0] if len(set(a.strides)) == 1 else list(a.strides)}"
    if a.group > 1:
        head += f", group {a.group}"
    parts = [head, f"{100 * (1 - nnz / max(node.codes.size, 1)):.1f}% zeros ({nnz} non-zero)",
             f"w_n {float(node.centroids[0]):.4g}, w_p {float(node.centroids[1]):.4g}"]
    dead_out = node.m_out - m_s
    dead_in = n_in - node.n_stored if node.in_channels is not None else 0
    if dead_out or dead_in:
        parts.append(f"dead channels {dead_out}/{node.m_out} out, {dead_in}/{n_in} in")
    parts.append(f"encoding {getattr(node, 'encoding', 'masks')}")
    # scale/bias (the BN after the conv, folded) are in every exported node: the description says so
    fused = [what for what, on in (("input BN", node.in_scale is not None), ("residual", node.residual is not None),
                                   (a.activation, bool(a.activation))) if on]
    if fused:
        parts.append("fused: " + ", ".join(fused))
    return "; ".join(parts)


def annotate_nodes(proto: onnx.ModelProto) -> int:
    """Give every TernaryConv node of ``proto`` its `node_doc` (in place); returns how many."""
    nodes = [n for n in proto.graph.node if is_ternary_conv(n)]
    if not nodes:
        return 0
    version = versions.micronet_version(proto)
    wanted = {name for n in nodes for name in n.input[spec.IN_MASK:spec.IN_RESIDUAL] if name}
    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer if t.name in wanted}
    channels = _x_channels(proto)
    for n in nodes:
        c = channels.get(n.input[spec.IN_X])
        n.doc_string = node_doc(TernaryConvNode.from_onnx(n, constants, version, x_channels=c), c)
    return len(nodes)


def file_notes(proto: onnx.ModelProto, kind: str, ternary_layers: int, sparsity: float | None) -> dict[str, str]:
    """The human-readable metadata props (without the ``micronet.`` prefix) of a finished file:
    ``description``, ``how_to_run``, ``paper`` and, where the scorer reads the file, ``params_paper``
    and a one-line ``summary``."""
    notes = {"description": DESCRIPTIONS[kind], "how_to_run": HOW_TO_RUN[kind], "paper": PAPER}
    from micronet_onnx.scoring import ScoreInputError, score_model

    try:
        score = score_model(proto.SerializeToString())  # the scorer may add shapes to a proto it is given
    except ScoreInputError:  # a form the scorer cannot read yet: the file stays valid, without these two
        return notes
    notes["params_paper"] = f"{score.params_paper:.1f}"
    line = (f"{ternary_layers} ternary layers, {100 * sparsity:.1f}% zero weights; " if sparsity is not None
            else "")
    notes["summary"] = (line + f"params_paper {score.params_paper:,.0f} (Appendix B), {score.ops:,.0f} ops, "
                        f"MicroNet score {score.score:.4g} (mnx score defaults)")
    return notes


def annotate_model(proto: onnx.ModelProto, *, kind: str, ternary_layers: int, sparsity: float | None,
                   prefix: str) -> dict[str, str]:
    """Both passes on a finished, checked file (in place): `annotate_nodes`, then the `file_notes`
    added to its metadata props under ``prefix``; returns the notes (without the prefix)."""
    annotate_nodes(proto)
    notes = file_notes(proto, kind, ternary_layers, sparsity)
    for k, v in notes.items():
        proto.metadata_props.add(key=f"{prefix}{k}", value=v)
    return notes
