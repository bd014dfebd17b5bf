"""The contestants of `mnx bench --peers`: one small class per runtime, each the same function in the form
that runtime runs best, behind one interface.

A `Contestant` names the file it runs (a key of `peer_files.PeerFiles`), says whether it can run here
(`available`: None, or the reason in one line) and, for a thread count and a batch size, `prepare`s a
`Runner` whose ``run(x)`` returns the logits. Preparation (session creation, OpenVINO's read and
compile) is never timed. A runtime that turns out unable to read its file raises `PeerUnavailable`
from `prepare`, and the bench reports that contestant as skipped with the reason.

Threads: onnxruntime's ``intra_op_num_threads`` and OpenVINO's ``INFERENCE_NUM_THREADS`` get the same
count. OpenVINO gets a static batch (``reshape``), as a deployment compiles it; ``batch=None`` keeps the
file's dynamic batch (the accuracy pass).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OURS = "ours"  # the contestant every ratio is taken against


class PeerUnavailable(RuntimeError):
    """This contestant cannot run here; the message is the one-line reason the report shows."""


@dataclass
class Runner:
    """A prepared contestant: ``run(x)`` returns the logits of a float32 NCHW batch; ``properties`` is what
    the runtime reports about its compiled form (OpenVINO's precision, streams, threads)."""

    run: Callable[[np.ndarray], np.ndarray]
    properties: dict[str, Any] = field(default_factory=dict)


def openvino_status() -> tuple[Any | None, str | None]:
    """``(openvino module, None)``, or ``(None, reason)`` when it cannot be imported."""
    try:
        import openvino
    except ImportError as e:  # the optional extra is not installed
        return None, f"OpenVINO is not installed ({e}); install the peers extra: pip install 'micronet-onnx[peers]'"
    except Exception as e:  # noqa: BLE001 - a broken install: say so, run the others
        return None, f"OpenVINO cannot be imported: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return openvino, None


@dataclass(frozen=True)
class Contestant:
    """One runtime on one file. ``name`` is the report's key, ``label`` what the table shows."""

    name: str
    label: str
    file: str  # which of `PeerFiles`' files it runs: ternary, optimized, dense, qdq, portable
    precision: str

    def available(self) -> str | None:
        """None when it can run here, else the reason in one line."""
        return None

    def runtime(self) -> str:
        raise NotImplementedError

    def prepare(self, path: Path, threads: int, batch: int | None) -> Runner:
        raise NotImplementedError


def _ort_runner(session) -> Runner:
    name = session.get_inputs()[0].name
    return Runner(run=lambda x: session.run(None, {name: x})[0],
                  properties={"intra_op_num_threads": session.get_session_options().intra_op_num_threads})


@dataclass(frozen=True)
class Ours(Contestant):
    """A TernaryConv file in onnxruntime with our library (`harness.ternary_session`); ``kernel`` forces
    ``MICRONET_TERNARY_KERNEL`` (None: auto, the dispatch between the fast sparse and dense kernels)."""

    kernel: str | None = None

    def runtime(self) -> str:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__} + libmicronet_ops"

    def prepare(self, path: Path, threads: int, batch: int | None) -> Runner:
        from micronet_onnx.bench.harness import ternary_session

        return _ort_runner(ternary_session(path.read_bytes(), threads, self.kernel))


@dataclass(frozen=True)
class StockOrt(Contestant):
    """A standard file in stock onnxruntime, no library registered, ``ORT_ENABLE_ALL`` (`harness.ort_session`)."""

    def runtime(self) -> str:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"

    def prepare(self, path: Path, threads: int, batch: int | None) -> Runner:
        from micronet_onnx.bench.harness import ort_session

        return _ort_runner(ort_session(path.read_bytes(), threads))


@dataclass(frozen=True)
class OpenVino(Contestant):
    """A standard file in OpenVINO on its CPU device; ``config`` is added to ``INFERENCE_NUM_THREADS``
    (empty: OpenVINO's defaults, whatever precision it picks on this CPU)."""

    config: tuple[tuple[str, str], ...] = ()

    def available(self) -> str | None:
        return openvino_status()[1]

    def runtime(self) -> str:
        ov, _ = openvino_status()
        return f"OpenVINO {ov.get_version().split('-')[0]}" if ov is not None else "OpenVINO"

    def prepare(self, path: Path, threads: int, batch: int | None) -> Runner:
        ov, reason = openvino_status()
        if ov is None:
            raise PeerUnavailable(reason)
        core = ov.Core()
        try:
            model = core.read_model(os.fspath(path))
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError (or its own types) for what it cannot read
            raise PeerUnavailable(f"{self.runtime()} cannot read the {self.file} file: {_first_line(e)}") from None
        if batch is not None:
            shape = model.inputs[0].get_partial_shape()
            shape[0] = batch
            model.reshape({model.inputs[0]: shape})
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, **dict(self.config)})
        request = compiled.create_infer_request()

        def run(x: np.ndarray) -> np.ndarray:
            request.infer({0: x}, share_inputs=True)
            return request.get_output_tensor(0).data

        props = {k: _property(compiled.get_property(k)) for k in
                 ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT")}
        return Runner(run=run, properties=props)


def _property(value: Any) -> str:
    """An OpenVINO property as plain text (an element type as ``f32`` / ``bf16``, not its repr)."""
    to_string = getattr(value, "to_string", None)
    return to_string() if callable(to_string) else str(value)


def _first_line(e: BaseException) -> str:
    """The message's last informative line (OpenVINO prefixes its own source locations)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(e).__name__])[-1]


def contestants(kernel: str | None = None) -> list[Contestant]:
    """Every contestant, ours first (the ratios' reference), then the float32 model every logit is
    compared with, then the peers. ``kernel`` forces our library's kernel (None: auto)."""
    ours_kernel = kernel or "auto"
    return [
        Ours(OURS, f"ours (kernel {ours_kernel})", "ternary", "fp32", kernel=kernel),
        Ours("ours-optimized", f"ours, mnx optimize (kernel {ours_kernel})", "optimized", "fp32", kernel=kernel),
        StockOrt("onnxruntime-fp32", "onnxruntime fp32 (dense twin)", "dense", "fp32"),
        StockOrt("onnxruntime-int8", "onnxruntime int8 (QDQ)", "qdq", "int8"),
        StockOrt("onnxruntime-portable", "onnxruntime portable (INT2)", "portable", "fp32"),
        OpenVino("openvino", "OpenVINO default (dense twin)", "dense", "default"),
        OpenVino("openvino-fp32", "OpenVINO fp32 (dense twin)", "dense", "fp32",
                 config=(("INFERENCE_PRECISION_HINT", "f32"),)),
        OpenVino("openvino-int8", "OpenVINO int8 (QDQ)", "qdq", "int8"),
        OpenVino("openvino-portable", "OpenVINO portable (INT2)", "portable", "default"),
    ]


REFERENCE = "onnxruntime-fp32"  # the float32 model: every logit difference and agreement is against it
