"""onnxruntime static int8 of the dense twin, built the way its documentation recommends: the peer a user
would pick to make a float CNN faster on a CPU.

`build_qdq` runs ``onnxruntime.quantization``'s pre-processing (`quant_pre_process`: shape inference and
graph clean-up) and `quantize_static`: QDQ format, int8 activations and int8 weights (S8S8, the tool's
default and its recommendation for x86), per-channel weight scales (``axis`` on each weight's
DequantizeLinear), MinMax calibration over `ImageReader`'s batches of real training images.
BatchNormalization is left in float32: onnxruntime has no int8 kernel for it, and the quantizer would
store its rank-1 scale per tensor (the per-channel axis 1 does not exist there), losing precision for
nothing. Everything else the tool quantizes by default is quantized.

On an x86 CPU without VNNI the weights use 7 bits (``reduce_range``, the tool's documented remedy):
onnxruntime's AVX2 int8 kernel multiplies with ``VPMADDUBSW``, whose int16 pair sums saturate with full
8-bit weights (255 x 127 x 2 > 32767). Measured on the 2-core AVX2 EPYC with a small digits model:
top-1 58.8 % in float32, 11 % with 8-bit per-channel weights (the same file gives 59 % with
onnxruntime's graph optimizations off, i.e. without its int8 kernels), 57 % with ``reduce_range``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

CALIBRATION_BATCH = 32
NOT_QUANTIZED = ("BatchNormalization",)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (None where there is no such file)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def needs_reduce_range(flags: set[str] | None = None) -> bool:
    """Whether int8 weights must keep to 7 bits here: an x86 CPU with AVX2 but no VNNI (see the module
    docstring). Unknown CPUs (no /proc/cpuinfo) and other architectures: False."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags) and "avx2" in flags and not any(f in flags for f in VNNI_FLAGS)


class ImageReader(CalibrationDataReader):
    """Calibration batches of ``images`` (float32 NCHW, already normalized) for input ``input_name``."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        self.input_name = input_name
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.batch = batch
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.images):
            return None
        x = self.images[self._next:self._next + self.batch]
        self._next += self.batch
        return {self.input_name: x}

    def rewind(self) -> None:
        self._next = 0


@dataclass
class QdqInfo:
    """What the QDQ file holds (for the report and the tests)."""

    quantize_nodes: int
    dequantize_nodes: int
    per_channel_weights: int  # Conv/Gemm weights whose DequantizeLinear has an axis and a scale per channel
    reduce_range: bool = False  # 7-bit weights (an x86 CPU without VNNI)
    activation_type: str = "int8"
    weight_type: str = "int8"
    calibration: str = "MinMax"
    not_quantized: tuple[str, ...] = NOT_QUANTIZED

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantization tool logs advice through the root logger and its sessions through onnxruntime's
    default logger; a benchmark report should not drown in it."""
    import onnxruntime as ort

    logging.disable(logging.WARNING)
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        ort.set_default_logger_severity(2)


def qdq_info(model: onnx.ModelProto) -> QdqInfo:
    """Counts of QuantizeLinear / DequantizeLinear nodes, and of the Conv/Gemm weights dequantized per
    channel (a DequantizeLinear of an initializer with an ``axis`` and more than one scale)."""
    inits = {t.name: t for t in model.graph.initializer}
    weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1}
    per_channel = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits or node.output[0] not in weights:
            continue
        has_axis = any(a.name == "axis" for a in node.attribute)
        scale = inits.get(node.input[1])
        if has_axis and scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
            per_channel += 1
    ops = [n.op_type for n in model.graph.node]
    return QdqInfo(quantize_nodes=ops.count("QuantizeLinear"), dequantize_nodes=ops.count("DequantizeLinear"),
                   per_channel_weights=per_channel)


def _drop_unused_imports(path: Path) -> None:
    """Keep only the opset imports the graph's nodes use. The pre-processing saves onnxruntime's optimized
    model, which imports every domain the process's onnxruntime knows: after a session with our library
    that includes ``micronet`` (registered up to version 1000), which a stock session then refuses."""
    model = onnx.load(os.fspath(path))
    used = {n.domain for n in model.graph.node} | {"", "ai.onnx"}
    keep = [o for o in model.opset_import if o.domain in used]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)
        onnx.save(model, os.fspath(path))


def build_qdq(dense: onnx.ModelProto, path: str | os.PathLike[str], calibration: np.ndarray, *,
              input_name: str | None = None, reduce_range: bool | None = None) -> QdqInfo:
    """Write the static int8 QDQ form of ``dense`` (a standard float32 model) to ``path``, calibrated on
    ``calibration`` (normalized float32 NCHW training images); returns what it holds. ``reduce_range``:
    7-bit weights (None: `needs_reduce_range` for this CPU). The pre-processed model is a scratch file
    next to ``path``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = Path(path)
    name = input_name or dense.graph.input[0].name
    pre = path.with_name(path.stem + ".pre.onnx")
    ops = sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - set(NOT_QUANTIZED))
    reduce = needs_reduce_range() if reduce_range is None else reduce_range
    with _quiet():
        quant_pre_process(dense, os.fspath(pre))
        _drop_unused_imports(pre)
        quantize_static(os.fspath(pre), os.fspath(path), ImageReader(name, calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce,
                        activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=ops)
    pre.unlink(missing_ok=True)
    _drop_unused_imports(path)
    info = qdq_info(onnx.load(os.fspath(path)))
    info.reduce_range = reduce
    return info
