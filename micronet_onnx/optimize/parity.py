"""The parity check of `optimize_model`: the optimized model against its input, both in the numpy
reference evaluator (`format.reference_op`), on one fixed-seed probe.

The rewrites keep the function exactly up to float32 rounding (the output affine folds only values
float16 holds exactly; the input affine is stored as float32), so the tolerance is the export's
float32 arithmetic budget: ``REL * max(largest |output|, FLOOR)``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from micronet_onnx.format.reference_op import reference_evaluator
from micronet_onnx.optimize.report import Parity

REL = 1e-4
FLOOR = 1e-6


class ProbeError(ValueError):
    """A graph input whose probe cannot be built (a symbolic dim other than the first, no type)."""


def probe_feeds(model: onnx.ModelProto, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Standard-normal float inputs (zeros for other dtypes), the first symbolic dim set to ``batch``."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            raise ProbeError(f"graph input {vi.name!r} has no tensor shape: cannot build the parity probe")
        shape = []
        for k, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                shape.append(d.dim_value)
            elif k == 0:
                shape.append(batch)
            else:
                raise ProbeError(f"graph input {vi.name!r} has a symbolic dim {d.dim_param or '?'!r} besides "
                                 "the batch: cannot build the parity probe")
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(shape, dtype=dtype)
    return feeds


def check_parity(before: onnx.ModelProto, after: onnx.ModelProto, *, batch: int = 2, seed: int = 0) -> Parity:
    """Both models on the same probe; the largest difference over every graph output."""
    feeds = probe_feeds(before, batch, seed)
    want = reference_evaluator(before).run(None, feeds)
    got = reference_evaluator(after).run(None, {k: v for k, v in feeds.items()
                                               if k in {vi.name for vi in after.graph.input}})
    diff, scale = 0.0, 0.0
    for a, b in zip(want, got, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return Parity({k: list(v.shape) for k, v in feeds.items()}, float("inf"), 0.0, 0.0)
        both_nan = np.isnan(a) & np.isnan(b)
        d = np.where(both_nan, 0.0, np.abs(a - b))
        diff = max(diff, float(np.nan_to_num(d, nan=np.inf).max(initial=0.0)))
        scale = max(scale, float(np.nan_to_num(np.abs(a), nan=0.0).max(initial=0.0)))
    return Parity({k: list(v.shape) for k, v in feeds.items()}, diff, REL * max(scale, FLOOR), scale)
