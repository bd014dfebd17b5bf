"""``mnx score`` as text: the per-layer table, the totals and the summary block of a `ScoreReport`."""

from __future__ import annotations

from collections import Counter

from micronet_onnx.scoring.report import LayerRecord, ScoreReport, TernaryLayerRecord

__all__ = ["format_count", "render_table"]

_COLUMNS = [
    ("layer", 30, "<"),
    ("op", 18, "<"),
    ("in", 9, ">"),
    ("out", 9, ">"),
    ("kernel", 6, ">"),
    ("sparsity", 8, ">"),
    ("params_paper", 12, ">"),
    ("params_stored", 13, ">"),
    ("ops", 10, ">"),
    ("best alternative", 22, "<"),
]


def format_count(x: float | None) -> str:
    """A count in a table cell: exact below 10,000, then K (thousands) and M (millions)."""
    if x is None:
        return "-"
    ax = abs(x)
    if ax < 10_000:
        return f"{x:,.1f}" if x != int(x) else f"{int(x):,}"
    if ax < 10_000_000:
        return f"{x / 1e3:,.1f}K"
    return f"{x / 1e6:,.2f}M"


def _channels(v: list[int] | None) -> str:
    return "-" if not v else f"{v[0]}/{v[1]}"


def _row(values: list[str]) -> str:
    cells = []
    for (_, width, align), v in zip(_COLUMNS, values, strict=True):
        v = v if len(v) <= width else v[: width - 1] + "~"
        cells.append(f"{v:{align}{width}}")
    return "  ".join(cells).rstrip()


def _alternative_cheaper(layer: LayerRecord) -> bool:
    alt, fmt = layer.best_alternative, layer.weight_format_params
    return alt is not None and fmt is not None and alt.params < fmt


def _layer_row(layer: LayerRecord) -> str:
    op = layer.op_type + ("?" if layer.unknown else "")
    kernel = "x".join(str(k) for k in layer.kernel) if layer.kernel else "-"
    sp = layer.sparsity
    alt = layer.best_alternative
    alt_s = "-"
    if alt is not None:
        mark = " *" if _alternative_cheaper(layer) else ""
        alt_s = f"{alt.name} {format_count(alt.params)}{mark}"
    return _row(
        [
            str(layer.name),
            op,
            _channels(layer.in_channels),
            _channels(layer.out_channels),
            kernel,
            "-" if sp is None else f"{100 * sp:.1f}%",
            format_count(layer.params_paper),
            format_count(layer.params_stored),
            format_count(layer.ops),
            alt_s,
        ]
    )


def _summary(report: ScoreReport) -> list[str]:
    ref = report.reference
    comp, comp_p = report.compression_ratio, report.compression_ratio_paper
    lines = [
        "",
        f"model                  {report.model}",
        f"params_paper           {report.params_paper:,.1f}  (Appendix B, 32-bit units)",
        f"params_stored          {report.params_stored:,.1f}  (every stored bit / 32)",
        f"params_best_format     {report.params_best_format:,.1f}  (cheapest reference format per layer)",
        *_assignment_lines(report),
        f"file size              {report.file_bytes:,} bytes  (initializers {report.initializer_bytes:,} bytes)",
        f"dense fp32 equivalent  {report.dense_fp32_params:,.0f} params ({4 * report.dense_fp32_params:,.0f} bytes)",
        "compression            "
        + (f"{comp:.2f}x stored" if comp else "-")
        + (f", {comp_p:.2f}x paper" if comp_p else ""),
        f"ops                    {report.ops:,.1f}  (32-bit units; {report.mults:,.0f} mults, "
        f"{report.adds:,.0f} adds)",
        f"score                  {report.score:.6f}  = params_paper/{ref.params:.4g} + ops/{ref.ops:.4g}",
        f"score (stored params)  {report.score_stored:.6f}",
    ]
    if report.unknown_ops:
        lines.append(f"unknown ops (0 ops)    {', '.join(report.unknown_ops)}")
    if any(_alternative_cheaper(layer) for layer in report.layers):
        lines.append("* = the alternative format is cheaper than the stored one")
    lines.extend(f"warning: {w}" for w in report.warnings)
    return lines


def _assignment_lines(report: ScoreReport) -> list[str]:
    """The ternary layers' stored assignments against their entropy bound (none without ternary layers)."""
    ternary = [la for la in report.layers if isinstance(la, TernaryLayerRecord)]
    if not ternary:
        return []
    counts = Counter(la.encoding for la in ternary)
    used = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    lines = [f"entropy_bound          {report.entropy_bound:,.1f}  (ternary assignments at their empirical "
             "entropy, + centroids)"]
    if report.assignment_params:
        ratio = report.assignment_params / report.entropy_bound if report.entropy_bound else float("nan")
        lines.append(f"assignment stored      {report.assignment_params:,.1f}  ({ratio:.3f}x the bound; "
                     f"encodings: {used})")
    return lines


def render_table(report: ScoreReport) -> str:
    """A fixed-width per-layer table with totals and a summary block."""
    rule = _row(["-" * c[1] for c in _COLUMNS])
    lines = [_row([c[0] for c in _COLUMNS]), rule]
    lines.extend(_layer_row(layer) for layer in report.layers)
    lines.append(rule)
    total = [f"total ({len(report.layers)} layers)", "", "", "", "", ""]
    lines.append(_row([*total, format_count(report.params_paper), format_count(report.params_stored),
                       format_count(report.ops), ""]))
    return "\n".join(lines + _summary(report)) + "\n"
