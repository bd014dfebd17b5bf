"""Text tables of `mnx bench` reports (`micronet_onnx.bench`'s plain data: `bench_model`,
`bench_random`, `bench_layers`); the library computes, this renders."""

from __future__ import annotations

from micronet_onnx.bench.machine import BUSY_CPUS


def machine_line(report: dict, what: str) -> str:
    """The machine a report ran on and what its numbers are medians of, plus a note when other
    processes kept more than `BUSY_CPUS` CPUs busy just before the run (the timings are then noisy)."""
    machine = report["machine"]
    line = (f"machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, onnxruntime "
            f"{machine.get('onnxruntime')}; medians of {report['repeats']} {what}")
    busy = machine.get("busy_cpus_before")
    if busy is not None and busy > BUSY_CPUS:
        line += (f"\nnote: other processes kept {busy:.1f} CPUs busy just before the run: "
                 "this machine is shared, the timings are noisy")
    return line


def render(report: dict) -> str:
    """A text table of `bench_model`: images/s (ms per batch) per runtime, and ternary / dense."""
    runtimes = [r for r in ("ternary", "dense", "torch") if any(row["runtime"] == r for row in report["rows"])]
    keys = sorted({(row["batch"], row["threads"]) for row in report["rows"]}, key=lambda k: (k[1], k[0]))
    by = {(row["batch"], row["threads"], row["runtime"]): row for row in report["rows"]}
    lines = [
        f"model: {report['model']}  (kernel: {report['kernel']})",
        machine_line(report, "interleaved rounds; images/s (ms per batch)"),
    ]
    head = f"{'batch':>5} {'threads':>7}"
    for r in runtimes:
        head += f" {r:>22}"
    head += f" {'ternary/dense':>14}"
    if "torch" in runtimes:
        head += f" {'ternary/torch':>14}"
    lines.append(head)
    for b, t in keys:
        line = f"{b:>5} {t:>7}"
        for r in runtimes:
            row = by[(b, t, r)]
            line += f" {row['images_per_s']:>10.1f} ({row['ms_per_batch']:>8.2f})"
        tern = by[(b, t, "ternary")]
        line += f" {tern['speedup_vs_dense']:>13.2f}x"
        if "torch" in runtimes:
            line += f" {by[(b, t, 'torch')]['ms_per_batch'] / tern['ms_per_batch']:>13.2f}x"
        lines.append(line)
    lines.append(f"max |ternary - dense| logit difference: {report['max_abs_diff']:.3g} "
                 f"(largest |logit| {report['max_abs_logit']:.3g})")
    if report.get("optimize_fusions"):
        lines.append(f"note: `mnx optimize` would make {report['optimize_fusions']} fusion(s) in this file "
                     "(docs/optimize.md); the optimized file may run faster")
    return "\n".join(lines)


def render_layers(report: dict) -> str:
    """A text table of `bench_layers`."""
    kernels = report["kernels"]
    head = f"{'layer':<18} {'sparsity':>8} {'auto':>6} {'onnxruntime':>11}"
    for k in kernels:
        head += f" {k + ' ms':>10} {'x':>6}"
    lines = [f"per-layer: batch {report['batch']}, {report['threads']} thread(s)",
             machine_line(report, "interleaved rounds"), head]
    for r in report["rows"]:
        line = (f"{r['layer']:<18} {r['sparsity'] * 100:>7.0f}% {r['auto_kernel'] or '-':>6} "
                f"{r['onnxruntime_ms']:>9.3f}ms")
        for k in kernels:
            line += f" {r[f'ternary_{k}_ms']:>10.3f} {r[f'speedup_{k}']:>5.2f}x"
        lines.append(line)
    return "\n".join(lines)

