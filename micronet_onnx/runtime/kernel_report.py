"""Which kernel the custom-op library picked for each TernaryConv node: the typed reader of the
library's ``MICRONET_TERNARY_REPORT`` channel (see ``docs/runtime.md``, "Which kernel runs").

When ``MICRONET_TERNARY_REPORT=<path>`` is set, ``libmicronet_ops.so`` appends one JSON object per
line to ``<path>`` each time it creates a TernaryConv kernel (at session creation), in one
``write(2)`` on an ``O_APPEND`` descriptor so that lines of concurrent sessions never interleave.
`node_kernels` creates a session with the variable pointing at a temporary file and returns the
parsed lines; `read_report` parses a report file written some other way. This replaces scraping
the human ``MICRONET_TERNARY_LOG`` lines from stderr, whose wording is not an interface.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .session import ModelSource, create_session

REPORT_ENV = "MICRONET_TERNARY_REPORT"
KERNEL_ENV = "MICRONET_TERNARY_KERNEL"
ISA_ENV = "MICRONET_TERNARY_ISA"
# The "report_version" this reader understands (kKernelReportVersion in runtime_ops/ternary_conv/kernel_report.h).
REPORT_VERSION = 1

KERNELS = ("auto", "sparse", "dense", "portable", "direct")  # values of MICRONET_TERNARY_KERNEL
ISAS = ("auto", "avx512", "avx2", "portable")  # values of MICRONET_TERNARY_ISA

# The environment is process-wide: one `node_kernels` at a time sets it.
_ENV_LOCK = threading.Lock()


class KernelReportError(RuntimeError):
    """A report line that is not a version-1 TernaryConv kernel record."""


@dataclass(frozen=True)
class NodeKernel:
    """One TernaryConv node's kernel, as the library chose it at kernel creation.

    ``kernel`` is the engine that runs (``"sparse"``, ``"dense"`` or ``"direct"``) and ``isa`` its
    instruction set (``"avx512"``, ``"avx2"``, ``"portable"``, or ``"scalar"`` for direct).
    ``requested`` / ``requested_isa`` are ``MICRONET_TERNARY_KERNEL`` / ``MICRONET_TERNARY_ISA`` as
    given (``"auto"`` when unset); ``forced`` is true when a kernel was requested rather than left to
    the policy (a forced ``dense`` on a grouped layer still runs ``sparse``). ``density`` is the share
    of non-zero weights, ``effective`` the share of taps the sparse kernel adds (complement forms
    included), ``complement_rows`` the stored rows it sums in a complement form, ``plane`` the output
    plane OH * OW from the graph's X shape (0 when the graph does not state it) and
    ``dense_threshold`` the effective density from which ``auto`` picks the dense kernel there.
    """

    node: str
    output: str
    kernel: str
    isa: str
    requested: str
    requested_isa: str
    forced: bool
    density: float
    effective: float
    nnz: int
    weight_shape: tuple[int, int, int, int]
    group: int
    complement_rows: int
    plane: int
    dense_threshold: float
    pid: int

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> NodeKernel:
        """The `NodeKernel` of one parsed JSON line; raises `KernelReportError` on another version or
        a missing field."""
        version = record.get("report_version")
        if version != REPORT_VERSION:
            raise KernelReportError(f"report_version {version!r}, this reader reads {REPORT_VERSION}")
        try:
            shape = tuple(int(v) for v in record["weight_shape"])
            if len(shape) != 4:
                raise KernelReportError(f"weight_shape {record['weight_shape']!r} is not 4 ints")
            return cls(
                node=str(record["node"]), output=str(record["output"]), kernel=str(record["kernel"]),
                isa=str(record["isa"]), requested=str(record["requested"]),
                requested_isa=str(record["requested_isa"]), forced=bool(record["forced"]),
                density=float(record["density"]), effective=float(record["effective"]), nnz=int(record["nnz"]),
                weight_shape=shape,  # type: ignore[arg-type]  # length checked above
                group=int(record["group"]), complement_rows=int(record["complement_rows"]),
                plane=int(record["plane"]), dense_threshold=float(record["dense_threshold"]),
                pid=int(record["pid"]),
            )
        except KeyError as e:
            raise KernelReportError(f"report line without field {e.args[0]!r}") from None


def parse_report(text: str) -> list[NodeKernel]:
    """The records of a report's text, in the order the library wrote them (blank lines skipped)."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise KernelReportError(f"report line {number} is not JSON: {e}") from None
        if not isinstance(record, dict):
            raise KernelReportError(f"report line {number} is not a JSON object")
        out.append(NodeKernel.from_record(record))
    return out


def read_report(path: str | os.PathLike[str]) -> list[NodeKernel]:
    """The records of the report file ``path`` (see `parse_report`)."""
    return parse_report(Path(path).read_bytes().decode("utf-8", "replace"))


@contextmanager
def _environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Sets (or, for None, unsets) environment variables, restoring them afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def node_kernels(model: ModelSource, *, kernel: str | None = None, isa: str | None = None,
                 threads: int | None = 1) -> list[NodeKernel]:
    """The kernel of every TernaryConv node of ``model``, in the order onnxruntime created them.

    Creates one session (`micronet_onnx.runtime.session.create_session`, library registered) with
    ``MICRONET_TERNARY_REPORT`` pointing at a temporary file. ``kernel`` / ``isa`` set
    ``MICRONET_TERNARY_KERNEL`` / ``MICRONET_TERNARY_ISA`` for that session (None: leave the
    process's values, unset meaning ``auto``). The variables are restored afterwards; calls from
    several threads are serialized, since the environment belongs to the process. Errors of session
    creation (a malformed node, a bad ``kernel`` or ``isa`` value) propagate.
    """
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if isa is not None and isa not in ISAS:
        raise ValueError(f"isa must be one of {ISAS}, got {isa!r}")
    with tempfile.TemporaryDirectory(prefix="micronet-report-") as tmp:
        path = Path(tmp) / "kernels.jsonl"
        values: dict[str, str | None] = {REPORT_ENV: str(path)}
        if kernel is not None:
            values[KERNEL_ENV] = kernel
        if isa is not None:
            values[ISA_ENV] = isa
        with _ENV_LOCK, _environment(values):
            create_session(model, threads, library=True)
        return read_report(path) if path.exists() else []
