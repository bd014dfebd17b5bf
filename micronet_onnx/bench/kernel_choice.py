"""Which kernel the library picks for each TernaryConv node of a model, as plain data for the bench
reports (docs/runtime.md, "Dispatch rule").

The choice comes through the library's documented machine-readable channel,
``MICRONET_TERNARY_REPORT`` (one JSON line per node at kernel creation), read by
`micronet_onnx.runtime.kernel_report.node_kernels`; nothing here parses the human log lines.
"""

from __future__ import annotations

import onnx

from micronet_onnx.runtime.kernel_report import node_kernels


def kernel_choice(model: onnx.ModelProto | bytes, kernel: str | None = None) -> list[dict]:
    """The kernel the library picks for each TernaryConv node of ``model`` when one session is
    created (``kernel`` forces ``MICRONET_TERNARY_KERNEL`` for it; None: the process's value, unset
    meaning ``auto``): a list of ``{"node", "kernel", "isa", "density"}``, in creation order."""
    return [{"node": k.node, "kernel": k.kernel, "isa": k.isa, "density": k.density}
            for k in node_kernels(model, kernel=kernel)]
