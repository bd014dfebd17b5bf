"""The table of `mnx bench --peers` (`micronet_onnx.bench.bench_peers`' plain data), drawn with rich
(which typer brings) into plain text: one row per contestant, its accuracy, file size, and images/s
with the ratio to ours at each batch size and thread count; then the skipped contestants, one line each."""

from __future__ import annotations

import io
import shutil
import sys

from .bench_view import machine_line


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _precision(c: dict) -> str:
    """The precision asked for and, for OpenVINO, the one its compiled model reports (f32, bf16, ...)."""
    hint = c["properties"].get("INFERENCE_PRECISION_HINT")
    return c["precision"] if hint is None or c["precision"] == "int8" else f"{c['precision']} ({hint})"


def _accuracy_cells(c: dict) -> list[str]:
    top1 = "-" if c["top1"] is None else f"{c['top1'] * 100:.1f} %"
    return [top1, f"{c['agreement_with_fp32'] * 100:.1f} %", f"{c['max_abs_logit_diff']:.3g}"]


def _qdq_line(qdq: dict | None) -> str:
    if not qdq:
        return "no QDQ file"
    weights = "7-bit weights (no VNNI on this CPU)" if qdq.get("reduce_range") else "8-bit weights"
    return (f"QDQ, {qdq['activation_type']} activations, {weights}, {qdq['per_channel_weights']} weights per "
            f"channel, {qdq['calibration']}, {', '.join(qdq['not_quantized'])} left in float")


def render_peers(report: dict, width: int | None = None) -> str:
    """A text table of one `bench_peers` report."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    keys = sorted({(r["batch"], r["threads"]) for r in report["rows"]}, key=lambda k: (k[1], k[0]))
    by = {(r["batch"], r["threads"], r["contestant"]): r for r in report["rows"]}
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("contestant")
    table.add_column("precision")
    table.add_column("file", justify="right")
    table.add_column("top-1", justify="right")
    table.add_column("argmax = fp32", justify="right")
    table.add_column("max |dlogit|", justify="right")
    for b, t in keys:
        table.add_column(f"b{b} t{t} img/s (x ours)", justify="right")
    for c in report["contestants"]:
        cells = [c["label"], _precision(c), _size(c["file_bytes"]), *_accuracy_cells(c)]
        for b, t in keys:
            row = by.get((b, t, c["name"]))
            cells.append("-" if row is None else f"{row['images_per_s']:.1f} ({row['relative_to_ours']:.2f}x)")
        table.add_row(*cells)
    out = io.StringIO()
    if width is None:  # a terminal's width; piped output is not wrapped (a log keeps one line per row)
        width = shutil.get_terminal_size((220, 24)).columns if sys.stdout.isatty() else 220
    console = Console(file=out, width=width,
                      color_system=None, highlight=False, markup=False, emoji=False)
    console.print(table)
    data = report["data"]
    lines = [
        f"model: {report['model']}  (our kernel: {report['kernel']})",
        machine_line(report, f"interleaved rounds, {report['settle_seconds']:g} s pause before each measurement"),
        f"images: {data['description']}",
        f"int8: {_qdq_line(report.get('qdq'))}; calibrated on {data['calibration']}",
        "runtimes: " + ", ".join(dict.fromkeys(c["runtime"] for c in report["contestants"])),
        out.getvalue().rstrip(),
        "x ours: images/s over ours' at the same batch and threads (below 1: slower than ours); argmax = fp32 and "
        f"max |dlogit| against {report['reference']} (largest |logit| {report['max_abs_logit']:.3g})",
    ]
    if data["labels"] is False:
        lines.append("top-1: not reported for a random model (its labels mean nothing to it)")
    lines += [f"skipped {s['name']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines)
