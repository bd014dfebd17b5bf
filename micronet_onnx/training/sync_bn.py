"""Synchronized BatchNorm: batch statistics over the global batch of all ranks.

With ``--batch-size`` global (`distributed.py`), BatchNorm must normalise over the global batch,
or a run's result would depend on how many ranks share it. On CUDA that is torch's own
``nn.SyncBatchNorm``. torch's SyncBatchNorm refuses CPU tensors, so on the CPU (gloo) it is
`CpuSyncBatchNorm`: the same arithmetic in plain torch ops with two all-reduces per layer (the
per-channel sums and sums of squares forward; the sums of the gradient and of gradient * x_hat
backward). A rank with an empty shard still takes part in both, so no rank waits forever.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _SyncBatchNorm2d(torch.autograd.Function):
    """Training-mode BatchNorm over the batches of all ranks (float32 maths, float64 sums)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps: float, momentum: float):  # type: ignore[override]
        c = x.shape[1]
        x32 = x.float()
        dims = (0, 2, 3)
        local = torch.cat([x32.sum(dims, dtype=torch.float64), (x32 * x32).sum(dims, dtype=torch.float64),
                           torch.tensor([x32.numel() // max(c, 1)], dtype=torch.float64, device=x.device)])
        dist.all_reduce(local)
        total, count = local[: 2 * c], float(local[-1])
        mean = total[:c] / max(count, 1.0)
        var = (total[c:] / max(count, 1.0) - mean * mean).clamp_min(0.0)
        invstd = (var + eps).rsqrt().float()
        x_hat = (x32 - mean.float().view(1, c, 1, 1)) * invstd.view(1, c, 1, 1)
        y = x_hat * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)
        with torch.no_grad():
            unbiased = var * (count / (count - 1)) if count > 1 else var
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        ctx.save_for_backward(x_hat, invstd, weight)
        ctx.count = count
        ctx.in_dtype = x.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x_hat, invstd, weight = ctx.saved_tensors
        c = x_hat.shape[1]
        g32 = g.float()
        dims = (0, 2, 3)
        sum_g = g32.sum(dims)
        sum_gx = (g32 * x_hat).sum(dims)
        both = torch.cat([sum_g, sum_gx])
        dist.all_reduce(both)
        n = max(ctx.count, 1.0)
        mean_g, mean_gx = (both[:c] / n).view(1, c, 1, 1), (both[c:] / n).view(1, c, 1, 1)
        grad_x = (g32 - mean_g - x_hat * mean_gx) * (invstd * weight).view(1, c, 1, 1)
        # parameter gradients stay local: DDP averages them over ranks like every other parameter
        return grad_x.to(ctx.in_dtype), sum_gx.to(weight.dtype), sum_g.to(weight.dtype), None, None, None, None


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics span all ranks (`_SyncBatchNorm2d`); in eval
    mode, or without a process group, exactly ``nn.BatchNorm2d``. Same state dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        assert self.running_mean is not None and self.running_var is not None and self.momentum is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        weight = self.weight if self.weight is not None else torch.ones_like(self.running_mean)
        bias = self.bias if self.bias is not None else torch.zeros_like(self.running_mean)
        return _SyncBatchNorm2d.apply(x, weight, bias, self.running_mean, self.running_var, self.eps, self.momentum)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Swap every ``nn.BatchNorm2d`` of ``model`` (in place) for its synchronized form, sharing the
    parameters and buffers (the optimizer's references stay valid): torch's ``nn.SyncBatchNorm`` on
    CUDA, `CpuSyncBatchNorm` elsewhere. Layers converted already are left alone."""
    for name, bn in list(model.named_modules()):
        if type(bn) is not nn.BatchNorm2d:
            continue
        if device.type == "cuda":
            new: nn.Module = nn.SyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        else:
            new = CpuSyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        new.weight, new.bias = bn.weight, bn.bias
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
        new.train(bn.training)
        model.set_submodule(name, new)
    return model
