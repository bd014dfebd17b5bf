"""Per-layer pictures of a scored ONNX file (`micronet_onnx.scoring.ScoreReport`)."""

from __future__ import annotations

from typing import Any

from micronet_onnx.scoring.report import LayerRecord, ScoreReport, TernaryLayerRecord, UnusedConstantsRecord
from micronet_onnx.viz.backend import pyplot


def weight_layers(report: ScoreReport) -> list[LayerRecord]:
    """The layers that store weights (what the storage panels are about), in graph order."""
    return [la for la in report.layers
            if not isinstance(la, UnusedConstantsRecord) and (la.params_paper > 0 or la.params_stored > 0)]


def dead_channels(layer: LayerRecord) -> int:
    """Output channels of a layer that carry nothing (full minus effective); 0 when unknown."""
    out = layer.out_channels
    return int(out[1] - out[0]) if out and out[0] is not None and out[1] is not None else 0


def layer_figure(report: ScoreReport, title: str = "") -> Any:
    """Three panels per weight layer: sparsity (share of zero weights), the storage in bits three ways
    (what the file stores, Appendix B's count, the cheapest reference format), and the output
    channels split into live and dead. Returns the Figure."""
    plt = pyplot()
    layers = weight_layers(report)
    if not layers:
        raise ValueError(f"{report.model}: no layer with weights to plot")
    names = [la.name for la in layers]
    x = list(range(len(layers)))
    fig, (sp, bits, ch) = plt.subplots(3, 1, figsize=(max(8, 0.45 * len(layers) + 2), 10), sharex=True)
    ternary = [isinstance(la, TernaryLayerRecord) for la in layers]
    sp.bar(x, [100 * (la.sparsity or 0.0) for la in layers],
           color=["#d95f02" if t else "#7570b3" for t in ternary])
    sp.set_ylabel("zero weights (%)")
    sp.set_ylim(0, 100)
    sp.set_title("sparsity (orange: TernaryConv, purple: standard op)", fontsize=9)
    w = 0.28
    series = (("stored in the file", [32 * la.params_stored for la in layers], "#1b9e77"),
              ("Appendix B", [32 * la.params_paper for la in layers], "#d95f02"),
              ("cheapest format", [32 * (la.best_alternative.params if la.best_alternative else la.params_paper)
                                   for la in layers], "#7570b3"))
    for k, (label, values, color) in enumerate(series):
        bits.bar([i + (k - 1) * w for i in x], values, width=w, label=label, color=color)
    bits.set_yscale("log")
    bits.set_ylabel("bits")
    bits.legend(fontsize=8)
    bits.set_title("storage per layer", fontsize=9)
    live = [int(la.out_channels[0]) if la.out_channels and la.out_channels[0] is not None else 0 for la in layers]
    dead = [dead_channels(la) for la in layers]
    ch.bar(x, live, label="live", color="#66a61e")
    ch.bar(x, dead, bottom=live, label="dead", color="#e7298a")
    ch.set_ylabel("output channels")
    ch.legend(fontsize=8)
    ch.set_title(f"dead channels: {sum(dead)} of {sum(live) + sum(dead)}", fontsize=9)
    ch.set_xticks(x, names, rotation=70, ha="right", fontsize=7)
    for ax in (sp, bits, ch):
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title or f"{report.model}: score {report.score:.4g}, {report.num_ternary_layers} TernaryConv layers")
    return fig
