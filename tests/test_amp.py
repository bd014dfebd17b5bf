"""``--amp bf16`` (and ``--channels-last``) run real training steps on the CPU; EC2T stays float32."""

from __future__ import annotations

import torch

from micronet_onnx.training.checkpoint import Checkpoint
from micronet_onnx.training.loop import TrainConfig, train

from .conftest import TINY


def test_bf16_channels_last_ec2t_runs_and_keeps_float32_state(tmp_path):
    cfg = TrainConfig(**TINY, epochs=1, batch_size=64, lr=0.05, val_fraction=0.8, ternary=True, ternary_epochs=1,
                      freeze_epochs=0, amp="bf16", channels_last=True)
    out = tmp_path / "bf16.pt"
    results = train(cfg, out, log=lambda s: None, progress=False)
    ckpt = Checkpoint.load(out)
    assert ckpt.complete and ckpt.train_config.amp == "bf16"
    assert all(v.dtype in (torch.float32, torch.int8, torch.int64) for v in ckpt.state_dict.values())
    assert all(v.is_contiguous() for v in ckpt.state_dict.values())
    codes = [v for k, v in ckpt.state_dict.items() if k.endswith("codes")]
    assert codes and all(set(c.unique().tolist()) <= {-1, 0, 1} for c in codes)
    assert 0 <= results["final"]["test_acc"] <= 1
