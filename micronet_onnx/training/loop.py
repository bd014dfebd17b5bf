"""The training loop: full-precision pre-training, then EC2T, then the frozen-assignment phase.

A run is a list of phases. After every epoch the whole state (weights, optimizer, scheduler, the
best-on-validation weights, both random generators) is written atomically, so a killed run loses at
most the epoch in flight and ``resume`` continues it to the same result as an uninterrupted run.

Under ``torchrun`` the same loop runs on every rank (`distributed.py` owns what differs: the process
group, sharding, gathering, DDP); rank 0 alone logs, draws progress and writes the checkpoint, which
holds no rank-specific state, so ``resume`` works under any world size. Steps and evaluation are in
`step.py`, the precision and speed options in `precision.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from micronet_onnx.data import AugmentConfig, Dataset, load_dataset
from micronet_onnx.model import MicroNet, MicroNetConfig, count_parameters, preset_config
from micronet_onnx.training import distributed
from micronet_onnx.training.checkpoint import Checkpoint, CheckpointError, RngState
from micronet_onnx.training.config import TrainConfig
from micronet_onnx.training.ec2t import EC2TConfig, EC2TQuantizer, is_ternary, overall_sparsity, ternarize_model
from micronet_onnx.training.precision import Precision
from micronet_onnx.training.progress import Progress
from micronet_onnx.training.step import Engine, evaluate
from micronet_onnx.training.step import train_epoch as _train_epoch  # looked up here at call time (tests patch it)

__all__ = ["Progress", "TrainConfig", "evaluate", "layer_table", "resolve_device", "resolve_model_config", "train"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def resolve_model_config(cfg: TrainConfig, num_classes: int) -> MicroNetConfig:
    name = cfg.model
    if name == "auto":
        name = "micronet-c100" if num_classes == 100 else "micronet-c10" if num_classes == 10 else "micronet"
    return preset_config(name, num_classes, cfg.depth, cfg.width, cfg.dropout)


def _optimizer(phase: str, model: nn.Module, cfg: TrainConfig, quantizer: EC2TQuantizer | None):
    if phase == "fp":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    assert quantizer is not None
    return torch.optim.Adam(quantizer.param_groups(model))


def _no_best() -> dict[str, Any]:
    return {"val_acc": -1.0, "epoch": -1}


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the state dict in the standard (contiguous) layout, whatever --channels-last did."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


@dataclass
class _Run:
    """What a run carries across phases and epochs; every checkpoint is a snapshot of it."""

    cfg: TrainConfig
    output: Path
    log: Callable[[str], None]
    engine: Engine
    ds: Dataset
    mcfg: MicroNetConfig
    ec2t_cfg: EC2TConfig
    aug: AugmentConfig | None
    gen: torch.Generator
    model: MicroNet
    phases: list[tuple[str, int]]
    results: dict[str, Any]
    metrics: list[dict] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=_no_best)
    best_state: dict | None = None  # best-on-validation weights of the current phase
    opt_state: dict | None = None  # optimizer / scheduler state to continue from (resume only)
    sched_state: dict | None = None
    global_epoch: int = 0
    history: list[dict] = field(default_factory=list)  # per epoch, the full record (Checkpoint.history)
    progress: Progress = field(default_factory=Progress)

    @property
    def device(self) -> torch.device:
        return self.engine.device


def train(cfg: TrainConfig, output: str | Path, *, resume: bool = False,
          log: Callable[[str], None] = print, progress: bool | None = None,
          check_sync: bool = False) -> dict[str, Any]:
    """Run (or continue) a training run and return its results; the checkpoint is ``output``.

    ``log`` gets the plain lines (one per epoch); ``progress`` draws live bars (`Progress`), by
    default only when stdout and stderr are a terminal. Under torchrun (``WORLD_SIZE`` > 1) every
    rank calls this; only rank 0 logs and writes. ``check_sync`` compares a checksum of the whole
    model state across ranks after every step (`distributed.check_in_sync`; a debugging aid)."""
    output = Path(output)
    ctx = distributed.Context.from_env()
    if not ctx.is_main:
        log, progress = (lambda s: None), False
    ckpt = None
    if resume:
        ckpt = Checkpoint.load(output)
        if ckpt.complete:
            log(f"{output} is already complete; nothing to resume")
            return ckpt.results
        ckpt.require_training_state()
        assert ckpt.train_config is not None
        cfg = ckpt.train_config
    cfg = cfg.validate()
    device = distributed.device_for(ctx, resolve_device(cfg.device))
    precision = Precision(cfg.amp, cfg.channels_last, cfg.compile, device.type).check()
    with distributed.process_group(ctx, device):
        run = _start(cfg, output, log, Engine(device, ctx, precision, check_sync))
        run.progress = Progress(Progress.terminal() if progress is None else progress)
        start_phase, start_epoch = _resume(run, ckpt) if ckpt is not None else (0, 0)
        precision.model(run.model.to(device))
        _log_start(run)
        run.global_epoch = sum(n for _, n in run.phases[:start_phase]) + start_epoch
        for pi in range(start_phase, len(run.phases)):
            _run_phase(run, pi, start_epoch if pi == start_phase else 0)
        results = _finish(run)
        distributed.barrier()  # the last checkpoint is in place when any rank returns
    return results


def _log_start(run: _Run) -> None:
    mcfg, ds, ctx = run.mcfg, run.ds, run.engine.ctx
    ranks = f" x {ctx.world_size} ranks (global batch {run.cfg.batch_size})" if ctx.distributed else ""
    amp = f", amp {run.cfg.amp}" if run.cfg.amp != "off" else ""
    run.log(f"model {run.cfg.model} depth {mcfg.depth:.4g} width {mcfg.width:.4g}: widths {mcfg.widths}, "
            f"{mcfg.blocks_per_stage} blocks/stage, {run.results['parameters']:,} parameters; dataset {ds.name}: "
            f"{len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test; device {run.device}{ranks}{amp}")


def _start(cfg: TrainConfig, output: Path, log: Callable[[str], None], engine: Engine) -> _Run:
    """Data, model (from ``--init`` when given) and random generators of a fresh run."""
    ds = load_dataset(cfg.dataset, cfg.data_dir, download_missing=cfg.download, val_fraction=cfg.val_fraction)
    mcfg = resolve_model_config(cfg, ds.num_classes)
    ec2t_cfg = EC2TConfig.from_dict(cfg.ec2t).validate()
    aug = AugmentConfig.for_dataset(cfg.dataset) if cfg.augment else None

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    model = MicroNet(mcfg)
    if cfg.init is not None:
        init = Checkpoint.load(cfg.init)
        init_model = init.build_model()
        if is_ternary(init_model):
            raise ValueError(f"--init {cfg.init} is already ternary; give a full-precision checkpoint")
        if init.model_config != mcfg:
            raise ValueError(f"--init {cfg.init} holds a different model shape than --model/--depth/--width ask for")
        model.load_state_dict(init_model.state_dict())
    results: dict[str, Any] = {"parameters": count_parameters(model), "model_config": mcfg.to_dict()}
    return _Run(cfg=cfg, output=output, log=log, engine=engine, ds=ds, mcfg=mcfg, ec2t_cfg=ec2t_cfg, aug=aug,
                gen=gen, model=model, phases=cfg.phases(), results=results)


def _resume(run: _Run, ckpt: Checkpoint) -> tuple[int, int]:
    """Put the checkpoint's state into ``run``; returns (phase index, epochs done in that phase)."""
    assert ckpt.phase is not None and ckpt.best is not None and ckpt.rng is not None
    start_phase = [p for p, _ in run.phases].index(ckpt.phase)
    run.metrics, run.results, run.best = ckpt.metrics, ckpt.results, ckpt.best
    run.history = ckpt.history
    run.best_state = ckpt.best_state_dict
    if ckpt.phase != "fp":
        ternarize_model(run.model, run.ec2t_cfg)
    ckpt.load_weights(run.model, best=False)
    run.opt_state, run.sched_state = ckpt.optimizer, ckpt.scheduler
    ckpt.rng.restore(run.gen)
    return start_phase, ckpt.phase_epoch


def _run_phase(run: _Run, pi: int, first_epoch: int) -> None:
    """Epochs ``first_epoch..`` of phase ``pi`` (a checkpoint after each), then its summary."""
    phase, n_epochs = run.phases[pi]
    if first_epoch == 0:
        _enter_phase(run, pi, phase)
    quantizer, optimizer, scheduler = _phase_optimizer(run, phase, n_epochs)
    if quantizer is not None and first_epoch == 0 and n_epochs > 0:
        run.log(f"[{phase}] start: sparsity {overall_sparsity(run.model) * 100:.1f}%")
    with run.progress.phase(phase, n_epochs, first_epoch):
        for epoch in range(first_epoch, n_epochs):
            _run_epoch(run, phase, epoch, n_epochs, optimizer, scheduler, quantizer)
    _phase_summary(run, phase, quantizer)


def _enter_phase(run: _Run, pi: int, phase: str) -> None:
    """Entering a phase fresh: continue from the previous phase's selected weights."""
    model = run.model
    if run.best_state is not None and pi > 0:
        model.load_state_dict(run.best_state)
    if phase == "ec2t" and not is_ternary(model):
        ternarize_model(model, run.ec2t_cfg)
        run.engine.precision.model(model.to(run.device))
    run.best, run.best_state, run.opt_state, run.sched_state = _no_best(), None, None, None
    if phase == "frozen":
        # same assignment as the weights it starts from, so those stay a candidate: the
        # frozen phase can only improve the selected model on validation
        val = evaluate(model, run.ds.val, run.ds, run.cfg.batch_size, run.device, run.engine)
        run.best = {"val_acc": val["acc"], "epoch": run.global_epoch}
        run.best_state = _cpu_state(model)


def _phase_optimizer(run: _Run, phase: str, n_epochs: int):
    """(quantizer or None, optimizer, scheduler or None) of a phase, continuing saved state if any;
    and the phase's module to train (`distributed.wrap_model`, torch.compile) into ``run.engine``."""
    model, cfg, engine = run.model, run.cfg, run.engine
    quantizer = EC2TQuantizer(model, run.ec2t_cfg) if phase != "fp" else None
    if quantizer is not None and phase == "frozen":
        quantizer.freeze()
    engine.net = engine.precision.compiled(distributed.wrap_model(model, run.device))
    engine.scaler = engine.precision.scaler()
    optimizer = _optimizer(phase, model, cfg, quantizer)
    steps_per_epoch = math.ceil(len(run.ds.train) / cfg.batch_size)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, n_epochs * steps_per_epoch))
                 if phase == "fp" else None)
    if run.opt_state is not None:
        try:
            optimizer.load_state_dict(run.opt_state)
            if scheduler is not None and run.sched_state is not None:
                scheduler.load_state_dict(run.sched_state)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{run.output}: optimizer/scheduler state does not fit the {phase} phase: "
                                  f"{type(e).__name__}: {e}") from None
        run.opt_state = run.sched_state = None
    return quantizer, optimizer, scheduler


def _run_epoch(run: _Run, phase: str, epoch: int, n_epochs: int, optimizer, scheduler,
               quantizer: EC2TQuantizer | None) -> None:
    """One training epoch, validation, model selection, log line and checkpoint."""
    model, cfg, ds = run.model, run.cfg, run.ds
    if run.engine.ctx.distributed:  # dropout: a per-rank stream that a resumed run draws again
        torch.manual_seed(distributed.epoch_seed(cfg.seed, run.global_epoch, run.engine.ctx.rank))
    row = _train_epoch(run.engine, model, ds, run.aug, cfg.batch_size, optimizer, scheduler, quantizer, run.gen,
                       progress=run.progress, label=f"[{phase} {epoch + 1}/{n_epochs}]")
    val = evaluate(model, ds.val, ds, cfg.batch_size, run.device, run.engine)
    row.update(phase=phase, epoch=run.global_epoch + 1, val_acc=val["acc"], val_loss=val["loss"])
    layer_stats: list[dict] = []
    if quantizer is not None:
        row["sparsity"] = overall_sparsity(model)
        layer_stats = quantizer.stats()
        row["dead_channels"] = sum(s["dead_channels"] for s in layer_stats)
        row["layer_sparsity"] = [round(s["sparsity"], 4) for s in layer_stats]
        row["stage_sparsity"] = _stage_sparsity(layer_stats, model)
    run.metrics.append(row)
    run.history.append(_history_row(row, optimizer, quantizer, layer_stats))
    if val["acc"] > run.best["val_acc"]:
        run.best = {"val_acc": val["acc"], "epoch": run.global_epoch + 1}
        run.best_state = _cpu_state(model)
    run.global_epoch += 1
    run.progress.epoch_end(row)
    run.log(_epoch_line(row))
    _save(run, phase, epoch + 1, optimizer, scheduler, ternary=phase != "fp")


def _phase_summary(run: _Run, phase: str, quantizer: EC2TQuantizer | None) -> None:
    """Evaluate the phase's selected weights on validation and test; into ``run.results[phase]``."""
    model, cfg, ds = run.model, run.cfg, run.ds
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    test = evaluate(model, ds.test, ds, cfg.batch_size, run.device, run.engine)
    val = evaluate(model, ds.val, ds, cfg.batch_size, run.device, run.engine)
    summary = {"val_acc": val["acc"], "test_acc": test["acc"], "best_epoch": run.best["epoch"]}
    if quantizer is not None:
        summary["sparsity"] = overall_sparsity(model)
        summary["layers"] = quantizer.stats()
    run.results[phase] = summary
    run.log(f"[{phase}] done: val {val['acc'] * 100:.2f}%  test {test['acc'] * 100:.2f}%"
            + (f"  sparsity {summary['sparsity'] * 100:.1f}%" if "sparsity" in summary else ""))


def _finish(run: _Run) -> dict[str, Any]:
    """Final weights = the last phase's selection; the last checkpoint is marked complete."""
    if run.best_state is not None:
        run.model.load_state_dict(run.best_state)
    phases = run.phases
    final_phase = phases[-1][0] if phases else "fp"
    run.results["final"] = dict(run.results.get(final_phase, {}), phase=final_phase)
    _save(run, final_phase, phases[-1][1] if phases else 0, None, None, ternary=is_ternary(run.model),
          complete=True)
    return run.results


def _stage_sparsity(layer_stats: list[dict], model: MicroNet) -> list[float]:
    """Share of zeros per stage (weighted by layer size), for a compact per-epoch report."""
    stage_of = {c.name: c.stage for c in model.block_convs()}
    zeros: dict[int, float] = {}
    total: dict[int, float] = {}
    for s in layer_stats:
        stage = stage_of.get(s["layer"])
        if stage is None:  # a ternary layer outside the blocks (custom layer filter): no stage
            continue
        n = math.prod(s["shape"])
        zeros[stage] = zeros.get(stage, 0.0) + s["sparsity"] * n
        total[stage] = total.get(stage, 0.0) + n
    return [zeros[k] / total[k] for k in sorted(total)]


def _history_row(row: dict, optimizer, quantizer: EC2TQuantizer | None, layer_stats: list[dict]) -> dict:
    """The epoch's full record for `Checkpoint.history` (what `mnx plot` draws): the log row plus the
    learning rate of every parameter group, EC2T's lambda (mean and max over layers, while the
    assignment is not frozen) and a summary of the centroids. Reads only: no random draws, no writes."""
    out = dict(row)
    out["lr"] = {str(g.get("name", i)): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}
    if quantizer is not None and layer_stats:
        if not quantizer.frozen:
            lam = [float(lam_l) for lam_l, _ in quantizer.lambdas()]
            out["lambda"] = {"mean": sum(lam) / len(lam), "max": max(lam)}
        wp = [s["w_p"] for s in layer_stats]
        wn = [s["w_n"] for s in layer_stats]
        out["centroids"] = {"w_p_mean": sum(wp) / len(wp), "w_p_min": min(wp), "w_p_max": max(wp),
                            "w_n_mean": sum(wn) / len(wn), "w_n_min": min(wn), "w_n_max": max(wn)}
    return out


def _epoch_line(row: dict) -> str:
    line = (f"epoch {row['epoch']:3d} [{row['phase']}] loss {row['train_loss']:.4f} "
            f"train {row['train_acc'] * 100:5.1f}% val {row['val_acc'] * 100:5.1f}% "
            f"{row['images_per_s']:.0f} img/s")
    if "sparsity" in row:
        stages = "/".join(f"{v * 100:.0f}" for v in row.get("stage_sparsity", []))
        line += f" sparsity {row['sparsity'] * 100:.1f}% (stages {stages}%) dead {row['dead_channels']}"
    return line


def _save(run: _Run, phase: str, phase_epoch: int, optimizer, scheduler, *, ternary: bool,
          complete: bool = False) -> None:
    """Rank 0 writes the checkpoint (atomically); the other ranks hold the same state and write nothing."""
    if not run.engine.ctx.is_main:
        return
    Checkpoint(
        model_config=run.mcfg,
        # the unwrapped model's keys (no DDP "module." prefix), contiguous whatever --channels-last did
        state_dict={k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()},
        ternary=run.ec2t_cfg if ternary else None,
        best_state_dict=run.best_state,
        train_config=run.cfg,
        best=run.best,
        optimizer=optimizer.state_dict() if optimizer is not None else None,
        scheduler=scheduler.state_dict() if scheduler is not None else None,
        phase=phase,
        phase_epoch=phase_epoch,
        # CUDA generators only for one process: under DDP dropout is re-seeded per epoch and rank
        rng=RngState.capture(run.gen, cuda=not run.engine.ctx.distributed),
        metrics=run.metrics,
        history=run.history,
        results=run.results,
        complete=complete,
    ).save(run.output)


def layer_table(layers: list[dict]) -> str:
    """Per-layer EC2T table: layer, shape, sparsity, w_n, w_p, dead channels."""
    head = f"{'layer':<22} {'shape':<16} {'sparsity':>8} {'w_n':>9} {'w_p':>9} {'dead':>5}"
    lines = [head, "-" * len(head)]
    for r in layers:
        shape = "x".join(str(s) for s in r["shape"])
        lines.append(f"{r['layer']:<22} {shape:<16} {r['sparsity'] * 100:7.1f}% {r['w_n']:9.4f} {r['w_p']:9.4f} "
                     f"{r['dead_channels']:5d}")
    return "\n".join(lines)
