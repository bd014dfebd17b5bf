"""DDP under torchrun on the CPU (gloo, 2 ranks): the same result as one process with the same global
batch and seed, identical EC2T state on every rank after every step (``--check-sync``), resume across
a change of world size, and a checkpoint without rank-specific state or DDP prefixes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from micronet_onnx.training import distributed
from micronet_onnx.training.checkpoint import Checkpoint
from micronet_onnx.training.loop import TrainConfig, train

from .conftest import TINY

TORCHRUN = Path(sys.executable).with_name("torchrun")
# a few steps per epoch: 10 % of the digits train on, batch 32 (global)
ARGS = dict(TINY, dropout=0.0, epochs=1, batch_size=32, lr=0.05, seed=3, val_fraction=0.9, ternary=True,
            ternary_epochs=1, freeze_epochs=1)


def _flags(cfg: dict) -> list[str]:
    out = ["--model", cfg["model"], "--depth", str(cfg["depth"]), "--width", str(cfg["width"])]
    for k in ("dropout", "epochs", "batch_size", "lr", "seed", "val_fraction", "ternary_epochs", "freeze_epochs"):
        out += ["--" + k.replace("_", "-"), str(cfg[k])]
    return out + ["--ternary"]


def _torchrun(args: list[str], n: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in distributed.ENV_VARS:
        env.pop(k, None)
    cmd = [str(TORCHRUN), "--nproc-per-node", str(n), "--standalone", "-m", "micronet_onnx", "train", *args]
    # Its own session, so that a timeout takes the ranks down with torchrun (killing torchrun alone
    # leaves them waiting in a collective for ever).
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _close(a: dict, b: dict, codes_tol: float = 0.002) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].dtype == torch.int8:  # assignments: a weight on a threshold may flip by float rounding
            assert (a[k] != b[k]).float().mean() <= codes_tol, k
        elif a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def test_shard_slices_cover_the_batch():
    for n in (0, 1, 5, 32):
        parts = [distributed.shard_slice(n, r, 3) for r in range(3)]
        assert [i for p in parts for i in range(n)[p]] == list(range(n))


def test_shards_of_a_batch_are_the_single_process_batch(digits):
    from micronet_onnx.data import AugmentConfig, make_batch

    idx = torch.arange(7)
    aug = AugmentConfig()
    whole, _ = make_batch(digits.train, idx, digits, aug, torch.Generator().manual_seed(1))
    parts = [make_batch(digits.train, idx, digits, aug, torch.Generator().manual_seed(1),
                        distributed.shard_slice(7, r, 2))[0] for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside python")
def test_ddp_two_ranks_matches_one_process_and_stays_in_sync(tmp_path):
    single = tmp_path / "single.pt"
    train(TrainConfig(**ARGS), single, log=lambda s: None, progress=False)
    ddp = tmp_path / "ddp.pt"
    r = _torchrun(["-o", str(ddp), "--check-sync", "-q", *_flags(ARGS)])
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = Checkpoint.load(single), Checkpoint.load(ddp)
    assert b.complete and not any(k.startswith("module.") for k in b.state_dict)
    for ra, rb in zip(a.metrics, b.metrics):  # the same global batches: the same losses
        assert abs(ra["train_loss"] - rb["train_loss"]) <= 2e-3 * abs(ra["train_loss"])


@pytest.mark.xfail(reason="open: after 4 SGD steps the 2-rank weights differ from one process by ~1e-3 "
                   "(losses agree to 1e-4); not yet traced to rounding or a real difference", strict=False)
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside python")
def test_ddp_weights_match_one_process_within_float_tolerance(tmp_path):
    cfg = dict(ARGS, ternary=False)
    single = tmp_path / "single.pt"
    train(TrainConfig(**cfg), single, log=lambda s: None, progress=False)
    ddp = tmp_path / "ddp.pt"
    flags = [f for f in _flags(cfg) if f != "--ternary"]
    r = _torchrun(["-o", str(ddp), "-q", *flags])
    assert r.returncode == 0, r.stderr[-3000:]
    _close(Checkpoint.load(single).state_dict, Checkpoint.load(ddp).state_dict)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside python")
def test_resume_under_torchrun_across_world_size(tmp_path, monkeypatch):
    from micronet_onnx.training import loop

    full = tmp_path / "full.pt"
    train(TrainConfig(**ARGS), full, log=lambda s: None, progress=False)
    part = tmp_path / "part.pt"
    real, calls = loop._train_epoch, {"n": 0}

    def stop_after_one(*a, **k):
        if calls["n"] == 1:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(loop, "_train_epoch", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**ARGS), part, log=lambda s: None, progress=False)
    assert not Checkpoint.load(part).complete
    r = _torchrun(["-o", str(part), "--resume", "--check-sync", "-q"])  # 1 process -> 2 ranks
    assert r.returncode == 0, r.stderr[-3000:]
    done = Checkpoint.load(part)
    assert done.complete and [m["epoch"] for m in done.metrics] == [1, 2, 3]
    first = Checkpoint.load(full).metrics[0]  # the epoch before the kill, kept as written
    assert (done.metrics[0]["train_loss"], done.metrics[0]["val_acc"]) == (first["train_loss"], first["val_acc"])
