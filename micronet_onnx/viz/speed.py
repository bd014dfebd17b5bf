"""Speed pictures from `mnx bench --json` (`micronet_onnx.bench.whole_model.bench_model`'s report, a
list of them from ``--random``, or `bench_layers`' per-layer report)."""

from __future__ import annotations

from typing import Any

from micronet_onnx.viz.backend import pyplot

RUNTIME_COLORS = {"ternary": "#d95f02", "dense": "#7570b3", "torch": "#1b9e77"}


def bench_reports(data: Any) -> list[dict]:
    """The reports in a ``mnx bench --json`` document (one object or a list), checked for their shape."""
    reports = data if isinstance(data, list) else [data]
    if not reports or not all(isinstance(r, dict) and isinstance(r.get("rows"), list) for r in reports):
        raise ValueError("not a `mnx bench --json` report: expected an object (or a list of them) with 'rows'")
    return reports


def _title(report: dict) -> str:
    sp = f", {report['sparsity'] * 100:.0f}% zeros" if "sparsity" in report else ""
    return f"{report.get('model', '?')}{sp}"


def speed_figure(data: Any, title: str = "") -> Any:
    """One panel per report and thread count: images/s by batch size, one bar per runtime (per-layer
    reports: one panel of ms per layer and kernel). Returns the Figure."""
    plt = pyplot()
    reports = bench_reports(data)
    if "kernels" in reports[0]:
        return _layers_figure(plt, reports[0], title)
    panels = [(r, t) for r in reports for t in sorted({row["threads"] for row in r["rows"]})]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1, 4.2), squeeze=False,
                             layout="constrained")  # the suptitle clear of the panel titles
    for ax, (report, threads) in zip(axes[0], panels):
        rows = [row for row in report["rows"] if row["threads"] == threads]
        batches = sorted({row["batch"] for row in rows})
        runtimes = [rt for rt in ("ternary", "dense", "torch") if any(row["runtime"] == rt for row in rows)]
        w = 0.8 / max(len(runtimes), 1)
        by = {(row["batch"], row["runtime"]): row for row in rows}
        for k, rt in enumerate(runtimes):
            xs = [i + (k - (len(runtimes) - 1) / 2) * w for i in range(len(batches))]
            ys = [by[(b, rt)]["images_per_s"] if (b, rt) in by else 0.0 for b in batches]
            ax.bar(xs, ys, width=w, label=rt, color=RUNTIME_COLORS.get(rt))
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.set_ylabel("images/s")
        ax.set_title(f"{_title(report)}\n{threads} thread(s)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "ternary (our library) against the dense twin (stock onnxruntime)")
    return fig


def _layers_figure(plt: Any, report: dict, title: str) -> Any:
    rows, kernels = report["rows"], report["kernels"]
    fig, (ax,) = plt.subplots(1, 1, figsize=(max(8, 0.6 * len(rows) + 2), 4.5), squeeze=False)
    series = [("onnxruntime", [r["onnxruntime_ms"] for r in rows])]
    series += [(k, [r[f"ternary_{k}_ms"] for r in rows]) for k in kernels]
    w = 0.8 / len(series)
    for k, (label, ys) in enumerate(series):
        ax.bar([i + (k - (len(series) - 1) / 2) * w for i in range(len(rows))], ys, width=w, label=label)
    ax.set_xticks(range(len(rows)), [f"{r['layer']}\n{r['sparsity'] * 100:.0f}%" for r in rows], fontsize=7)
    ax.set_ylabel("ms per batch")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title or f"per layer: batch {report['batch']}, {report['threads']} thread(s)")
    return fig
