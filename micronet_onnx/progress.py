"""Progress events: plain data a long library call reports while it works (export steps, the parity
check, eval batches, bench rounds).

Library functions take an optional ``progress`` callback and call it with a `ProgressEvent`; they
never draw anything. Only the CLI turns events into live bars (`micronet_onnx.cli.progress`), so the
library stays usable from scripts and tests, and without a terminal nothing is drawn at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long call.

    ``task`` names the bar (``"export"``, ``"parity"``, ``"eval"``, ``"bench"``, ...), ``done`` of
    ``total`` units are finished (``total`` None when unknown), ``label`` says what runs now, and
    ``info`` carries numbers a view may show (running top-1, images/s, the round ...)."""

    task: str
    done: int
    total: int | None
    label: str = ""
    info: Mapping[str, float | int | str] = field(default_factory=dict)


ProgressFn = Callable[[ProgressEvent], None]


def emit(progress: ProgressFn | None, task: str, done: int, total: int | None, label: str = "",
         **info: float | int | str) -> None:
    """Call ``progress`` with one event, or do nothing without a callback (the common case)."""
    if progress is not None:
        progress(ProgressEvent(task, done, total, label, info))
