"""The one HTML page of `mnx report`: self-contained (PNG plots as ``data:`` URIs, inline CSS, no
script, nothing fetched), so it opens offline and can be mailed or archived as one file."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any

from micronet_onnx.scoring.report import ScoreReport, TernaryLayerRecord, UnusedConstantsRecord
from micronet_onnx.viz.layers import dead_channels

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f4f4f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; } code { background: #f4f4f4; padding: 0 3px; }
p.parity { font-family: monospace; font-size: 0.85em; }
"""


@dataclass
class PageInput:
    """What the page shows; the command gathers it (score, metadata, parity, plots)."""

    title: str
    report: ScoreReport
    metadata: dict[str, str]
    parity: str
    plots: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, PNG bytes)
    training: dict[str, Any] | None = None  # checkpoint results per phase, when --checkpoint


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:  # type: ignore[assignment]
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td class='n'>{_e(c)}</td>" if i in numeric else f"<td>{_e(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def score_rows(r: ScoreReport) -> list[list[str]]:
    """The totals of the score, one (what, value) row each."""
    return [
        ["score (Appendix B storage)", f"{r.score:.5g}"],
        ["score (bits stored)", f"{r.score_stored:.5g}"],
        ["parameters, Appendix B (32-bit units)", _num(r.params_paper, "{:,.1f}")],
        ["parameters, stored in the file", _num(r.params_stored, "{:,.1f}")],
        ["parameters, cheapest reference format", _num(r.params_best_format, "{:,.1f}")],
        ["dense float32 parameters", _num(r.dense_fp32_params)],
        ["compression vs dense float32 (stored / Appendix B)",
         f"{_num(r.compression_ratio, '{:.2f}x')} / {_num(r.compression_ratio_paper, '{:.2f}x')}"],
        ["operations (32-bit units)", _num(r.ops)],
        ["multiplications / additions", f"{_num(r.mults)} / {_num(r.adds)}"],
        ["reference", f"{r.reference.model}: {r.reference.params:,.0f} params, {r.reference.ops:,.0f} ops"],
        ["file bytes", _num(r.file_bytes)],
        ["TernaryConv layers", str(r.num_ternary_layers)],
    ]


def layer_rows(r: ScoreReport) -> list[list[str]]:
    """One row per scored node (the unused-constants pseudo-layer last, as in `mnx score`)."""
    rows = []
    for la in r.layers:
        if isinstance(la, UnusedConstantsRecord):
            rows.append([la.name, "-", "-", "-", _num(la.params_stored, "{:,.1f}"), "-", "-", "-", "-"])
            continue
        ch = f"{la.out_channels[0]}/{la.out_channels[1]}" if la.out_channels else "-"
        alt = la.best_alternative.name if la.best_alternative else "-"
        rows.append([la.name, la.op_type + (" (micronet)" if isinstance(la, TernaryLayerRecord) else ""), ch,
                     _num(None if la.sparsity is None else 100 * la.sparsity, "{:.1f}%"),
                     _num(la.params_stored, "{:,.1f}"), _num(la.params_paper, "{:,.1f}"), alt,
                     str(dead_channels(la)), _num(la.ops)])
    return rows


def _training_rows(training: dict[str, Any]) -> list[list[str]]:
    rows = []
    for phase in ("fp", "ec2t", "frozen", "final"):
        s = training.get(phase)
        if isinstance(s, dict) and "val_acc" in s:
            rows.append([phase, f"{100 * s['val_acc']:.2f}%", f"{100 * s.get('test_acc', float('nan')):.2f}%",
                         _num(None if "sparsity" not in s else 100 * s["sparsity"], "{:.1f}%")])
    return rows


def report_html(page: PageInput) -> str:
    """The whole page as one string."""
    r = page.report
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(page.title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{_e(page.title)}</h1>",
             "<h2>Score</h2>", _table(["", "value"], score_rows(r), {1})]
    if r.warnings:
        parts.append("<ul>" + "".join(f"<li>{_e(w)}</li>" for w in r.warnings) + "</ul>")
    parts += ["<h2>Export</h2>", f"<p class='parity'>{_e(page.parity)}</p>",
              _table(["metadata", "value"], [[k, v] for k, v in sorted(page.metadata.items())])]
    if page.training:
        parts += ["<h2>Training (PyTorch)</h2>",
                  _table(["phase", "val", "test", "sparsity"], _training_rows(page.training), {1, 2, 3})]
    parts.append("<h2>Plots</h2>")
    for caption, png in page.plots:
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        parts.append(f"<figure><img src='{uri}' alt='{_e(caption)}'><figcaption>{_e(caption)}</figcaption></figure>")
    head = ["layer", "op", "out channels (live/all)", "sparsity", "params stored", "params App. B",
            "cheapest format", "dead", "ops"]
    parts += ["<h2>Layers</h2>", _table(head, layer_rows(r), {3, 4, 5, 7, 8}), "</body></html>"]
    return "\n".join(parts) + "\n"
