"""The versions a file declares and a reader accepts: pinned here, and only here.

- Default domain at opset 17 and IR version 8. Every op the exporter writes (Conv, Relu, Add,
  BatchNormalization-15, Cast, GlobalAveragePool, Flatten, Gemm) exists unchanged at opset 17, and
  IR 8 is the IR that opset 17 requires, so this is the lowest pair that describes the graph. Low
  pins keep the files loadable by older onnxruntime builds (opset 17 / IR 8 load from onnxruntime
  1.12 on) and by custom-op libraries compiled against them; newer ONNX releases keep reading old
  IR and opsets, so nothing is gained by declaring the newest. Raise them only for an op that needs it.
- The ``micronet`` domain at the format version of the file: by default the one writers emit,
  `spec.OPSET_VERSION` (never a copy of that constant), or an older one the exporter can still
  write (``format_version=1``). It is imported only by files that contain a TernaryConv node: a
  dense export is plain standard ONNX that any runtime loads without knowing the domain.

Readers check a model's format version with `micronet_version` and a node's input count and
attributes with `check_node_header`; writers take their imports from `opset_imports`. Nothing else re-checks them.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

from micronet_onnx.format import spec

ONNX_OPSET = 17
IR_VERSION = 8
PORTABLE_OPSET = 25
"""Default-domain opset of a portable export (``mnx export --portable``): opset 25 is the first whose
Cast reads INT2 (the 2-bit types arrived with it), which the file's codes are; everything else it
writes (Pad, Gather, Mul, Conv, BatchNormalization, Gemm, ...) is unchanged since opset 17. Lower
cannot describe the file; higher gains nothing and only narrows the runtimes that load it."""
PORTABLE_IR_VERSION = 13
"""IR version of a portable export: the IR of onnx 1.20, the release that added INT2 and opset 25 (onnx's
version table pairs them). The checker does not refuse IR 12 here, but a reader that goes by the IR
number would not expect 2-bit tensors in it."""
MIN_READ_IR_VERSION = 3  # the first IR with opset imports; onnxruntime reads nothing older


def check_format_version(version: object) -> int:
    """``version`` as an int if it is a TernaryConv format version (``micronet`` opset) this package
    reads and writes; `spec.FormatError` otherwise (a bool is not a version)."""
    if isinstance(version, bool) or not isinstance(version, int) or version not in spec.SUPPORTED_OPSET_VERSIONS:
        supported = ", ".join(map(str, spec.SUPPORTED_OPSET_VERSIONS))
        raise spec.FormatError(f"{spec.DOMAIN} opset {version!r} is not a supported format version "
                               f"(format version must be one of {supported})")
    return int(version)


def max_inputs(version: int) -> int:
    """How many inputs a node of this format version may have."""
    return spec.MAX_INPUTS_V1 if check_format_version(version) == 1 else spec.MAX_INPUTS


def check_input_count(num_inputs: int, version: int) -> None:
    """Raise `spec.FormatError` unless a node of this format version may have ``num_inputs`` inputs
    (empty trailing names count: they are inputs of the node)."""
    limit = max_inputs(version)
    if spec.NUM_REQUIRED_INPUTS <= num_inputs <= limit:
        return
    newer = [v for v in spec.SUPPORTED_OPSET_VERSIONS if spec.NUM_REQUIRED_INPUTS <= num_inputs <= max_inputs(v)]
    extra = f"input {limit}" if num_inputs == limit + 1 else f"inputs {limit}..{num_inputs - 1}"
    why = f" ({extra} came with {spec.DOMAIN} opset {newer[0]})" if newer and num_inputs > limit else ""
    raise spec.FormatError(f"has {num_inputs} inputs, but {spec.DOMAIN} opset {version} nodes have at least "
                           f"{spec.NUM_REQUIRED_INPUTS} and at most {limit}{why}")


def check_node_header(node: onnx.NodeProto, version: int) -> None:
    """The rules of one TernaryConv node that need the model's format version, which the C++ library
    cannot see: its input count (`check_input_count`) and no ``encoding`` attribute before version 3
    (the library would decode by it). `spec.FormatError` otherwise."""
    check_input_count(len(node.input), version)
    if version < spec.ENCODING_VERSION and any(a.name == spec.ATTR_ENCODING for a in node.attribute):
        raise spec.FormatError(f"has attribute {spec.ATTR_ENCODING}, which came with {spec.DOMAIN} opset "
                               f"{spec.ENCODING_VERSION}")


def onnx_opsetid() -> onnx.OperatorSetIdProto:
    """The default-domain import every written model carries."""
    return onnx.helper.make_opsetid("", ONNX_OPSET)


def portable_opset_imports() -> list[onnx.OperatorSetIdProto]:
    """The opset imports of a portable export: the default domain at `PORTABLE_OPSET`, nothing else."""
    return [onnx.helper.make_opsetid("", PORTABLE_OPSET)]


def opset_imports(*, ternary: bool, format_version: int = spec.OPSET_VERSION) -> list[onnx.OperatorSetIdProto]:
    """The opset imports of a written model (``format_version``: the ``micronet`` opset of a ternary one)."""
    version = check_format_version(format_version)
    imports = [onnx_opsetid()]
    if ternary:
        imports.append(onnx.helper.make_opsetid(spec.DOMAIN, version))
    return imports


def micronet_version(model: onnx.ModelProto) -> int | None:
    """The format version (imported ``micronet`` opset) of ``model``; None when it imports none.

    Raises `spec.FormatError` for an unsupported version, a domain imported twice with different
    versions, or a graph that uses the domain without importing it (a truncated or hand-edited file).
    """
    versions = {int(o.version) for o in model.opset_import if o.domain == spec.DOMAIN}
    if len(versions) > 1:
        raise spec.FormatError(f"the model imports {spec.DOMAIN} at several opsets {sorted(versions)}")
    if not versions:
        if any(n.domain == spec.DOMAIN for n, _ in iter_nodes(model.graph)):
            raise spec.FormatError(f"the model uses domain {spec.DOMAIN!r} but does not import it")
        return None
    return check_format_version(versions.pop())


def check_ir_version(model: onnx.ModelProto) -> int:
    """The model's IR version if a reader can trust it: from `MIN_READ_IR_VERSION` up to the newest the
    installed ``onnx`` knows (``onnx.IR_VERSION``); `spec.FormatError` otherwise (0 is a missing field)."""
    ir = int(model.ir_version)
    if not MIN_READ_IR_VERSION <= ir <= onnx.IR_VERSION:
        raise spec.FormatError(f"IR version {ir} is outside the range this reader accepts "
                               f"({MIN_READ_IR_VERSION}..{onnx.IR_VERSION})")
    return ir


def iter_nodes(graph: onnx.GraphProto) -> Iterator[tuple[onnx.NodeProto, int]]:
    """Every node of ``graph`` and of its subgraphs (If/Loop/Scan bodies), with its nesting depth."""
    for node in graph.node:
        yield node, 0
        for a in node.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sub in subs:
                for inner, depth in iter_nodes(sub):
                    yield inner, depth + 1
