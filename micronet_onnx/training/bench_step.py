"""Benchmark: one EC2T training step against one full-precision step on the same model and batch.

Both steps are timed interleaved in one process (so machine noise hits both alike) and the median
of each is reported with their ratio; the EC2T step's per-step extras (centroid floor and
re-assignment) are timed on their own too. The target is an EC2T/full-precision ratio <= 1.2.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F

from micronet_onnx.model import MicroNet, MicroNetConfig
from micronet_onnx.training.ec2t import EC2TConfig, EC2TQuantizer, ternarize_model
from micronet_onnx.training.precision import Precision


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_ec2t_step(config: MicroNetConfig, batch_size: int = 32, repeats: int = 10, warmup: int = 2,
                    device: str = "cpu", seed: int = 0, amp: str = "off") -> dict:
    """Median seconds per full-precision step, per EC2T step and per EC2T after-step update (forward
    and loss under ``--amp``'s autocast, as in training; the EC2T update stays float32)."""
    dev = torch.device(device)
    precision = Precision(amp=amp, device_type=dev.type).check()
    torch.manual_seed(seed)
    fp_model = MicroNet(config).to(dev).train()
    tern_model = ternarize_model(copy.deepcopy(fp_model), EC2TConfig()).to(dev).train()
    quantizer = EC2TQuantizer(tern_model, EC2TConfig())
    fp_opt = torch.optim.SGD(fp_model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    tern_opt = torch.optim.Adam(quantizer.param_groups(tern_model))
    x = torch.randn(batch_size, config.in_channels, 32, 32, device=dev)
    y = torch.randint(0, config.num_classes, (batch_size,), device=dev)

    def fp_step() -> None:
        fp_opt.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = F.cross_entropy(fp_model(x), y)
        loss.backward()
        fp_opt.step()

    def ec2t_step() -> float:
        tern_opt.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = F.cross_entropy(tern_model(x), y)
        loss.backward()
        tern_opt.step()
        _sync(dev)
        t = time.perf_counter()
        quantizer.after_step()
        _sync(dev)
        return time.perf_counter() - t

    for _ in range(warmup):
        fp_step()
        ec2t_step()
    fp_times, ec2t_times, extra_times = [], [], []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        fp_step()
        _sync(dev)
        t1 = time.perf_counter()
        extra = ec2t_step()
        _sync(dev)
        t2 = time.perf_counter()
        fp_times.append(t1 - t0)
        ec2t_times.append(t2 - t1)
        extra_times.append(extra)
    fp_med, ec2t_med = statistics.median(fp_times), statistics.median(ec2t_times)
    return {
        "model": config.to_dict(),
        "ternary_layers": len(quantizer.layers),
        "batch_size": batch_size,
        "repeats": repeats,
        "device": str(dev),
        "amp": amp,
        "images_per_s": {"fp": batch_size / fp_med, "ec2t": batch_size / ec2t_med},
        "threads": torch.get_num_threads(),
        "fp_step_s": fp_med,
        "ec2t_step_s": ec2t_med,
        "ec2t_update_s": statistics.median(extra_times),
        "ratio": ec2t_med / fp_med,
    }


def render(report: dict) -> str:
    m = report["model"]
    return "\n".join([
        f"model depth {m['depth']:.4g} width {m['width']:.4g} ({report['ternary_layers']} ternary layers), "
        f"batch {report['batch_size']}, {report['device']}, amp {report.get('amp', 'off')}, "
        f"{report['threads']} threads, "
        f"median of {report['repeats']}",
        f"  full-precision step  {report['fp_step_s'] * 1e3:9.2f} ms"
        f"  ({report['batch_size'] / report['fp_step_s']:.0f} images/s)",
        f"  EC2T step            {report['ec2t_step_s'] * 1e3:9.2f} ms"
        f"  (of which floor + re-assignment {report['ec2t_update_s'] * 1e3:.2f} ms)",
        f"  ratio EC2T / fp      {report['ratio']:9.3f}   (target <= 1.2)",
    ])
