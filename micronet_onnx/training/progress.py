"""`Progress`: the live bars of a training run on a terminal (rank 0 only under torchrun)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Progress:
    """Live progress of a run on a terminal; nothing at all off one.

    On a terminal (rich, which typer brings): one bar per phase (epochs done, elapsed, ETA) and one
    per epoch (steps, loss, accuracy, images/s, and the sparsity of the last epoch in the ternary
    phases). The run's log lines (one per epoch, `_epoch_line`) print above the bars. Off a terminal
    (CI, ``| tee``) it draws nothing, so the log stays exactly one plain line per epoch.
    """

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self._bars: Any = None
        self._phase_task: Any = None
        self._epoch_task: Any = None
        self._start = time.perf_counter()
        self._sparsity = ""

    @staticmethod
    def terminal() -> bool:
        """Whether stdout and stderr are both a terminal (the bars draw on stderr, the log on stdout)."""
        return all(hasattr(s, "isatty") and s.isatty() for s in (sys.stdout, sys.stderr))

    @contextmanager
    def phase(self, phase: str, n_epochs: int, done: int) -> Iterator[None]:
        """The bars of one phase, live while its epochs run."""
        if not self.enabled:
            yield
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as Bars

        self._sparsity = ""
        # markup off: the labels are "[fp] epochs", "[ec2t 3/20]", which rich would read as style tags
        self._bars = Bars(TextColumn("{task.description:<14}", markup=False), BarColumn(bar_width=30),
                          MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                          TextColumn("{task.fields[info]}"), console=Console(stderr=True))
        with self._bars:
            self._phase_task = self._bars.add_task(f"[{phase}] epochs", total=n_epochs, completed=done, info="")
            try:
                yield
            finally:
                self._bars = None

    def epoch_start(self, label: str, steps: int) -> None:
        self._start = time.perf_counter()
        if self._bars is not None:
            if self._epoch_task is not None and self._epoch_task in self._bars.task_ids:
                self._bars.remove_task(self._epoch_task)
            self._epoch_task = self._bars.add_task(label, total=steps, info="")

    def update(self, step: int, seen: int, loss: float, acc: float) -> None:
        if self._bars is None:
            return
        rate = seen / max(time.perf_counter() - self._start, 1e-9)
        info = f"loss {loss:.4f} acc {acc * 100:5.1f}% {rate:7.1f} img/s{self._sparsity}"
        self._bars.update(self._epoch_task, completed=step, info=info)

    def epoch_end(self, row: dict) -> None:
        if self._bars is None:
            return
        if "sparsity" in row:
            self._sparsity = f" sparsity {row['sparsity'] * 100:.1f}%"
        self._bars.update(self._phase_task, advance=1,
                          info=f"val {row['val_acc'] * 100:5.1f}%{self._sparsity}")
