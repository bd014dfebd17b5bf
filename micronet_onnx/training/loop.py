"""The training loop: full-precision pre-training, then EC2T, then the frozen-assignment phase.

A run is a list of phases. After every epoch the whole state (weights, optimizer, scheduler, the
best-on-validation weights, both random generators) is written atomically, so a killed run loses at
most the epoch in flight and ``resume`` continues it to the same result as an uninterrupted run.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from micronet_onnx.data import AugmentConfig, Dataset, Split, iterate, load_dataset, make_batch
from micronet_onnx.model import MicroNet, MicroNetConfig, count_parameters, preset_config
from micronet_onnx.training import checkpoint as ckpt_io
from micronet_onnx.training.ec2t import EC2TConfig, EC2TQuantizer, is_ternary, overall_sparsity, ternarize_model

PHASES = ("fp", "ec2t", "frozen")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs besides the output path; stored in the checkpoint."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    model: str = "auto"
    depth: float | None = None
    width: float | None = None
    dropout: float = 0.2
    epochs: int = 250
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True
    device: str = "auto"
    seed: int = 0
    ternary: bool = False
    ternary_epochs: int = 20
    freeze_epochs: int = 15
    init: str | None = None
    ec2t: dict = field(default_factory=lambda: EC2TConfig().to_dict())

    def validate(self) -> TrainConfig:
        if self.epochs < 0 or self.ternary_epochs < 0 or self.freeze_epochs < 0:
            raise ValueError("epoch counts must be non-negative")
        if self.batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.init is not None and not self.ternary:
            raise ValueError("--init ternarizes an existing checkpoint and needs --ternary")
        EC2TConfig.from_dict(self.ec2t).validate()
        return self

    def phases(self) -> list[tuple[str, int]]:
        """(phase, epochs) in order; pre-training is skipped when starting from --init."""
        out = []
        if self.init is None:
            out.append(("fp", self.epochs))
        if self.ternary:
            out += [("ec2t", self.ternary_epochs), ("frozen", self.freeze_epochs)]
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


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


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, ds: Dataset, batch_size: int, device: torch.device) -> dict:
    """Top-1 accuracy and mean loss of ``model`` on ``split`` (eval mode, no augmentation)."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for idx in iterate(split, batch_size):
        x, y = make_batch(split, idx, ds, None, None)
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    n = max(len(split), 1)
    return {"acc": correct / n, "loss": loss_sum / n}


class Progress:
    """One status line per epoch, redrawn in place on a terminal."""

    def __init__(self, total: int, label: str, stream=sys.stderr) -> None:
        self.total, self.label, self.stream = total, label, stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.start = time.perf_counter()

    def update(self, step: int, seen: int, loss: float, acc: float, final: bool = False) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        width = 20
        filled = int(width * step / max(self.total, 1))
        line = (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} "
                f"loss {loss:.4f} acc {acc * 100:5.1f}% {seen / elapsed:7.1f} img/s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
            self.stream.flush()
        return line


def _optimizer(phase: str, model: nn.Module, cfg: TrainConfig, quantizer: EC2TQuantizer | None):
    if phase == "fp":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    assert quantizer is not None
    return torch.optim.Adam(quantizer.param_groups(model))


def _rng_state(gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "data": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(cfg: TrainConfig, output: str | Path, *, resume: bool = False,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or continue) a training run and return its results; the checkpoint is ``output``."""
    output = Path(output)
    if resume:
        state = ckpt_io.load(output)
        if state.get("complete"):
            log(f"{output} is already complete; nothing to resume")
            return state["results"]
        cfg = TrainConfig.from_dict(state["config"])
    else:
        state = None
    cfg = cfg.validate()
    device = resolve_device(cfg.device)
    ds = load_dataset(cfg.dataset, cfg.data_dir, download_missing=cfg.download, val_fraction=cfg.val_fraction)
    mcfg = resolve_model_config(cfg, ds.num_classes)
    ec2t_cfg = EC2TConfig.from_dict(cfg.ec2t).validate()
    aug = AugmentConfig.for_dataset(cfg.dataset) if cfg.augment else None

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    model = MicroNet(mcfg)
    if cfg.init is not None:
        init_model, init_ckpt = ckpt_io.load_model(cfg.init)
        if is_ternary(init_model):
            raise ValueError(f"--init {cfg.init} is already ternary; give a full-precision checkpoint")
        if MicroNetConfig.from_dict(init_ckpt["model_config"]) != mcfg:
            raise ValueError(f"--init {cfg.init} holds a different model shape than --model/--depth/--width ask for")
        model.load_state_dict(init_model.state_dict())
    phases = cfg.phases()
    results: dict[str, Any] = {"parameters": count_parameters(model), "model_config": mcfg.to_dict()}
    metrics: list[dict] = []
    start_phase, start_epoch = 0, 0
    best: dict[str, Any] = {"val_acc": -1.0, "epoch": -1}
    best_state: dict | None = None
    opt_state = sched_state = None
    if state is not None:
        start_phase = [p for p, _ in phases].index(state["phase"])
        start_epoch = int(state["phase_epoch"])
        metrics, results, best = state["metrics"], state["results"], state["best"]
        best_state = state["best_state_dict"]
        if state["phase"] != "fp":
            ternarize_model(model, ec2t_cfg)
        model.load_state_dict(state["state_dict"])
        opt_state, sched_state = state["optimizer"], state["scheduler"]
        _set_rng_state(state["rng"], gen)
    model.to(device)
    log(f"model {cfg.model} depth {mcfg.depth:.4g} width {mcfg.width:.4g}: widths {mcfg.widths}, "
        f"{mcfg.blocks_per_stage} blocks/stage, {results['parameters']:,} parameters; dataset {ds.name}: "
        f"{len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test; device {device}")

    global_epoch = sum(n for _, n in phases[:start_phase]) + start_epoch
    for pi in range(start_phase, len(phases)):
        phase, n_epochs = phases[pi]
        first_epoch = start_epoch if pi == start_phase else 0
        if first_epoch == 0:
            # entering the phase fresh: continue from the previous phase's selected weights
            if best_state is not None and pi > 0:
                model.load_state_dict(best_state)
            if phase == "ec2t" and not is_ternary(model):
                ternarize_model(model, ec2t_cfg)
                model.to(device)
            best, best_state, opt_state, sched_state = {"val_acc": -1.0, "epoch": -1}, None, None, None
            if phase == "frozen":
                # same assignment as the weights it starts from, so those stay a candidate: the
                # frozen phase can only improve the selected model on validation
                best = {"val_acc": evaluate(model, ds.val, ds, cfg.batch_size, device)["acc"], "epoch": global_epoch}
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        quantizer = EC2TQuantizer(model, ec2t_cfg) if phase != "fp" else None
        if phase == "frozen":
            quantizer.freeze()
        optimizer = _optimizer(phase, model, cfg, quantizer)
        steps_per_epoch = math.ceil(len(ds.train) / cfg.batch_size)
        scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, n_epochs * steps_per_epoch))
                     if phase == "fp" else None)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
            if scheduler is not None and sched_state is not None:
                scheduler.load_state_dict(sched_state)
            opt_state = sched_state = None
        if quantizer is not None and first_epoch == 0 and n_epochs > 0:
            log(f"[{phase}] start: sparsity {overall_sparsity(model) * 100:.1f}%")
        for epoch in range(first_epoch, n_epochs):
            row = _train_epoch(model, ds, aug, cfg, optimizer, scheduler, quantizer, gen, device,
                               label=f"[{phase} {epoch + 1}/{n_epochs}]")
            val = evaluate(model, ds.val, ds, cfg.batch_size, device)
            row.update(phase=phase, epoch=global_epoch + 1, val_acc=val["acc"], val_loss=val["loss"])
            if quantizer is not None:
                row["sparsity"] = overall_sparsity(model)
                layer_stats = quantizer.stats()
                row["dead_channels"] = sum(s["dead_channels"] for s in layer_stats)
                row["layer_sparsity"] = [round(s["sparsity"], 4) for s in layer_stats]
                row["stage_sparsity"] = _stage_sparsity(layer_stats)
            metrics.append(row)
            if val["acc"] > best["val_acc"]:
                best = {"val_acc": val["acc"], "epoch": global_epoch + 1}
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            global_epoch += 1
            log(_epoch_line(row))
            _save(output, cfg, mcfg, ec2t_cfg if phase != "fp" else None, model, best_state, best, optimizer,
                  scheduler, phase, epoch + 1, gen, metrics, results)
        # phase summary on the selected weights
        if best_state is not None:
            model.load_state_dict(best_state)
        test = evaluate(model, ds.test, ds, cfg.batch_size, device)
        val = evaluate(model, ds.val, ds, cfg.batch_size, device)
        summary = {"val_acc": val["acc"], "test_acc": test["acc"], "best_epoch": best["epoch"]}
        if quantizer is not None:
            summary["sparsity"] = overall_sparsity(model)
            summary["layers"] = quantizer.stats()
        results[phase] = summary
        log(f"[{phase}] done: val {val['acc'] * 100:.2f}%  test {test['acc'] * 100:.2f}%"
            + (f"  sparsity {summary['sparsity'] * 100:.1f}%" if "sparsity" in summary else ""))

    if best_state is not None:
        model.load_state_dict(best_state)
    final_phase = phases[-1][0] if phases else "fp"
    results["final"] = dict(results.get(final_phase, {}), phase=final_phase)
    _save(output, cfg, mcfg, ec2t_cfg if is_ternary(model) else None, model, best_state, best, None, None,
          final_phase, phases[-1][1] if phases else 0, gen, metrics, results, complete=True)
    return results


def _train_epoch(model, ds, aug, cfg, optimizer, scheduler, quantizer, gen, device, label) -> dict:
    model.train()
    progress = Progress(math.ceil(len(ds.train) / cfg.batch_size), label)
    seen, correct, loss_sum, step = 0, 0, 0.0, 0
    t0 = time.perf_counter()
    for step, idx in enumerate(iterate(ds.train, cfg.batch_size, shuffle_gen=gen), start=1):
        x, y = make_batch(ds.train, idx, ds, aug, gen)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if quantizer is not None:
            quantizer.after_step()
        seen += len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
        loss_sum += float(loss.detach()) * len(y)
        progress.update(step, seen, loss_sum / seen, correct / seen)
    progress.update(step, seen, loss_sum / max(seen, 1), correct / max(seen, 1), final=True)
    elapsed = time.perf_counter() - t0
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
            "images_per_s": seen / max(elapsed, 1e-9), "seconds": elapsed}


def _stage_sparsity(layer_stats: list[dict]) -> list[float]:
    """Share of zeros per stage (weighted by layer size), for a compact per-epoch report."""
    zeros: dict[str, float] = {}
    total: dict[str, float] = {}
    for s in layer_stats:
        stage = s["layer"].split(".")[0]
        n = math.prod(s["shape"])
        zeros[stage] = zeros.get(stage, 0.0) + s["sparsity"] * n
        total[stage] = total.get(stage, 0.0) + n
    return [zeros[k] / total[k] for k in sorted(total)]


def _epoch_line(row: dict) -> str:
    line = (f"epoch {row['epoch']:3d} [{row['phase']}] loss {row['train_loss']:.4f} "
            f"train {row['train_acc'] * 100:5.1f}% val {row['val_acc'] * 100:5.1f}% "
            f"{row['images_per_s']:.0f} img/s")
    if "sparsity" in row:
        stages = "/".join(f"{v * 100:.0f}" for v in row.get("stage_sparsity", []))
        line += f" sparsity {row['sparsity'] * 100:.1f}% (stages {stages}%) dead {row['dead_channels']}"
    return line


def _save(output, cfg, mcfg, ec2t_cfg, model, best_state, best, optimizer, scheduler, phase, phase_epoch, gen,
          metrics, results, complete: bool = False) -> None:
    ckpt_io.save_atomic({
        "format": ckpt_io.FORMAT,
        "version": ckpt_io.VERSION,
        "config": cfg.to_dict(),
        "model_config": mcfg.to_dict(),
        "ternary": ec2t_cfg.to_dict() if ec2t_cfg is not None else None,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "best_state_dict": best_state,
        "best": best,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "phase": phase,
        "phase_epoch": phase_epoch,
        "rng": _rng_state(gen),
        "metrics": metrics,
        "results": results,
        "complete": complete,
    }, output)


def layer_table(layers: list[dict]) -> str:
    """Per-layer EC2T table: layer, shape, sparsity, w_n, w_p, dead channels."""
    head = f"{'layer':<22} {'shape':<16} {'sparsity':>8} {'w_n':>9} {'w_p':>9} {'dead':>5}"
    lines = [head, "-" * len(head)]
    for r in layers:
        shape = "x".join(str(s) for s in r["shape"])
        lines.append(f"{r['layer']:<22} {shape:<16} {r['sparsity'] * 100:7.1f}% {r['w_n']:9.4f} {r['w_p']:9.4f} "
                     f"{r['dead_channels']:5d}")
    return "\n".join(lines)
