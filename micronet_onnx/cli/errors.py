"""The CLI's one error boundary: every exception a user can cause becomes one line on stderr.

Exit status 2 for usage and input errors (a bad option, a missing or malformed file, a file the
library or onnxruntime rejects, an allocation the input asks for), 1 for internal failures (a bug:
please report it with the traceback). ``--debug`` or ``MNX_DEBUG=1`` re-raises so the traceback is
shown. Library code raises its own typed errors (all `ValueError` subclasses: `FormatError`,
`CheckpointError`, `ExportError`, `ScoreInputError`, ...); this module is the only place that knows
the foreign exception types (onnxruntime's, protobuf's, the ONNX checker's, torch's).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

DEBUG_ENV = "MNX_DEBUG"
USAGE = 2
INTERNAL = 1
INTERRUPTED = 130


class Failure(Exception):
    """An expected failure with a message and an exit status (e.g. a parity check that did not pass)."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


# torch's own RuntimeError texts for a failed allocation and a failed write (no typed exception exists)
_ALLOCATION_FAILURES = ("can't allocate memory", "DefaultCPUAllocator", "not enough memory")
_WRITE_FAILURES = ("PytorchStreamWriter failed", "file write failed")


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    if text.startswith("[ONNXRuntimeError]"):  # "[ONNXRuntimeError] : 1 : FAIL : message"
        text = text.split(" : ", 3)[-1].strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


def _foreign_input_error(e: BaseException) -> bool:
    """onnxruntime, protobuf and ONNX errors: all of them come from what a file or option holds."""
    module = type(e).__module__ or ""
    return module.startswith(("onnxruntime", "google.protobuf", "onnx")) or type(e).__name__ in (
        "DecodeError", "ValidationError", "InferenceError", "Fail", "InvalidArgument", "InvalidGraph",
        "NoSuchFile", "InvalidProtobuf", "RuntimeException", "NotImplemented")


def classify(e: BaseException) -> tuple[int, str]:
    """(exit status, one-line message) of an exception that reached the command line."""
    if isinstance(e, Failure):
        return e.code, first_line(e)
    if isinstance(e, KeyboardInterrupt):
        return INTERRUPTED, "interrupted"
    if isinstance(e, MemoryError):
        return USAGE, "out of memory: the input or an option asks for more than this machine has"
    from micronet_onnx.runtime.session import OpsLibraryError

    if isinstance(e, (ValueError, OSError, LookupError, OpsLibraryError)) or _foreign_input_error(e):
        return USAGE, first_line(e)
    if type(e).__name__ == "OutOfMemoryError" or (  # torch.OutOfMemoryError; torch's CPU allocator
            isinstance(e, RuntimeError) and any(s in str(e) for s in _ALLOCATION_FAILURES)):
        return USAGE, "out of memory: the input or an option asks for more than this machine has"
    if isinstance(e, RuntimeError) and any(s in str(e) for s in _WRITE_FAILURES):  # torch.save on a full disk
        return USAGE, f"cannot write the output: {first_line(e)} (is the disk full?)"
    return INTERNAL, f"internal error ({type(e).__name__}: {first_line(e)}); rerun with {DEBUG_ENV}=1 for the traceback"


def usage_error_type() -> type[Exception]:
    """Typer's (vendored click's) UsageError: the base of every bad-option error typer raises."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def usage_line(e: Exception) -> str:
    """A typer usage error as one line, the message first (typer's own form starts with "Usage:")."""
    fmt = getattr(e, "format_message", None)
    text = " ".join((fmt() if callable(fmt) else str(e)).split())
    ctx = getattr(e, "ctx", None)
    where = getattr(ctx, "command_path", None)
    return f"{text} (see {where} --help)" if where else text


def fail(message: str, code: int = USAGE) -> NoReturn:
    """One line on stderr and a non-zero exit: 2 for usage errors, 1 for failed checks."""
    typer.echo(f"mnx: error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def error_boundary() -> Iterator[None]:
    """Turn every exception but typer's own exits into `fail` (or re-raise it with ``MNX_DEBUG``)."""
    try:
        yield
    except (typer.Exit, typer.Abort, SystemExit, BrokenPipeError):
        raise
    except BaseException as e:  # noqa: BLE001 - this is the boundary
        if debug_enabled() and not isinstance(e, Failure):
            raise
        code, message = classify(e)
        fail(message, code)
