"""Training curves of a checkpoint: loss, accuracy and sparsity per epoch, the phases shaded."""

from __future__ import annotations

from typing import Any

from micronet_onnx.viz.backend import PHASE_COLORS, PHASE_NAMES, pyplot


class NoHistory(ValueError):
    """The checkpoint holds no per-epoch records (not written by `mnx train`)."""


def epoch_rows(history: list[dict[str, Any]], metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows to draw: the checkpoint's history, or its older metrics rows (files written before
    the history existed hold the same keys but no learning rates, lambda or centroids)."""
    rows = history or metrics
    if not rows:
        raise NoHistory("the checkpoint has no per-epoch history to plot (was it written by mnx train?)")
    return rows


def _shade_phases(ax: Any, rows: list[dict[str, Any]], label: bool) -> None:
    start = 0
    for i, row in enumerate(rows + [{"phase": None}]):
        if i == len(rows) or row["phase"] != rows[start]["phase"]:
            phase = rows[start]["phase"]
            ax.axvspan(rows[start]["epoch"] - 0.5, rows[i - 1]["epoch"] + 0.5, color=PHASE_COLORS.get(phase, "#eee"),
                       zorder=0, label=PHASE_NAMES.get(phase, phase) if label else None)
            start = i


def training_curves(rows: list[dict[str, Any]], title: str = "") -> Any:
    """Three panels over epochs: train/val loss, train/val accuracy, sparsity (overall and per stage,
    when the run has ternary epochs). Returns the Figure."""
    plt = pyplot()
    ternary = any("sparsity" in r for r in rows)
    fig, axes = plt.subplots(3 if ternary else 2, 1, figsize=(8, 8.5 if ternary else 6), sharex=True)
    epochs = [r["epoch"] for r in rows]
    loss, acc = axes[0], axes[1]
    loss.plot(epochs, [r["train_loss"] for r in rows], "o-", ms=3, label="train")
    loss.plot(epochs, [r.get("val_loss") for r in rows], "s-", ms=3, label="validation")
    loss.set_ylabel("cross-entropy loss")
    acc.plot(epochs, [100 * r["train_acc"] for r in rows], "o-", ms=3, label="train")
    acc.plot(epochs, [100 * r["val_acc"] for r in rows], "s-", ms=3, label="validation")
    acc.set_ylabel("top-1 accuracy (%)")
    if ternary:
        sp = axes[2]
        t_rows = [r for r in rows if "sparsity" in r]
        t_epochs = [r["epoch"] for r in t_rows]
        sp.plot(t_epochs, [100 * r["sparsity"] for r in t_rows], "o-", ms=3, lw=2, color="black", label="overall")
        n_stages = max(len(r.get("stage_sparsity", [])) for r in t_rows)
        for k in range(n_stages):
            sp.plot(t_epochs, [100 * r["stage_sparsity"][k] if k < len(r.get("stage_sparsity", [])) else None
                               for r in t_rows], "--", label=f"stage {k + 1}")
        sp.set_ylabel("zero weights (%)")
        sp.set_ylim(0, 100)
    for i, ax in enumerate(axes):
        _shade_phases(ax, rows, label=i == 0)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[-1].set_xlabel("epoch")
    fig.suptitle(title or "training curves")
    return fig
