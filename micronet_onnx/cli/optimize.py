"""`mnx optimize`: the command and its text view; the work is `micronet_onnx.optimize.optimize_model`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from micronet_onnx.fileio import atomic_writer, check_output

from .errors import error_boundary, fail, first_line


def render(report) -> str:
    """The report as text: a summary line, each fusion, each neighbour left and why, the parity."""
    c = report.counts()
    lines = [f"TernaryConv nodes: {report.ternary_nodes}; format version {report.format_version_in} -> "
             f"{report.format_version_out}; nodes {report.nodes_before} -> {report.nodes_after}",
             "fused: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in c.items())]
    lines += [f"  {f.node}: {f.op_type} {f.op_name!r} -> {f.kind.replace('_', ' ')}" for f in report.fused]
    if report.left:
        lines.append(f"left as they were: {len(report.left)}")
        lines += [f"  {x.node}: {x.op_type} {x.op_name!r} ({x.kind.replace('_', ' ')}): {x.reason}"
                  for x in report.left]
    if report.reencoded:
        before = sum(x.bytes_in for x in report.reencoded)
        after = sum(x.bytes_out for x in report.reencoded)
        lines.append(f"re-encoded: {len(report.reencoded)} nodes, assignment {before:,} -> {after:,} bytes")
        lines += [f"  {x.node}: {x.encoding_in} -> {x.encoding_out} ({x.bytes_in:,} -> {x.bytes_out:,} bytes)"
                  for x in report.reencoded]
    p = report.parity
    if p is not None:
        lines.append(f"parity (reference evaluator, probe {p.probe_shapes}): max |diff| {p.max_abs_diff:.3g} "
                     f"<= {p.tolerance:.3g}")
    return "\n".join(lines)


def optimize_command(
    model: Path = typer.Argument(..., help="ONNX file holding micronet::TernaryConv nodes (any format version)."),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write (atomically)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output instead of refusing."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    encoding: str = typer.Option("auto", "--encoding", help="How each node's assignment is stored: auto (the "
                                 "cheapest per node), keep (as in the input), masks, rows or entropy."),
) -> None:
    """Fuse the standard ops around each TernaryConv (BatchNorm/Mul/Add, Relu, residual Add) into the node,
    in the current format, checked against the input in the reference op (docs/optimize.md)."""
    import onnx

    from micronet_onnx.optimize import ENCODING_REQUESTS, OptimizeError, optimize_model

    with error_boundary():
        if not model.is_file():
            fail(f"no such file: {model}")
        if encoding not in ENCODING_REQUESTS:
            fail(f"--encoding must be one of {', '.join(ENCODING_REQUESTS)}, got {encoding!r}", 2)
        check_output(output, inputs=(model,), force=force)
        proto = onnx.load(str(model))
        try:
            result, report = optimize_model(proto, encoding=encoding)
        except OptimizeError as e:
            fail(first_line(e), 1)
        if report.ternary_nodes == 0:
            fail(f"{model} holds no micronet::TernaryConv node: nothing to optimize")
        data = result.SerializeToString()
        with atomic_writer(output) as f:
            f.write(data)
    typer.echo(json.dumps(report.to_dict(), indent=2) if json_out else render(report) + f"\nwritten: {output}")
