"""Timing: contestants run interleaved, each measurement after a settle pause, on sessions made here.

Each round runs every contestant once (a measurement of a few calls, after a short idle pause and
one untimed call, see `SETTLE_SECONDS`), so a noisy neighbour on the machine hits all of them alike;
callers report medians over rounds. The two session factories are the two sides of every benchmark:
our library (`ternary_session`, kernel forced through `KERNEL_ENV`) and stock onnxruntime
(`ort_session`), both at ``ORT_ENABLE_ALL``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import onnx

from micronet_onnx.runtime.kernel_report import KERNEL_ENV  # the variable's one Python spelling

# Pause before each timed measurement. onnxruntime's intra-op workers (and numpy's BLAS threads)
# keep spinning for a while after their last task; without the pause the contestant measured right
# after another one shares the cores with those spinning threads. Measured on the 2-core VM
# (MicroNet-C100, batch 1, 2 threads, one process): 0 s gave 5.3 / 11.0 ms (ternary / dense),
# 0.01 s 4.9 / 10.6 ms, 0.05 s 4.3 / 10.5 ms = the times of each session alone in its own process.
SETTLE_SECONDS = 0.05


class kernel_env:
    """Context manager: set ``MICRONET_TERNARY_KERNEL`` (read when a session creates its kernels)."""

    def __init__(self, kernel: str | None) -> None:
        self.kernel = kernel
        self.saved: str | None = None

    def __enter__(self) -> kernel_env:
        self.saved = os.environ.get(KERNEL_ENV)
        if self.kernel is not None:
            os.environ[KERNEL_ENV] = self.kernel
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved is None:
            os.environ.pop(KERNEL_ENV, None)
        else:
            os.environ[KERNEL_ENV] = self.saved


def _calibrate(fn: Callable[[], object], min_seconds: float) -> int:
    """Calls per measurement so that one measurement takes about ``min_seconds``."""
    t0 = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-6)
    return max(1, min(1000, math.ceil(min_seconds / dt)))


def interleaved_times(contestants: dict[str, Callable[[], object]], repeats: int, *, warmup: int = 1,
                      min_seconds: float = 0.05, settle: float = SETTLE_SECONDS) -> dict[str, list[float]]:
    """Seconds per call of each contestant: ``repeats`` rounds, each timing every contestant once
    (a measurement of a few calls, about ``min_seconds`` long), so a noisy machine hits all alike.
    Each measurement starts after ``settle`` seconds of idling and one untimed call, so that it
    measures the contestant alone, as it runs when it is the only model in its process."""
    for fn in contestants.values():
        for _ in range(warmup):
            fn()
    calls = {name: _calibrate(fn, min_seconds) for name, fn in contestants.items()}
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(repeats):
        for name, fn in contestants.items():
            n = calls[name]
            if settle > 0:
                time.sleep(settle)
            fn()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n)
    return times


def _serialized(model: onnx.ModelProto | bytes) -> bytes:
    return model if isinstance(model, bytes) else model.SerializeToString()


def ort_session(model: onnx.ModelProto | bytes, threads: int):
    """Stock onnxruntime on the CPU at ``ORT_ENABLE_ALL`` with ``threads`` intra-op threads (the dense
    side): the one session factory with our library never registered."""
    from micronet_onnx.runtime.session import create_session

    return create_session(_serialized(model), threads=int(threads), library=False)


def ternary_session(model: onnx.ModelProto | bytes, threads: int, kernel: str | None = None):
    """`create_session` with our library, ``kernel`` forced through `KERNEL_ENV` while the session
    creates its kernels (None: whatever the environment says, else ``auto``)."""
    from micronet_onnx.runtime.session import create_session

    with kernel_env(kernel):
        return create_session(_serialized(model), threads=threads)
