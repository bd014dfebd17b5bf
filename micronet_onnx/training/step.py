"""One training epoch and one evaluation pass, for one process or one rank of a torchrun job.

`Engine` says how steps run (device, rank, precision, the module to train in the current phase);
`train_epoch` and `evaluate` are the only places that draw batches. With world size 1 and
``--amp off`` they run exactly the operations of a plain single-process run (the loss is the batch
mean, nothing is gathered), so ``mnx train`` gives the results it always gave.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from micronet_onnx.data import AugmentConfig, Dataset, Split, iterate, make_batch
from micronet_onnx.training.distributed import Context, all_reduce_sums, check_in_sync, loss_scale, shard_slice
from micronet_onnx.training.ec2t import EC2TQuantizer
from micronet_onnx.training.precision import Precision, compile_failure
from micronet_onnx.training.progress import Progress


@dataclass
class Engine:
    """How a run's steps execute. ``net`` is what the forward pass calls in the current phase (the
    model itself, or it inside DDP and/or torch.compile); the optimizer, EC2T and the checkpoint
    always work on the plain model."""

    device: torch.device
    ctx: Context = field(default_factory=Context)
    precision: Precision = field(default_factory=Precision)
    check_sync: bool = False  # compare a state checksum across ranks after every step
    net: nn.Module | None = None
    scaler: Any = None  # GradScaler for --amp fp16


def _forward_loss(engine: Engine, net: nn.Module, x: torch.Tensor, y: torch.Tensor, global_batch: int):
    """(logits, loss to back-propagate, summed loss of this rank's images)."""
    with engine.precision.autocast():
        logits = net(x)
        if engine.ctx.distributed:
            summed = F.cross_entropy(logits, y, reduction="sum")
            return logits, summed * loss_scale(global_batch, engine.ctx.world_size), summed
        loss = F.cross_entropy(logits, y)
    return logits, loss, None


def _backward_step(engine: Engine, loss: torch.Tensor, optimizer) -> None:
    if engine.scaler is None:
        loss.backward()
        optimizer.step()
        return
    engine.scaler.scale(loss).backward()
    engine.scaler.step(optimizer)  # skipped when a gradient overflowed
    engine.scaler.update()


def train_epoch(engine: Engine, model: nn.Module, ds: Dataset, aug: AugmentConfig | None, batch_size: int,
                optimizer, scheduler, quantizer: EC2TQuantizer | None, gen: torch.Generator, progress: Progress,
                label: str) -> dict:
    """One pass over the training split in global batches of ``batch_size``; under DDP each rank
    trains on its shard of every batch (`distributed.shard_slice`) and the epoch's loss, accuracy and
    image count are summed over ranks."""
    net = engine.net if engine.net is not None else model
    net.train()
    ctx = engine.ctx
    progress.epoch_start(label, math.ceil(len(ds.train) / batch_size))
    seen, correct, loss_sum, step = 0, 0, 0.0, 0
    t0 = time.perf_counter()
    for step, idx in enumerate(iterate(ds.train, batch_size, shuffle_gen=gen), start=1):
        shard = shard_slice(len(idx), ctx.rank, ctx.world_size) if ctx.distributed else None
        x, y = make_batch(ds.train, idx, ds, aug, gen, shard)
        x, y = engine.precision.batch(x.to(engine.device, non_blocking=True)), y.to(engine.device, non_blocking=True)
        try:
            logits, loss, summed = _forward_loss(engine, net, x, y, len(idx))
            optimizer.zero_grad(set_to_none=True)
            _backward_step(engine, loss, optimizer)
        except Exception as e:
            failure = compile_failure(e) if engine.precision.compile else None
            if failure is not None:
                raise failure from None
            raise
        if scheduler is not None:
            scheduler.step()
        if quantizer is not None:
            quantizer.after_step()  # outside autocast: float32 weights, data-independent
        if engine.check_sync:
            check_in_sync(model, f"step {step} of {label}")
        seen += len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
        loss_sum += float(summed.detach()) if summed is not None else float(loss.detach()) * len(y)
        progress.update(step, seen, loss_sum / max(seen, 1), correct / max(seen, 1))
    if ctx.distributed:
        seen, correct, loss_sum = all_reduce_sums([seen, correct, loss_sum], engine.device)
    elapsed = time.perf_counter() - t0
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
            "images_per_s": seen / max(elapsed, 1e-9), "seconds": elapsed}


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, ds: Dataset, batch_size: int, device: torch.device,
             engine: Engine | None = None) -> dict:
    """Top-1 accuracy and mean loss of ``model`` on ``split`` (eval mode, no augmentation); under DDP
    each rank evaluates its shard of every batch and the correct/total counts are summed over ranks,
    so every rank gets the same numbers (and takes the same model-selection decision)."""
    ctx = engine.ctx if engine is not None else Context()
    precision = engine.precision if engine is not None else Precision()
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for idx in iterate(split, batch_size):
        if ctx.distributed:
            idx = idx[shard_slice(len(idx), ctx.rank, ctx.world_size)]
            if len(idx) == 0:
                continue
        x, y = make_batch(split, idx, ds, None, None)
        x, y = precision.batch(x.to(device)), y.to(device)
        with precision.autocast():
            logits = model(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    if ctx.distributed:
        total_correct, loss_sum = all_reduce_sums([correct, loss_sum], device)
        correct = int(round(total_correct))
    model.train(was_training)
    n = max(len(split), 1)
    return {"acc": correct / n, "loss": loss_sum / n}
