"""`mnx plot`: one PNG from a checkpoint (training curves), an ONNX file (per-layer storage) or a
``mnx bench --json`` report (speed); what it draws is chosen by the input's suffix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from micronet_onnx.fileio import atomic_writer, check_output

from .errors import error_boundary

KINDS = {".pt": "training curves", ".onnx": "per-layer storage", ".json": "speed"}


def figure_for(source: Path) -> Any:
    """The matplotlib Figure `mnx plot` draws for ``source`` (see `KINDS`)."""
    from micronet_onnx.viz import backend

    backend.pyplot()  # a missing matplotlib fails before any scoring or loading
    suffix = source.suffix.lower()
    if suffix not in KINDS:
        raise ValueError(f"cannot plot {source}: expected a checkpoint (.pt), an ONNX file (.onnx) or a "
                         "`mnx bench --json` report (.json)")
    if not source.is_file():
        raise ValueError(f"no such file: {source}")
    if suffix == ".pt":
        from micronet_onnx.training.checkpoint import Checkpoint
        from micronet_onnx.viz.curves import epoch_rows, training_curves

        ckpt = Checkpoint.load(source)
        return training_curves(epoch_rows(ckpt.history, ckpt.metrics), title=f"{source.name}: training curves")
    if suffix == ".onnx":
        from micronet_onnx.scoring import score_model
        from micronet_onnx.viz.layers import layer_figure

        return layer_figure(score_model(source))
    from micronet_onnx.viz.speed import speed_figure

    try:
        data = json.loads(source.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{source} is not JSON: {e}") from None
    return speed_figure(data)


def plot_file(source: Path, output: Path, *, force: bool = False) -> Path:
    """Draw ``source`` into the PNG ``output`` (the output rule of `check_output`, written atomically)."""
    from micronet_onnx.viz.backend import png_bytes

    check_output(output, inputs=(source,), force=force)
    png = png_bytes(figure_for(source))
    with atomic_writer(output) as f:
        f.write(png)
    return output


def plot_cmd(
    source: Path = typer.Argument(..., help="model.pt (training curves), model.onnx (per-layer sparsity, storage "
                                  "and dead channels) or bench.json (`mnx bench --json`: images/s)."),
    output: Path = typer.Option(..., "-o", "--output", help="PNG file to write (atomically)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output instead of refusing."),
) -> None:
    """Draw a checkpoint, an ONNX file or a bench report as a PNG (needs the `plots` extra)."""
    with error_boundary():
        path = plot_file(source, output, force=force)
    typer.echo(f"{KINDS.get(source.suffix.lower(), 'plot')}: {path}")
