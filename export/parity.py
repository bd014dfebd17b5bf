"""The parity check run at export: the written bytes against the PyTorch model on a probe batch.

Ternary files run in the numpy reference evaluator (`micronet_onnx.reference_op`), dense files in
onnxruntime. Two comparisons, both gated (the tolerance is derived in docs/export.md):

- against the *rounded* PyTorch model (`folding.rounded_reference`: the file's float16 centroids and
  folded BN scale/bias applied in PyTorch). The file must compute that very function, so only
  float32 arithmetic differs, plus the float16 storage of standard-op weights when ``fp16`` is on.
  This is the check that catches exporter bugs.
- against the model as trained (no rounding), with a budget for every layer the file rounds to
  float16. This one catches what rounding itself breaks (e.g. values deep in float16's subnormals).

``tol = max(scale, FLOOR) * (REL_ARITH + PER_LAYER * U16 * n)`` where ``scale`` is the largest
|logit| of that reference on the probe and ``n`` the number of layers rounded to float16 relative to
that reference.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from micronet_onnx.model import MicroNet
from micronet_onnx.progress import ProgressFn, emit

U16 = 2.0**-11
"""Unit roundoff of float16 (11 significant bits): relative error of one rounding, at most."""
PER_LAYER = 3
"""Float16 factors per layer on the signal path: ternary conv: centroid x scale (2) + bias (1);
standard op: weight (1) + bias (1), rounded up to the same 3."""
REL_ARITH = 1e-4
"""Float32 arithmetic (PyTorch) against float32/float64 evaluation of the same numbers."""
FLOOR = 1e-6
"""Smallest logit scale the relative tolerance is taken of."""

PROBE_SHAPE = (8, 3, 32, 32)
PROBE_SEED = 0


def default_probe(batch: int = PROBE_SHAPE[0], channels: int = PROBE_SHAPE[1],
                  hw: tuple[int, int] = PROBE_SHAPE[2:]) -> torch.Tensor:
    """Fixed-seed standard normal noise, float32 [batch, channels, H, W]."""
    g = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn(batch, channels, *hw, generator=g, dtype=torch.float32)


def tolerance(scale: float, rounded_layers: int) -> float:
    return max(scale, FLOOR) * (REL_ARITH + PER_LAYER * U16 * rounded_layers)


@dataclass
class ParityReport:
    evaluator: str  # "reference" (numpy TernaryConv) or "onnxruntime"
    probe_shape: list[int]
    logit_scale: float  # max |logit| of the rounded reference
    max_abs_diff: float  # file vs rounded reference
    tolerance: float
    top1_agreement: float
    rounded_layers: int  # layers rounded to float16 relative to the rounded reference (fp16 weights)
    max_abs_diff_unrounded: float  # file vs the model as trained
    tolerance_unrounded: float
    top1_agreement_unrounded: float
    rounded_layers_unrounded: int
    seconds: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.max_abs_diff_unrounded <= self.tolerance_unrounded

    def failure(self) -> str:
        """One line naming the comparison that failed ('' if none)."""
        if self.max_abs_diff > self.tolerance:
            return (f"parity check failed: max |logit diff| {self.max_abs_diff:.3g} against the PyTorch "
                    f"model with the file's float16 rounding exceeds {self.tolerance:.3g} "
                    f"(top-1 agreement {100 * self.top1_agreement:.1f} %)")
        if self.max_abs_diff_unrounded > self.tolerance_unrounded:
            return (f"parity check failed: max |logit diff| {self.max_abs_diff_unrounded:.3g} against the "
                    f"unrounded PyTorch model exceeds the float16 budget {self.tolerance_unrounded:.3g} "
                    f"(top-1 agreement {100 * self.top1_agreement_unrounded:.1f} %)")
        return ""

    def summary(self) -> str:
        return (f"parity ({self.evaluator}, probe {'x'.join(map(str, self.probe_shape))}): "
                f"max |dlogit| {self.max_abs_diff:.2e} (tol {self.tolerance:.2e}), "
                f"top-1 {100 * self.top1_agreement:.1f} %; "
                f"vs unrounded model {self.max_abs_diff_unrounded:.2e} (tol {self.tolerance_unrounded:.2e}), "
                f"top-1 {100 * self.top1_agreement_unrounded:.1f} %")

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def run_file(data: bytes, x: np.ndarray, *, ternary: bool) -> np.ndarray:
    """Logits of a serialized exported model on ``x``."""
    if ternary:
        import onnx

        from micronet_onnx.format.reference_op import reference_evaluator

        (y,) = reference_evaluator(onnx.load_from_string(data)).run(None, {"input": x})
        return np.asarray(y)
    from micronet_onnx.runtime.session import create_session

    # a few small batches: no need for every core, nor for spinning pool threads
    sess = create_session(data, threads=min(4, os.cpu_count() or 1), library=False, log_severity_level=3,
                          config={"session.intra_op.allow_spinning": "0"})
    return np.asarray(sess.run(None, {"input": x})[0])


def compare(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max |out - ref|, share of rows with the same argmax); inf when shapes differ or out is not finite."""
    if out.shape != ref.shape:
        return float("inf"), 0.0
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    max_diff = float(diff.max()) if np.isfinite(diff).all() else float("inf")
    return max_diff, float((out.argmax(1) == ref.argmax(1)).mean())


@torch.no_grad()
def check(data: bytes, model: MicroNet, rounded: MicroNet, probe: torch.Tensor, *, ternary: bool,
          fp16_layers: int, rounded_layers: int, progress: ProgressFn | None = None) -> ParityReport:
    """Run the file and both PyTorch references on ``probe`` and measure; ``progress`` gets a
    ``"parity"`` event before each of the three runs and one when they are done."""
    import time

    t0 = time.perf_counter()
    x = probe.detach().to(torch.float32).cpu().contiguous()
    emit(progress, "parity", 0, 3, "PyTorch, float16-rounded")
    ref_rounded = rounded.eval()(x).numpy()
    emit(progress, "parity", 1, 3, "PyTorch, as trained")
    ref_plain = model.eval()(x).numpy()
    emit(progress, "parity", 2, 3, "the file, " + ("numpy reference evaluator" if ternary else "onnxruntime"))
    out = run_file(data, x.numpy(), ternary=ternary)
    emit(progress, "parity", 3, 3, "done")
    d, a = compare(out, ref_rounded)
    du, au = compare(out, ref_plain)
    scale_r = float(np.abs(ref_rounded).max()) if np.isfinite(ref_rounded).all() else float("nan")
    scale_u = float(np.abs(ref_plain).max()) if np.isfinite(ref_plain).all() else float("nan")
    n_u = fp16_layers + rounded_layers
    return ParityReport(
        evaluator="reference" if ternary else "onnxruntime",
        probe_shape=list(x.shape),
        logit_scale=scale_r,
        max_abs_diff=d,
        tolerance=tolerance(scale_r, fp16_layers),
        top1_agreement=a,
        rounded_layers=fp16_layers,
        max_abs_diff_unrounded=du,
        tolerance_unrounded=tolerance(scale_u, n_u),
        top1_agreement_unrounded=au,
        rounded_layers_unrounded=n_u,
        seconds=time.perf_counter() - t0,
    )
