"""Per-layer microbenchmark: single TernaryConv nodes (our library, each kernel forced) against
single dense Conv nodes in stock onnxruntime, over MicroNet's conv shapes and several sparsities."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import numpy as np

from micronet_onnx.bench.harness import interleaved_times, ort_session, ternary_session
from micronet_onnx.bench.kernel_choice import kernel_choice
from micronet_onnx.bench.machine import machine_info
from micronet_onnx.bench.synthetic import single_layer_model
from micronet_onnx.bench.twin import dense_twin

# MicroNet's block convs: (in channels, out channels, input size, stride); the paper-scale
# MicroNet-C100 widths are 32/64/120, the strided convs open stages 2 and 3.
MICRONET_LAYERS: tuple[tuple[int, int, int, int], ...] = (
    (32, 32, 32, 1),
    (32, 64, 32, 2),
    (64, 64, 16, 1),
    (64, 120, 16, 2),
    (120, 120, 8, 1),
)
LAYER_SPARSITIES: tuple[float, ...] = (0.0, 0.5, 0.8, 0.9, 0.95)


def bench_layers(layers: Sequence[tuple[int, int, int, int]] = MICRONET_LAYERS,
                 sparsities: Sequence[float] = LAYER_SPARSITIES, *, batch: int = 1, threads: int = 1,
                 repeats: int = 7, kernels: Sequence[str] = ("auto", "sparse", "dense"),
                 min_seconds: float = 0.02) -> dict:
    """Single TernaryConv node (our library, each of ``kernels`` forced through
    ``MICRONET_TERNARY_KERNEL``) against its dense twin (one ``Conv`` + ``Relu`` in stock onnxruntime,
    which at ``ORT_ENABLE_ALL`` adds NCHWc reorders around a lone Conv), per MicroNet conv shape
    ``(cin, cout, size, stride)`` and sparsity; medians of interleaved rounds.

    Returns ``{"machine", "batch", "threads", "repeats", "kernels", "rows"}``; each row has ``layer``
    (``"CinxCout@HxW/s"``), ``cin``, ``cout``, ``size``, ``stride``, ``sparsity``, ``auto_kernel`` and
    ``isa`` (what ``auto`` picked), ``onnxruntime_ms`` (the dense Conv), ``ternary_<kernel>_ms`` per
    kernel and ``speedup_<kernel>`` = onnxruntime time / ternary time.
    """
    if repeats < 1 or batch < 1 or threads < 1:
        raise ValueError("repeats, batch and threads must be positive")
    machine = machine_info()
    rows = []
    for cin, cout, size, stride in layers:
        x = np.random.default_rng(1).standard_normal((batch, cin, size, size)).astype(np.float32)
        for sparsity in sparsities:
            model = single_layer_model(cin, cout, size, stride, sparsity)
            choice = kernel_choice(model)
            dense = ort_session(dense_twin(model), threads)
            contestants: dict[str, Callable[[], object]] = {
                "onnxruntime": lambda s=dense, x=x: s.run(None, {"X": x})}
            for k in kernels:
                sess = ternary_session(model, threads, k)
                contestants[f"ternary_{k}"] = lambda s=sess, x=x: s.run(None, {"X": x})
            times = interleaved_times(contestants, repeats, min_seconds=min_seconds)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"layer": f"{cin}x{cout}@{size}x{size}/{stride}", "cin": cin, "cout": cout, "size": size,
                   "stride": stride, "sparsity": sparsity,
                   "auto_kernel": choice[0]["kernel"] if choice else None,
                   "isa": choice[0]["isa"] if choice else None,
                   "onnxruntime_ms": med["onnxruntime"] * 1e3}
            for k in kernels:
                row[f"ternary_{k}_ms"] = med[f"ternary_{k}"] * 1e3
                row[f"speedup_{k}"] = med["onnxruntime"] / med[f"ternary_{k}"]
            rows.append(row)
    return {"machine": machine, "batch": batch, "threads": threads, "repeats": repeats,
            "kernels": list(kernels), "rows": rows}

