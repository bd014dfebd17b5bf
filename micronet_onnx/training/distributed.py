"""Data-parallel training under ``torchrun``: the one owner of everything that knows about ranks.

``torchrun --nproc-per-node N -m micronet_onnx train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; `Context.from_env` reads them (a plain ``mnx train`` has
none and is world size 1: no process group, no wrapper, the code path of a single process).

The rules this module owns:

* **Process group** (`process_group`): NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``),
  gloo on the CPU; set up before the model, torn down at the end.
* **Sharding** (`shard_slice`): ``--batch-size`` is the *global* batch. Every rank draws the
  permutation and the augmentation of the whole global batch from the same data generator (same
  seed, same draws, saved in the checkpoint) and keeps a contiguous slice of it. The shards put
  together are exactly the batch one process would train on, so a run's results do not depend on
  the world size beyond float rounding (and dropout, below); this is DistributedSampler's guarantee
  (every rank agrees on the epoch's order, which is a function of the seed and the epoch) without
  per-rank sampler state.
* **Gradients** (`wrap_model`, `loss_scale`): DistributedDataParallel averages gradients over
  ranks; each rank's loss is its shard's summed loss times ``world / global_batch``, so the average
  is the global batch's mean loss even when the last batch does not split evenly. BatchNorm is
  synchronized (statistics over the global batch, `sync_bn.py`), so BN buffers are identical on every
  rank by construction and DDP does not re-broadcast them.
* **EC2T** needs nothing of its own: its per-step update (centroid floor, lambda, re-assignment)
  reads only the weights and centroids, never a batch, and those are identical on every rank after
  the all-reduced optimizer step. `state_checksum` / `check_in_sync` verify it (``--check-sync``).
* **Dropout** draws from torch's global generator, which is per rank: `epoch_seed` re-seeds it at
  every epoch from (seed, epoch, rank), so a resumed run draws what the uninterrupted one drew
  without storing per-rank state in the checkpoint.
* **Metrics** (`all_reduce_sums`): validation and test accuracy are sums of correct/total counts
  over all ranks, so every rank takes the same model-selection decision.
* **Rank 0** alone logs, draws progress and writes the checkpoint (`Context.is_main`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedError(RuntimeError):
    """Ranks that disagree (a state checksum, a setting) or a launch that cannot work."""


@dataclass(frozen=True)
class Context:
    """Where this process stands in the job: rank, world size, local rank (GPU index)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Context:
        """torchrun's environment; a plain process (none of the variables set) is rank 0 of 1."""
        if "WORLD_SIZE" not in os.environ:
            return cls()
        try:
            values = [int(os.environ.get(k, "0")) for k in ENV_VARS]
        except ValueError:
            raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                             f"{[os.environ.get(k) for k in ENV_VARS]}") from None
        rank, world, local = values
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ValueError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
        return cls(rank=rank, world_size=world, local_rank=local)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def device_for(ctx: Context, device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA under torchrun, else ``device``."""
    if device.type == "cuda" and ctx.distributed:
        if ctx.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {ctx.local_rank} but only {torch.cuda.device_count()} CUDA devices: "
                             "use --nproc-per-node <= the number of GPUs")
        return torch.device("cuda", ctx.local_rank)
    return device


@contextmanager
def process_group(ctx: Context, device: torch.device) -> Iterator[None]:
    """Initialise the default process group for ``ctx`` (nothing for world size 1) and destroy it at
    the end; a group that already exists (a caller's own launcher) is used and left alone."""
    if not ctx.distributed or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def active() -> bool:
    """Whether collectives are live (a process group of more than one rank)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def shard_slice(n: int, rank: int, world_size: int) -> slice:
    """Rows of a batch of ``n`` that ``rank`` trains on: contiguous, sizes differing by at most one
    (the first ``n % world_size`` ranks take one more; a rank may get none when ``n < world_size``)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def loss_scale(global_batch: int, world_size: int) -> float:
    """Factor of a shard's *summed* loss so DDP's gradient average is the global batch's mean loss."""
    return world_size / max(global_batch, 1)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of torch's global generator (dropout) for ``rank`` in ``epoch`` under DDP."""
    digest = hashlib.sha256(f"micronet-onnx/{seed}/{epoch}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def all_reduce_sums(values: Sequence[float], device: torch.device) -> list[float]:
    """Elementwise sums of ``values`` over all ranks (float64; the values themselves without a group)."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def gather_objects(obj: object) -> list[object]:
    """``obj`` of every rank, in rank order (``[obj]`` without a group)."""
    if not active():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def state_checksum(model: nn.Module) -> str:
    """SHA-256 over every tensor of ``model.state_dict()`` (name, dtype, shape, bytes in logical order):
    background weights, centroids, assignments, BN parameters and buffers."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_in_sync(model: nn.Module, where: str) -> str:
    """Gather `state_checksum` from every rank; raise `DistributedError` naming the ranks that differ
    from rank 0. Returns the checksum (of this rank)."""
    mine = state_checksum(model)
    sums = gather_objects(mine)
    bad = [r for r, s in enumerate(sums) if s != sums[0]]
    if bad:
        raise DistributedError(f"ranks {bad} hold a different model state than rank 0 after {where}")
    return mine


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The module to train: ``model`` itself for one process; under a process group, ``model`` with
    synchronized BatchNorm (in place, same parameters and buffers, so the optimizer and the checkpoint
    keep using ``model``) inside DistributedDataParallel. Call once per phase: EC2T swaps layers and
    the frozen phase stops training the background weights, which changes what DDP reduces."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    from micronet_onnx.training.sync_bn import convert_sync_batchnorm

    convert_sync_batchnorm(model, device)
    ids = [device.index] if device.type == "cuda" else None
    # BN buffers are synchronized by construction (global statistics), the EC2T codes are computed
    # from identical weights: nothing to re-broadcast at every forward (check_in_sync verifies it)
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def unwrap(net: nn.Module) -> nn.Module:
    """The model inside a DDP and/or torch.compile wrapper (what checkpoints and EC2T read)."""
    inner = getattr(net, "_orig_mod", net)
    inner = getattr(inner, "module", inner) if type(inner).__name__ == "DistributedDataParallel" else inner
    return getattr(inner, "_orig_mod", inner)
