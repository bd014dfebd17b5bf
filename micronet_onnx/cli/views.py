"""Text views of the library's reports for the commands that have no view module of their own
(`score_view.py` and `bench_view.py` hold the two large ones). Library functions return plain or typed
data; only the CLI turns it into text."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from micronet_onnx.runtime.evaluate import EvalResult


def eval_line(r: EvalResult) -> str:
    """One line for `mnx eval`: top-1, images/s and which runtime ran the file."""
    line = (f"{r.model}: top-1 {r.top1 * 100:.2f}% on {r.images} {r.dataset} {r.split} images, "
            f"{r.images_per_s:.1f} images/s (batch {r.batch_size}, "
            f"{'our library' if r.custom_ops else 'stock onnxruntime'})")
    if r.pytorch_top1 is not None:
        line += f"; PyTorch: {r.pytorch_top1 * 100:.2f}%"
    return line
