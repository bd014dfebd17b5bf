"""Whole-model benchmark: a ternary ONNX file in onnxruntime with our library against its dense twin
in stock onnxruntime (and, optionally, the PyTorch checkpoint), per batch size and thread count."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from micronet_onnx.bench.cache import cached_random_model
from micronet_onnx.bench.harness import KERNEL_ENV, interleaved_times, ort_session, ternary_session
from micronet_onnx.bench.machine import machine_info
from micronet_onnx.bench.twin import dense_twin
from micronet_onnx.optimize import would_optimize


def _model_input(model: onnx.ModelProto) -> tuple[str, list[int]]:
    """Name and shape (batch dimension as 1) of the model's single graph input."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"the model has {len(inputs)} graph inputs, expected one image input")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    if len(shape) != 4:
        raise ValueError(f"the model input must be [batch, C, H, W], got rank {len(shape)}")
    return inputs[0].name, shape


def _rows(times: dict[str, list[float]], batch: int, threads: int) -> list[dict]:
    """One report row per runtime from its seconds per batch of every round (medians; speed-up over
    the dense twin's median)."""
    dense_med = statistics.median(times["dense"])
    rows = []
    for runtime, samples in times.items():
        med = statistics.median(samples)
        rows.append({
            "batch": batch, "threads": threads, "runtime": runtime, "ms_per_batch": med * 1e3,
            "images_per_s": batch / med, "speedup_vs_dense": dense_med / med,
            "samples": [round(s, 9) for s in samples],
        })
    return rows


def bench_model(path: str | os.PathLike[str], *, batches: Sequence[int] = (1, 64), threads: Sequence[int] = (1, 2),
                repeats: int = 7, checkpoint: str | os.PathLike[str] | None = None, kernel: str | None = None,
                min_seconds: float = 0.1, warmup: int = 2, seed: int = 0) -> dict:
    """Time a ternary ONNX file in onnxruntime with our library against its dense twin in stock
    onnxruntime (``ORT_ENABLE_ALL``), and optionally the PyTorch checkpoint in eager mode.

    For each batch size and thread count the contestants run interleaved for ``repeats`` rounds
    (one measurement of each per round, a few runs long); the result reports medians.

    Returns ``{"model", "machine", "repeats", "kernel", "rows": [...], "max_abs_diff", "max_abs_logit",
    "optimize_fusions"}`` (the last: fusions `mnx optimize` would make in the file)
    where each
    row has ``batch``, ``threads``, ``runtime`` (``"ternary"``, ``"dense"`` or ``"torch"``),
    ``ms_per_batch``, ``images_per_s`` (medians), ``samples`` (seconds per batch of every round) and
    ``speedup_vs_dense`` (images/s over the dense twin's, same batch and threads).
    ``max_abs_diff`` is the largest |ternary - dense| logit difference seen on the benchmark inputs,
    ``max_abs_logit`` the largest |logit| of the dense twin there (the scale of that difference).
    """
    import torch

    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    if any(b < 1 for b in batches) or any(t < 1 for t in threads):
        raise ValueError("batch sizes and thread counts must be positive")
    machine = machine_info()
    model = onnx.load(os.fspath(path))
    name, shape = _model_input(model)
    ternary_bytes = model.SerializeToString()
    dense_bytes = dense_twin(model).SerializeToString()
    torch_model = None
    if checkpoint is not None:
        from micronet_onnx.training.checkpoint import load_model

        torch_model, _ = load_model(checkpoint)
    rows: list[dict] = []
    max_diff = 0.0
    max_logit = 0.0
    saved_threads = torch.get_num_threads()
    try:
        for t in threads:
            tern = ternary_session(ternary_bytes, t, kernel)
            dense = ort_session(dense_bytes, t)
            for b in batches:
                x = np.random.default_rng(seed + b).standard_normal((b, *shape[1:])).astype(np.float32)
                y_t = tern.run(None, {name: x})[0]
                y_d = dense.run(None, {name: x})[0]
                if y_t.size:
                    max_diff = max(max_diff, float(np.max(np.abs(y_t - y_d))))
                    max_logit = max(max_logit, float(np.max(np.abs(y_d))))
                contestants: dict[str, Callable[[], object]] = {
                    "ternary": lambda s=tern, x=x: s.run(None, {name: x}),
                    "dense": lambda s=dense, x=x: s.run(None, {name: x}),
                }
                if torch_model is not None:
                    xt = torch.from_numpy(x)

                    def run_torch(xt=xt, t=t) -> object:
                        torch.set_num_threads(t)
                        with torch.inference_mode():
                            return torch_model(xt)

                    contestants["torch"] = run_torch
                times = interleaved_times(contestants, repeats, warmup=warmup, min_seconds=min_seconds)
                rows.extend(_rows(times, b, t))
            del tern, dense
    finally:
        torch.set_num_threads(saved_threads)
    return {"model": os.fspath(path), "machine": machine, "repeats": repeats,
            "kernel": kernel or os.environ.get(KERNEL_ENV, "auto"), "rows": rows, "max_abs_diff": max_diff,
            "max_abs_logit": max_logit, "optimize_fusions": would_optimize(model)}



def bench_random(preset: str = "micronet-c100", sparsities: Sequence[float] = (0.0, 0.5, 0.9),
                 out_dir: str | os.PathLike[str] = "runs/bench", *, seed: int = 0, reuse: bool = True,
                 **bench_kwargs: Any) -> list[dict]:
    """`make_random_ternary_model` for each sparsity (files ``<out_dir>/<preset>-sp<NN>-seed<S>.onnx``,
    reused when present, written in the current format version and ``reuse``), then `bench_model` on
    each; returns the reports (each with an added ``"sparsity"`` key)."""
    reports = []
    for sparsity in sparsities:
        path = cached_random_model(preset, sparsity, out_dir, seed=seed, reuse=reuse)
        report = bench_model(path, **bench_kwargs)
        report["sparsity"] = sparsity
        reports.append(report)
    return reports
