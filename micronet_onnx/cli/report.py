"""`mnx report`: one self-contained HTML page about an exported file (score, layers, export
metadata and parity, plots) and, with ``--checkpoint``, its training run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from micronet_onnx.fileio import atomic_writer, check_output, file_hash

from .errors import error_boundary


def file_metadata(model: Path) -> dict[str, str]:
    """The exporter's metadata props (prefix ``micronet.``, stripped), read without the weights' data."""
    import onnx

    from micronet_onnx.export.exporter import META_PREFIX

    proto = onnx.load(str(model), load_external_data=False)
    return {p.key[len(META_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}


def parity_line(model: Path, checkpoint: Path | None, meta: dict[str, str]) -> str:
    """The export's parity line. The file does not record it, so with ``checkpoint`` the export is
    redone into a temporary folder with the file's own settings (kind, fp16, format version) and its
    parity check reported, together with whether the re-export has the file's bytes."""
    if checkpoint is None:
        return "parity: not recorded in the file; pass --checkpoint to re-check it against PyTorch"
    from micronet_onnx.export import export_checkpoint

    note = ""
    if meta.get("source_sha256") and meta["source_sha256"] != file_hash(checkpoint):
        note = f" (note: {checkpoint.name} is not the checkpoint this file was exported from)"
    fmt = meta.get("format_version", "")
    kwargs = {"format_version": int(fmt)} if fmt.isdigit() else {}
    with tempfile.TemporaryDirectory() as tmp:
        again = Path(tmp) / model.name
        rep = export_checkpoint(checkpoint, again, ternary=meta.get("export_kind") == "ternary",
                                fp16=meta.get("fp16_weights") == "true", **kwargs)
        same = again.read_bytes() == model.read_bytes()
    summary = rep.parity.summary() if rep.parity is not None else "parity: not checked"
    return f"{summary}; re-export from {checkpoint.name} {'has the same bytes' if same else 'differs'}{note}"


def build_report(model: Path, checkpoint: Path | None) -> str:
    """The page's HTML (see `micronet_onnx.viz.page`)."""
    from micronet_onnx.scoring import score_model
    from micronet_onnx.viz import backend
    from micronet_onnx.viz.layers import layer_figure
    from micronet_onnx.viz.page import PageInput, report_html

    backend.pyplot()  # a missing matplotlib fails before any work
    if not model.is_file():
        raise ValueError(f"no such file: {model}")
    if checkpoint is not None and not checkpoint.is_file():
        raise ValueError(f"--checkpoint: no such file: {checkpoint}")
    report = score_model(model)
    meta = file_metadata(model)
    plots = [("per layer: sparsity, storage in bits, live and dead output channels",
              backend.png_bytes(layer_figure(report)))]
    training = None
    if checkpoint is not None:
        from micronet_onnx.training.checkpoint import Checkpoint
        from micronet_onnx.viz.curves import NoHistory, epoch_rows, training_curves

        ckpt = Checkpoint.load(checkpoint)
        training = ckpt.results
        try:
            fig = training_curves(epoch_rows(ckpt.history, ckpt.metrics), title=f"{checkpoint.name}: training")
            plots.insert(0, ("training: loss, accuracy and sparsity per epoch (phases shaded)",
                             backend.png_bytes(fig)))
        except NoHistory:
            pass
    page = PageInput(title=f"micronet-onnx report: {model.name}", report=report, metadata=meta,
                     parity=parity_line(model, checkpoint, meta), plots=plots, training=training)
    return report_html(page)


def write_report(model: Path, output: Path, *, checkpoint: Path | None = None, force: bool = False) -> Path:
    """`build_report` into ``output`` (the output rule of `check_output`, written atomically)."""
    check_output(output, inputs=(model, checkpoint), force=force)
    text = build_report(model, checkpoint)
    with atomic_writer(output) as f:
        f.write(text.encode("utf-8"))
    return output


def report_cmd(
    model: Path = typer.Argument(..., help="ONNX file written by `mnx export`."),
    output: Path = typer.Option(..., "-o", "--output", help="HTML file to write (atomically)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="The checkpoint it was exported from: "
                                           "adds the training curves and re-checks the export's parity."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output instead of refusing."),
) -> None:
    """One self-contained HTML page (plots embedded, readable offline) about an exported model."""
    with error_boundary():
        path = write_report(model, output, checkpoint=checkpoint, force=force)
    typer.echo(f"report: {path}")
