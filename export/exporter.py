"""`export_model` / `export_checkpoint`: MicroNet -> ONNX file, checked and written atomically."""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch

from micronet_onnx import __version__
from micronet_onnx.export import parity
from micronet_onnx.export.annotate import annotate_model
from micronet_onnx.export.errors import ExportError, ParityError
from micronet_onnx.export.folding import rounded_reference
from micronet_onnx.export.graph import LayerReport, build_graph
from micronet_onnx.fileio import atomic_writer, file_hash
from micronet_onnx.format import spec as tf
from micronet_onnx.format.versions import (
    IR_VERSION,
    ONNX_OPSET,
    PORTABLE_IR_VERSION,
    PORTABLE_OPSET,
    check_format_version,
    opset_imports,
    portable_opset_imports,
)
from micronet_onnx.model import MicroNet
from micronet_onnx.progress import ProgressFn, emit
from micronet_onnx.training.ec2t import is_ternary, overall_sparsity

PRODUCER = "micronet-onnx"
META_PREFIX = "micronet."


@dataclass
class ExportReport:
    """Plain data about one export."""

    path: str
    ternary: bool
    fp16: bool
    file_bytes: int
    dense_equivalent_bytes: int  # float32 weights of the dense export of the same model
    node_count: int
    nodes_by_op: dict[str, int]
    ternary_layers: list[LayerReport]
    ec2t_sparsity: float | None  # zeros over all ternary codes (None for full precision)
    stored_sparsity: float | None  # zeros over the stored ternary codes (after dead channels)
    parity: parity.ParityReport | None
    format_version: int = tf.OPSET_VERSION  # TernaryConv format (micronet opset) a ternary file is written in
    seconds: dict[str, float] = field(default_factory=dict)  # build, check, write, total
    portable: bool = False  # standard ONNX with INT2 ternary codes (export.portable)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def dead_outputs(self) -> int:
        return sum(len(la.dead_outputs) + len(la.dead_outputs_zero_inputs) for la in self.ternary_layers)

    @property
    def dropped_inputs(self) -> int:
        return sum(len(la.dropped_inputs) for la in self.ternary_layers)

    @property
    def kept_constant_inputs(self) -> int:
        return sum(len(la.kept_constant_inputs) for la in self.ternary_layers)

    def reasons(self) -> list[str]:
        return [r for la in self.ternary_layers for r in la.reasons()]

    def summary(self) -> list[str]:
        """A few lines for the CLI."""
        kind = (f"ternary, format version {self.format_version}" if self.ternary
                else "portable, INT2 codes" if self.portable else "dense") + (
            " + fp16 dense weights" if self.fp16 else "")
        by_count = sorted(self.nodes_by_op.items(), key=lambda kv: (-kv[1], kv[0]))
        ops = ", ".join(f"{n} {op}" for op, n in by_count)
        ratio = self.dense_equivalent_bytes / self.file_bytes if self.file_bytes else float("nan")
        lines = [
            f"wrote {self.path} ({kind})",
            f"  nodes: {self.node_count} ({ops})",
            f"  size: {_kib(self.file_bytes)} (dense float32 equivalent {_kib(self.dense_equivalent_bytes)}, "
            f"{ratio:.1f}x)",
        ]
        if self.ternary or self.portable:
            lines.append(f"  ternary: {len(self.ternary_layers)} layers, sparsity "
                         f"{100 * (self.ec2t_sparsity or 0):.2f} %, dead channels: {self.dead_outputs} "
                         f"outputs not stored, {self.dropped_inputs} inputs dropped, "
                         f"{self.kept_constant_inputs} kept (non-zero constant)")
        lines.extend(self.encoding_lines())
        subnormal = sum(la.fp16_subnormal for la in self.ternary_layers)
        if subnormal:
            lines.append(f"  warning: {subnormal} centroid/scale/bias values are float16 subnormals "
                         "(fewer than 11 significant bits)")
        lines.append("  " + (self.parity.summary() if self.parity else "parity: not checked (--no-check)"))
        lines.append(f"  time: {self.seconds.get('total', 0.0):.2f} s")
        return lines

    def encoding_lines(self) -> list[str]:
        """The assignment encoding chosen per TernaryConv layer and its bytes (format version 3)."""
        layers = [la for la in self.ternary_layers if la.encoding]
        if not layers:
            return []
        counts = Counter(la.encoding for la in layers)
        total = sum(la.assignment_bytes for la in layers)
        out = ["  encodings: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
               + f"; assignment {total} bytes"]
        out.extend(f"    {la.name}: {la.encoding}, {la.assignment_bytes} bytes" for la in layers)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ternary_layers"] = [la.to_dict() for la in self.ternary_layers]
        d["parity"] = self.parity.to_dict() if self.parity else None
        return d


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def _check_writable(path: Path) -> None:
    """Fail fast, before any work, if ``path`` cannot be written."""
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None


def write_atomic(data: bytes, path: Path) -> None:
    """Temporary file beside ``path``, fsync, rename: readers never see a half-written model."""
    try:
        with atomic_writer(path) as f:
            f.write(data)
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None


def _input_hw(probe: torch.Tensor | None, input_size: tuple[int, int] | None,
              channels: int) -> tuple[int, int]:
    if probe is not None:
        if probe.ndim != 4 or probe.shape[1] != channels or probe.shape[0] < 1:
            raise ExportError(f"probe must be [N >= 1, {channels}, H, W], got {list(probe.shape)}")
        hw = (int(probe.shape[2]), int(probe.shape[3]))
        if input_size is not None and tuple(input_size) != hw:
            raise ExportError(f"probe size {hw} differs from input_size {tuple(input_size)}")
        return hw
    return tuple(input_size) if input_size is not None else parity.PROBE_SHAPE[2:]  # type: ignore[return-value]


def _check_request(model: MicroNet, path: Path, *, ternary: bool, format_version: int, portable: bool = False
                   ) -> None:
    """`ExportError` for what cannot be exported as asked, before any work."""
    try:
        check_format_version(format_version)
    except tf.FormatError as e:
        raise ExportError(str(e)) from None
    if not isinstance(model, MicroNet):
        raise ExportError(f"only MicroNet models can be exported, got {type(model).__name__}")
    if ternary and not is_ternary(model):
        raise ExportError("a ternary export needs an EC2T (ternary) model; this one is full precision")
    if portable and (ternary or not is_ternary(model)):
        raise ExportError("a portable export needs an EC2T (ternary) model and excludes --ternary")
    _check_writable(path)


def _stored_sparsity(layers: list[LayerReport]) -> float | None:
    """Zeros over the stored ternary codes (after dead channels); None without ternary layers."""
    if not layers:
        return None
    total = sum(int(np.prod(la.stored_shape)) for la in layers)
    return 1.0 - sum(la.nnz for la in layers) / total if total else 0.0


def _model_proto(graph: gs.Graph, *, ternary: bool, format_version: int, meta: dict[str, str],
                 portable: bool = False) -> onnx.ModelProto:
    """The model around ``graph``: the version pins of `versions` (a portable file has its own pair),
    producer, doc string and metadata props, passed through the ONNX checker (a failure is an exporter
    bug, not a user error)."""
    if portable:
        imports, ir, opset, kind = portable_opset_imports(), PORTABLE_IR_VERSION, PORTABLE_OPSET, "portable, INT2"
    else:
        imports = opset_imports(ternary=ternary, format_version=format_version)
        ir, opset, kind = IR_VERSION, ONNX_OPSET, "ternary, micronet::TernaryConv" if ternary else "dense"
    proto = gs.export_onnx(graph, opset_imports=imports)
    proto.ir_version = ir
    proto.producer_name = PRODUCER
    proto.producer_version = __version__
    proto.doc_string = f"MicroNet ({kind}) exported by {PRODUCER} {__version__}; opset {opset}, IR {ir}"
    onnx.helper.set_model_props(proto, {f"{META_PREFIX}{k}": v for k, v in meta.items()})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise RuntimeError(f"exported model fails the ONNX checker: {e}") from e
    return proto


def _metadata(model: MicroNet, *, format_version: int, kind: str, fp16: bool, source: str | None,
              sparsity: float | None, stored_sparsity: float | None, channels: int, hw: tuple[int, int],
              extra: dict[str, str] | None) -> dict[str, str]:
    """The file's ``micronet.*`` metadata props (without the prefix)."""
    return {
        "format_version": str(format_version),
        "export_kind": kind,
        "fp16_weights": str(bool(fp16)).lower(), "source_checkpoint": source or "",
        "ec2t_sparsity": f"{sparsity:.6f}" if sparsity is not None else "",
        "stored_sparsity": f"{stored_sparsity:.6f}" if stored_sparsity is not None else "",
        "model_config": json.dumps(model.config.to_dict(), sort_keys=True),
        "input": f"float32 [batch, {channels}, {hw[0]}, {hw[1]}], normalized like training",
        **(extra or {}),
    }


def export_model(
    model: MicroNet,
    path: str | Path,
    *,
    ternary: bool,
    fp16: bool = False,
    probe: torch.Tensor | None = None,
    check: bool = True,
    input_size: tuple[int, int] | None = None,
    source: str | None = None,
    metadata: dict[str, str] | None = None,
    format_version: int = tf.OPSET_VERSION,
    portable: bool = False,
    annotate: bool = True,
    progress: ProgressFn | None = None,
    encoding: str = "auto",
) -> ExportReport:
    """Export ``model`` (read only; evaluated in eval mode) to ``path``.

    ``ternary``: every `TernaryConv2d` becomes a ``micronet::TernaryConv`` node (requires an EC2T
    model); otherwise plain standard ONNX with float32 weights (ternary layers decoded with their
    float16 centroids). ``fp16``: the standard ops' weights are stored as float16 + Cast.
    ``probe``: the batch of the parity check (default: fixed-seed noise [8, C, 32, 32]); it also
    fixes H and W of the input, else ``input_size`` (default 32x32) does. ``check=False`` skips
    the parity check. ``source``/``metadata`` go into the file's metadata props.
    ``format_version``: the TernaryConv format (``micronet`` opset) of a ternary file: 3 (default; each
    assignment in ``encoding``: ``auto`` = the smallest per layer, masks, rows, entropy), 2 (masks) or 1
    (bn1 and the skip Add as standard nodes); docs/ternary-conv.md. A dense file is the same for all.
    ``portable`` (EC2T models, not with ``ternary``): standard ONNX only, the dense layout with every
    ternary conv's codes stored as INT2 and looked up by standard ops (`export.portable`, its own
    opset/IR pins); checked in stock onnxruntime.
    ``annotate``: node doc strings, readable metadata (`export.annotate`); ``progress``: events per step.

    Raises `ExportError` for requests that cannot be met and `ParityError` (nothing written) when
    the file does not compute the model's function within tolerance.
    """
    t0 = time.perf_counter()
    path = Path(path)
    _check_request(model, path, ternary=ternary, format_version=format_version, portable=portable)
    model = copy.deepcopy(model).cpu().float().eval()
    channels = int(model.stem_conv.in_channels)
    hw = _input_hw(probe, input_size, channels)
    steps = 3 + bool(check)  # build graph, check, [parity,] write
    emit(progress, "export", 0, steps, "build graph")
    built = build_graph(model, ternary=ternary, fp16=fp16, input_hw=hw, format_version=format_version,
                        portable=portable, encoding=encoding)
    dense = built if not (ternary or fp16 or portable) else build_graph(model, ternary=False, fp16=False, input_hw=hw)
    dense_equiv = 4 * dense.param_count
    sparsity = overall_sparsity(model) if is_ternary(model) else None
    kind = "ternary" if ternary else "portable" if portable else "dense"
    stored_sparsity = _stored_sparsity(built.layers)
    meta = _metadata(model, format_version=format_version, kind=kind, fp16=fp16, source=source,
                     sparsity=sparsity, stored_sparsity=stored_sparsity, channels=channels, hw=hw,
                     extra=metadata)
    emit(progress, "export", 1, steps, "check")
    proto = _model_proto(built.graph, ternary=ternary, format_version=format_version, meta=meta, portable=portable)
    if annotate:
        meta.update(annotate_model(proto, kind=kind, ternary_layers=len(built.layers), sparsity=sparsity,
                                   prefix=META_PREFIX))
    data = proto.SerializeToString()
    t_build = time.perf_counter() - t0

    report_parity = None
    if check:
        emit(progress, "export", 2, steps, "parity")
        x = probe if probe is not None else parity.default_probe(channels=channels, hw=hw)
        report_parity = _parity(data, model, built, x, ternary=ternary, path=path, progress=progress)
    t_check = time.perf_counter() - t0 - t_build

    emit(progress, "export", steps - 1, steps, "write")
    write_atomic(data, path)
    total = time.perf_counter() - t0
    return ExportReport(
        path=str(path), ternary=ternary, fp16=fp16, file_bytes=len(data), dense_equivalent_bytes=dense_equiv,
        node_count=len(proto.graph.node), nodes_by_op=dict(Counter(n.op_type for n in proto.graph.node)),
        ternary_layers=built.layers, ec2t_sparsity=sparsity, stored_sparsity=stored_sparsity,
        parity=report_parity, format_version=format_version, portable=portable,
        seconds={"build": t_build, "check": t_check, "write": total - t_build - t_check, "total": total},
        metadata=meta,
    )


def _parity(data: bytes, model: MicroNet, built, probe: torch.Tensor, *, ternary: bool, path: Path,
            progress: ProgressFn | None) -> parity.ParityReport:
    """The parity check of the serialized file (``built``: its `BuiltGraph`); `ParityError` on failure."""
    report = parity.check(data, model, rounded_reference(model), probe, ternary=ternary,
                          fp16_layers=len(built.fp16_layers), rounded_layers=len(built.rounded_layers),
                          progress=progress)
    if not report.passed:
        raise ParityError(report.failure() + f"; nothing written to {path}", report)
    return report


def export_checkpoint(
    checkpoint: str | Path,
    path: str | Path,
    *,
    ternary: bool,
    fp16: bool = False,
    check: bool = True,
    probe_batch: int = parity.PROBE_SHAPE[0],
    best: bool = True,
    format_version: int = tf.OPSET_VERSION,
    portable: bool = False,
    annotate: bool = True,
    progress: ProgressFn | None = None,
    encoding: str = "auto",
) -> ExportReport:
    """Load a checkpoint (`micronet_onnx.training.checkpoint.Checkpoint`) and export it; see `export_model`.

    Raises `CheckpointError` for unreadable, foreign or malformed checkpoints, `ExportError`, `ParityError`.
    """
    from micronet_onnx.training.checkpoint import Checkpoint

    if probe_batch < 1:
        raise ExportError(f"probe batch must be at least 1, got {probe_batch}")
    try:
        check_format_version(format_version)
    except tf.FormatError as e:
        raise ExportError(str(e)) from None
    checkpoint = Path(checkpoint)
    ckpt = Checkpoint.load(checkpoint)
    if ternary and not ckpt.is_ternary:
        raise ExportError(f"--ternary needs an EC2T checkpoint; {checkpoint} is full precision")
    if portable and not ckpt.is_ternary:
        raise ExportError(f"--portable needs an EC2T checkpoint; {checkpoint} is full precision")
    model = ckpt.build_model(best=best)
    which = ckpt.weights_name(best)
    probe = parity.default_probe(batch=probe_batch, channels=int(model.stem_conv.in_channels))
    return export_model(
        model, path, ternary=ternary, fp16=fp16, probe=probe, check=check,
        source=checkpoint.name, format_version=format_version, portable=portable, annotate=annotate,
        progress=progress, encoding=encoding,
        metadata={"source_sha256": file_hash(checkpoint), "source_weights": which, **_training_metadata(ckpt)},
    )


def _training_metadata(ckpt) -> dict[str, str]:
    """What `mnx eval` needs to pick the right data by default, and PyTorch's own accuracy.

    ``ckpt`` is a `micronet_onnx.training.checkpoint.Checkpoint` (imported where it is loaded)."""
    out: dict[str, str] = {}
    if ckpt.dataset is not None:
        out["dataset"] = ckpt.dataset
    if ckpt.final_test_acc is not None:
        out["pytorch_test_acc"] = f"{ckpt.final_test_acc:.6f}"
    return out
