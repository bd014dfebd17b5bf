"""`mnx`: a thin command line over the library; every command's work lives in a module of its own."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from micronet_onnx import __version__
from micronet_onnx.fileio import check_output

from .errors import USAGE, error_boundary, fail, first_line, usage_error_type, usage_line
from .optimize import optimize_command
from .plot import plot_cmd
from .report import report_cmd

MAX_PROBE_BATCH = 4096  # the parity probe is 3x32x32 float32 noise per image: 48 MiB at the bound

app = typer.Typer(
    name="mnx",
    help="Train, ternarize (EC2T), export, run and score sparse ternary MicroNet CNNs.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mnx {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Train, ternarize (EC2T), export, run and score sparse ternary MicroNet CNNs."""


@app.command()
def train(
    typer_ctx: typer.Context,
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint path (written atomically every epoch)."),
    dataset: str = typer.Option("digits", help="digits (embedded, offline), cifar10 or cifar100."),
    data_dir: Path | None = typer.Option(None, help="Folder holding cifar-10-batches-py/ or cifar-100-python/."),
    download: bool = typer.Option(False, help="Download the CIFAR archive into --data-dir (checksum-verified)."),
    val_fraction: float = typer.Option(0.1, help="Share of the training set held out for model selection."),
    model: str = typer.Option("auto", help="micronet-c10, micronet-c100, baseline (d=w=1), micronet (custom) "
                              "or auto (the paper preset for the dataset's classes)."),
    depth: float | None = typer.Option(None, help="Depth multiplier d (blocks per stage = ceil(7d))."),
    width: float | None = typer.Option(None, help="Width multiplier w (channels 16w/32w/64w, rounded to 8)."),
    dropout: float = typer.Option(0.2, help="Dropout inside the blocks."),
    epochs: int = typer.Option(250, help="Full-precision epochs (SGD, Nesterov, cosine)."),
    batch_size: int = typer.Option(128, help="Mini-batch size, global: under torchrun it is split over the "
                                   "ranks, so results do not depend on their number (docs/reproduce.md)."),
    lr: float = typer.Option(0.1, help="Full-precision learning rate."),
    momentum: float = typer.Option(0.9, help="SGD Nesterov momentum."),
    weight_decay: float = typer.Option(5e-4, help="Full-precision weight decay."),
    augment: bool = typer.Option(True, help="Data augmentation (the reference recipe for CIFAR, shifts for digits)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of the model init, shuffling and augmentation."),
    resume: bool = typer.Option(False, help="Continue the run stored in --output with its saved settings."),
    force: bool = typer.Option(False, help="Overwrite an existing --output instead of refusing."),
    ternary: bool = typer.Option(False, help="After pre-training, ternarize with EC2T, then freeze the assignment."),
    ternary_epochs: int = typer.Option(20, help="EC2T epochs (assignment re-computed every step)."),
    freeze_epochs: int = typer.Option(15, help="Epochs with the assignment frozen (centroids, BN, FC train)."),
    init: Path | None = typer.Option(None, help="Ternarize this full-precision checkpoint instead of pre-training."),
    lambda_gain: float = typer.Option(0.15, help="EC2T gamma: strength of the entropy constraint (more = sparser)."),
    centroid_init: float = typer.Option(0.45, help="EC2T s: initial centroids s*|max W| and s*|min W|."),
    lr_weights: float = typer.Option(1e-4, help="EC2T Adam lr of the full-precision background weights."),
    lr_centroids: float = typer.Option(1e-5, help="EC2T Adam lr of the centroids w_p, w_n."),
    lr_other: float = typer.Option(1e-4, help="EC2T Adam lr of the non-quantized parameters."),
    wn_grad: str = typer.Option("true", help="Gradient of w_n: 'true' (d loss/d w_n) or 'ttq' (the reference sign)."),
    recipe: str | None = typer.Option(None, help="paper-c100 or paper-c10: the published settings "
                                      "(docs/reproduce.md); options given explicitly override it."),
    amp: str = typer.Option("off", help="Mixed precision: off, bf16 or fp16 (autocast; fp16 with loss scaling)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="NHWC memory format for model and batches."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the training module."),
    check_sync: bool = typer.Option(False, "--check-sync", help="Under torchrun: compare a checksum of the "
                                    "model state across ranks after every step (slow; a debugging aid)."),
    json_out: bool = typer.Option(False, "--json", help="Print the final results as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-epoch lines or progress bars."),
) -> None:
    """Train MicroNet in full precision, optionally followed by EC2T ternarization (under torchrun:
    `torchrun --nproc-per-node N -m micronet_onnx train ...`, data parallel, rank 0 writes).
    \f
    Why long: typer declares each of its 35 options in the signature; the body is 30 lines."""
    from micronet_onnx.data import CIFAR
    from micronet_onnx.training.config import check_model_size
    from micronet_onnx.training.ec2t import EC2TConfig
    from micronet_onnx.training.loop import TrainConfig, layer_table, resolve_model_config
    from micronet_onnx.training.loop import train as run_training

    with error_boundary():
        if resume and not output.exists():
            fail(f"--resume: no checkpoint at {output}")
        if init is not None and not init.is_file():
            fail(f"--init: no checkpoint at {init}")
        # never the --init checkpoint, never an existing file without --force/--resume, a folder
        # that accepts the file: all before the first epoch (on --resume too)
        check_output(output, inputs=(init,), force=force or resume, flag="--resume to continue it or --force")
        ec2t = EC2TConfig(lambda_gain=lambda_gain, centroid_init=centroid_init, lr_weights=lr_weights,
                          lr_centroids=lr_centroids, lr_other=lr_other, wn_grad=wn_grad).validate()
        cfg = TrainConfig(
            dataset=dataset, data_dir=str(data_dir) if data_dir else None, download=download,
            val_fraction=val_fraction, model=model, depth=depth, width=width, dropout=dropout, epochs=epochs,
            batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay, augment=augment,
            device=device, seed=seed, ternary=ternary, ternary_epochs=ternary_epochs,
            freeze_epochs=freeze_epochs, init=str(init) if init else None, ec2t=ec2t.to_dict(),
            amp=amp, channels_last=channels_last, compile=compile_model,
        )
        if recipe is not None:
            from micronet_onnx.training.recipes import apply_recipe

            cfg = apply_recipe(cfg, recipe, explicit_options(typer_ctx))
            dataset = cfg.dataset
        cfg = cfg.validate()
        EC2TConfig.from_dict(cfg.ec2t).validate()
        if not resume and init is None:  # a resumed or --init run's model comes from a checked checkpoint
            check_model_size(resolve_model_config(cfg, CIFAR[dataset].num_classes if dataset in CIFAR else 10))
        log = (lambda s: None) if quiet else (lambda s: typer.echo(s, err=True)) if json_out else typer.echo
        results = run_training(cfg, output, resume=resume, log=log, progress=False if quiet else None,
                               check_sync=check_sync)
    if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 alone reports
        _print_training(results, output, json_out, layer_table)


def _print_training(results: dict, output: Path, json_out: bool, layer_table) -> None:
    """`mnx train`'s final lines (or its JSON)."""
    if json_out:
        typer.echo(json.dumps(results, indent=2))
        return
    final = results.get("final", {})
    if "fp" in results:
        fp = results["fp"]
        typer.echo(f"full precision: val {fp['val_acc'] * 100:.2f}%  test {fp['test_acc'] * 100:.2f}%")
    if "layers" in final:
        typer.echo(layer_table(final["layers"]))
        typer.echo(f"ternary: val {final['val_acc'] * 100:.2f}%  test {final['test_acc'] * 100:.2f}%  "
                   f"sparsity {final['sparsity'] * 100:.1f}%")
    typer.echo(f"checkpoint: {output}")


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint written by `mnx train`."),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write (atomically)."),
    ternary: bool = typer.Option(False, "--ternary", help="Write micronet::TernaryConv nodes (EC2T "
                                 "checkpoints); default: plain standard ONNX with float32 weights."),
    fp16: bool = typer.Option(False, "--fp16", help="Store the standard ops' weights as float16 (+ Cast)."),
    portable: bool = typer.Option(False, "--portable", help="Standard ONNX only (any runtime, no library): "
                                  "each ternary conv's codes as INT2, looked up into its centroids (EC2T "
                                  "checkpoints; opset 25)."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the parity check against PyTorch."),
    probe_batch: int = typer.Option(8, "--probe-batch", min=1, max=MAX_PROBE_BATCH,
                                    help="Images of noise in the parity probe."),
    format_version: int | None = typer.Option(
        None, "--format-version", help="TernaryConv format to write with --ternary: 3 (the default: as 2, with "
        "each layer's assignment in the encoding of --encoding), 2 (bn1 and the skip connection fused into the "
        "TernaryConv nodes) or 1 (standalone BatchNormalization and Add, "
        "for readers of version 1)."),
    encoding: str = typer.Option("auto", "--encoding", help="How each TernaryConv stores its ternary "
                                 "assignment (format version 3): auto (the smallest per layer), masks, rows "
                                 "or entropy (docs/ternary-conv.md); versions 1 and 2 store masks."),
    no_annotate: bool = typer.Option(False, "--no-annotate", help="No Netron doc strings on the TernaryConv "
                                     "nodes and no descriptive metadata (about 2 % smaller, byte-minimal)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output instead of refusing."),
    json_out: bool = typer.Option(False, "--json", help="Print the export report as JSON on stdout."),
) -> None:
    """Export a checkpoint to ONNX, checking the file against the PyTorch model (docs/export.md)."""
    from micronet_onnx.export import ParityError, export_checkpoint
    from micronet_onnx.export.graph import check_encoding_request
    from micronet_onnx.format import spec, versions

    with error_boundary():
        try:
            format_version = versions.check_format_version(
                spec.OPSET_VERSION if format_version is None else format_version)
        except spec.FormatError as e:
            fail(f"--format-version: {e}")
        try:
            check_encoding_request(encoding, format_version)
        except spec.FormatError as e:
            fail(f"--encoding: {e}")
        check_output(output, inputs=(checkpoint,), force=force)
        try:
            report = export_checkpoint(checkpoint, output, ternary=ternary, fp16=fp16, check=not no_check,
                                       probe_batch=probe_batch, format_version=format_version,
                                       portable=portable, encoding=encoding, annotate=not no_annotate)
        except ParityError as e:
            fail(first_line(e), 1)
    typer.echo(json.dumps(report.to_dict(), indent=2) if json_out else "\n".join(report.summary()))


@app.command()
def score(
    model: Path = typer.Argument(..., help="Any ONNX file; micronet::TernaryConv nodes are counted by Appendix B."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    input_shape: str | None = typer.Option(None, help="Input shape when the file's is symbolic, e.g. 1,3,32,32."),
    mult_bits: int = typer.Option(16, help="Bits of multiplications not by a dense weight (centroids, BN, ReLU)."),
    add_bits: int = typer.Option(32, help="Bits of additions."),
    dense_bits: int | None = typer.Option(None, help="Bits of dense-weight multiplications (default: stored)."),
    tree_adder: bool = typer.Option(False, help="Count ternary accumulations in a 16,17,18..-bit tree adder."),
) -> None:
    """Storage (Appendix B and bits stored), operations and MicroNet score of an ONNX file (docs/scoring.md)."""
    from micronet_onnx.scoring import ScoreInputError, ScoreOptions, report_to_json, score_model

    from .score_view import render_table

    with error_boundary():
        shape = None
        if input_shape:
            try:
                shape = tuple(int(v) for v in input_shape.split(","))
            except ValueError:
                fail(f"--input-shape must be comma-separated integers, got {input_shape!r}")
        opts = ScoreOptions(input_shape=shape, mult_bits=mult_bits, add_bits=add_bits, dense_bits=dense_bits,
                            tree_adder=tree_adder)
        try:
            report = score_model(model, opts)
        except ScoreInputError as e:
            fail(first_line(e))
    typer.echo(report_to_json(report) if json_out else render_table(report))


@app.command("eval")
def eval_cmd(
    model: Path = typer.Argument(..., help="ONNX file (ternary files run through our custom-op library)."),
    dataset: str | None = typer.Option(None, help="digits, cifar10 or cifar100 (default: the model's own)."),
    data_dir: Path | None = typer.Option(None, help="CIFAR folder (see mnx train --help)."),
    split: str = typer.Option("test", help="train, val or test."),
    batch_size: int = typer.Option(64, help="Images per onnxruntime run."),
    threads: int | None = typer.Option(None, help="onnxruntime intra-op threads (default: one per core)."),
    limit: int | None = typer.Option(None, help="Stop after about this many images."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Top-1 accuracy and images/s of an ONNX file in onnxruntime on the CPU."""
    from micronet_onnx.runtime.evaluate import evaluate_onnx

    from .views import eval_line

    with error_boundary():
        result = evaluate_onnx(model, dataset, str(data_dir) if data_dir else None, split=split,
                               batch_size=batch_size, threads=threads, limit=limit)
    typer.echo(json.dumps(result.to_dict(), indent=2) if json_out else eval_line(result))


@app.command("bench-ec2t")
def bench_ec2t(
    model: str = typer.Option("micronet", help="Preset (micronet-c10, micronet-c100, baseline, micronet)."),
    depth: float | None = typer.Option(0.3, help="Depth multiplier (ignored for paper presets unless set)."),
    width: float | None = typer.Option(1.0, help="Width multiplier."),
    classes: int | None = typer.Option(None, help="Number of classes (default: the preset's, else 10)."),
    batch_size: int = typer.Option(32, help="Batch size of both steps."),
    repeats: int = typer.Option(10, help="Timed steps of each kind (medians are reported)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    amp: str = typer.Option("off", help="Autocast of both steps: off, bf16 or fp16 (as mnx train --amp)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Time one EC2T training step against one full-precision step (same model and batch; images/s)."""
    from micronet_onnx.model import PRESETS, preset_config
    from micronet_onnx.training.bench_step import bench_ec2t_step, render
    from micronet_onnx.training.config import MAX_BATCH_SIZE, check_model_size
    from micronet_onnx.training.loop import resolve_device

    with error_boundary():
        if not 0 < batch_size <= MAX_BATCH_SIZE or not 0 < repeats <= 10_000:
            fail(f"--batch-size must be in [1, {MAX_BATCH_SIZE}] and --repeats in [1, 10000]")
        if device not in ("cpu", "cuda", "auto"):
            fail(f"--device must be cpu, cuda or auto, got {device!r}")
        paper = model in ("micronet-c10", "micronet-c100")
        if classes is None:
            classes = (PRESETS.get(model) or (0, 0, None))[2] or 10
        cfg = preset_config(model, classes, None if paper else depth, None if paper else width).validate()
        check_model_size(cfg)
        report = bench_ec2t_step(cfg, batch_size=batch_size, repeats=repeats, device=str(resolve_device(device)),
                                 amp=amp)
    typer.echo(json.dumps(report, indent=2) if json_out else render(report))


@app.command("bench")
def bench_cmd(
    model: Path | None = typer.Argument(None, help="Ternary ONNX file (mnx export --ternary); omit with --random."),
    random: str | None = typer.Option(None, "--random", help="Instead of MODEL: a random ternary model of this "
                                      "preset (micronet-c100, ...) per --sparsity, written to --out-dir."),
    sparsity: list[float] = typer.Option([0.9], "--sparsity", help="Share of zero weights (--random, --layers)."),
    batch: list[int] = typer.Option([1, 64], "--batch", help="Batch sizes (repeat the option)."),
    threads: list[int] = typer.Option([1, 2], "--threads", help="onnxruntime intra-op threads (repeat)."),
    repeats: int = typer.Option(7, help="Interleaved rounds; medians are reported."),
    checkpoint: Path | None = typer.Option(None, help="Also time this PyTorch checkpoint (eager, same threads)."),
    kernel: str = typer.Option("auto", help="MICRONET_TERNARY_KERNEL: auto, sparse, dense, portable or direct."),
    layers: bool = typer.Option(False, "--layers", help="Per-layer microbenchmark over MicroNet's conv shapes."),
    peers: bool = typer.Option(False, "--peers", help="Against what users pick instead: onnxruntime fp32 and static "
                               "int8, the portable file, OpenVINO (docs/runtime.md, \"Peers\"). MODEL may be a "
                               "checkpoint; --checkpoint gives the portable file's source."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="--peers: folder holding the CIFAR data set "
                                         "(default: the embedded digits)."),
    out_dir: Path = typer.Option(Path("runs/bench"), help="Where --random writes (and reuses) its models."),
    json_out: bool = typer.Option(False, "--json", help="Print the report(s) as JSON."),
) -> None:
    """Images/s of a ternary file with our TernaryConv library against its dense float32 twin in stock
    onnxruntime (docs/runtime.md, "Kernels and performance")."""
    from micronet_onnx import bench
    from micronet_onnx.runtime.evaluate import check_options
    from micronet_onnx.runtime.session import OpsLibraryError

    from .bench_view import render as render_model
    from .bench_view import render_layers

    with error_boundary():
        if not 0 < repeats <= 10_000 or min(batch) <= 0 or min(threads) <= 0:
            fail("--repeats must be in [1, 10000], --batch and --threads positive")
        for b in batch:
            for t in threads:
                check_options(b, t, None)  # mnx eval's bounds: batch <= 65536, threads <= the cap
        if out_dir.exists() and not out_dir.is_dir():
            fail(f"--out-dir {out_dir} exists and is not a directory")
        if any(not 0.0 <= s <= 1.0 for s in sparsity):
            fail("--sparsity must be in [0, 1]")
        if kernel not in ("auto", "sparse", "dense", "portable", "direct"):
            fail(f"--kernel must be auto, sparse, dense, portable or direct, got {kernel!r}")
        if layers + (model is not None) + (random is not None) != 1:
            fail("give exactly one of MODEL, --random PRESET or --layers")
        if model is not None and not model.is_file():
            fail(f"no such file: {model}")
        kwargs = dict(batches=batch, threads=threads, repeats=repeats, checkpoint=checkpoint,
                      kernel=None if kernel == "auto" else kernel)
        try:
            if peers:
                from .peers import peer_reports

                reports = peer_reports(model, random, sparsity, data_dir=data_dir, layers=layers, **kwargs)
            elif layers:
                with bench.kernel_env(None if kernel == "auto" else kernel):
                    reports = [bench.bench_layers(sparsities=sparsity, batch=batch[0], threads=threads[0],
                                                  repeats=repeats)]
            elif random is not None:
                _check_bench_outputs(random, sparsity, out_dir)
                reports = bench.bench_random(random, sparsity, out_dir, **kwargs)
            else:
                reports = [bench.bench_model(model, **kwargs)]
        except OpsLibraryError as e:
            fail(first_line(e))
    if json_out:
        typer.echo(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
        return
    if peers:
        from .peers_view import render_peers as render_model
    render = render_layers if layers else render_model
    typer.echo("\n\n".join((f"sparsity {r['sparsity'] * 100:.0f}%\n" if "sparsity" in r else "") + render(r)
                            for r in reports))


app.command("plot")(plot_cmd)
app.command("report")(report_cmd)
app.command("optimize")(optimize_command)


def explicit_options(ctx: typer.Context) -> set[str]:
    """Names of the options the user passed (command line or environment), not left at their default."""
    out = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            out.add(name)
    return out


def _check_bench_outputs(preset: str, sparsities: list[float], out_dir: Path) -> None:
    """`bench --random` rewrites only its own cached models: a file at one of their paths that is not a
    current-format model (the user's own file, an older export) is refused, never replaced."""
    from micronet_onnx.bench.cache import is_current_format, random_model_path

    for s in sparsities:
        path = random_model_path(out_dir, preset, s, 0)
        if path.exists():
            if not path.is_file() or not is_current_format(path):
                fail(f"{path} exists and is not a model `mnx bench --random` wrote; move it or choose another "
                     "--out-dir")
        else:
            check_output(path)  # the folder accepts a new file, before anything is generated


def main() -> None:
    """Entry point of `mnx`: the error boundary around the whole app, so nothing escapes as a traceback."""
    from micronet_onnx.runtime.session import set_log_severity

    from .errors import debug_enabled

    if not debug_enabled():
        set_log_severity(4)  # onnxruntime's own log lines would come on top of our one-line error
    try:
        with error_boundary():
            try:
                code = app(standalone_mode=False)
            except usage_error_type() as e:
                if type(e).__name__ == "NoArgsIsHelpError":  # plain `mnx`: typer has shown the help
                    raise typer.Exit(USAGE) from None
                fail(usage_line(e))
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as e:  # raised by the boundary itself, outside click's own handling
        sys.exit(e.exit_code)
    except BrokenPipeError:  # `mnx ... | head`
        sys.exit(1)


if __name__ == "__main__":
    main()
