"""Exceptions of the exporter; the CLI maps them to exit codes (user error 2, parity failure 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from micronet_onnx.export.parity import ParityReport


class ExportError(ValueError):
    """The request cannot be exported as asked (a user error: wrong model kind, bad path, ...)."""


class ParityError(RuntimeError):
    """The exported file does not compute the model's function within tolerance.

    Nothing is written when this is raised; ``report`` holds the measured numbers.
    """

    def __init__(self, message: str, report: ParityReport) -> None:
        super().__init__(message)
        self.report = report
