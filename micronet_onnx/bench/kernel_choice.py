"""Which kernel the library picks for each TernaryConv node of a model, as data (docs/runtime.md,
"Dispatch rule")."""

from __future__ import annotations

import os

import onnx

from micronet_onnx.bench.harness import ternary_session


def kernel_choice(model: onnx.ModelProto | bytes, kernel: str | None = None) -> list[dict]:
    """The kernel the library picks for each TernaryConv node of ``model`` (``MICRONET_TERNARY_LOG``
    lines, read from file descriptor 2 while a session is created): a list of
    ``{"node", "kernel", "isa", "density"}``."""
    import re
    import tempfile

    data = model if isinstance(model, bytes) else model.SerializeToString()
    saved_log = os.environ.get("MICRONET_TERNARY_LOG")
    os.environ["MICRONET_TERNARY_LOG"] = "1"
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        import sys

        sys.stderr.flush()
        saved_fd = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            ternary_session(data, 1, kernel)
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            if saved_log is None:
                os.environ.pop("MICRONET_TERNARY_LOG", None)
            else:
                os.environ["MICRONET_TERNARY_LOG"] = saved_log
        tmp.seek(0)
        text = tmp.read().decode("utf-8", "replace")
    pattern = re.compile(r"micronet: TernaryConv node '([^']*)': kernel=(\w+) isa=(\w+) density=([0-9.]+)")
    return [{"node": m.group(1), "kernel": m.group(2), "isa": m.group(3), "density": float(m.group(4))}
            for m in pattern.finditer(text)]

