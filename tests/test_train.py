import pytest
import torch

from micronet_onnx.model import MicroNetConfig
from micronet_onnx.training import checkpoint
from micronet_onnx.training import loop as train_mod
from micronet_onnx.training.checkpoint import Checkpoint
from micronet_onnx.training.loop import TrainConfig, train

from .conftest import TINY


def _cfg(**kw):
    base = dict(TINY, epochs=3, batch_size=64, lr=0.05, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def test_training_learns_digits(tmp_path):
    out = tmp_path / "fp.pt"
    results = train(_cfg(epochs=4), out, log=lambda s: None)
    ckpt = Checkpoint.load(out)
    losses = [m["train_loss"] for m in ckpt.metrics]
    assert losses[-1] < losses[0] * 0.8
    assert results["fp"]["val_acc"] > 0.3 and results["fp"]["test_acc"] > 0.3  # chance is 0.1
    assert ckpt.complete and ckpt.ternary is None
    # weights_only=True is how every checkpoint is read
    raw = torch.load(out, weights_only=True)
    assert raw["format"] == checkpoint.FORMAT


class Interrupt(Exception):
    pass


def _interrupt_after(monkeypatch, n_epochs):
    real = train_mod._train_epoch
    calls = {"n": 0}

    def fake(*args, **kwargs):
        if calls["n"] == n_epochs:
            raise Interrupt()
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_train_epoch", fake)


def _same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("stop_after", [1, 3, 4])
def test_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch, stop_after):
    # 2 fp epochs, 2 EC2T epochs, 1 frozen epoch; interrupt inside fp, at the ec2t boundary, inside ec2t
    cfg = _cfg(epochs=2, ternary=True, ternary_epochs=2, freeze_epochs=1)
    full = tmp_path / "full.pt"
    train(cfg, full, log=lambda s: None)

    part = tmp_path / "part.pt"
    with monkeypatch.context() as m:
        _interrupt_after(m, stop_after)
        with pytest.raises(Interrupt):
            train(cfg, part, log=lambda s: None)
    assert Checkpoint.load(part).complete is False
    train(cfg, part, resume=True, log=lambda s: None)

    a, b = Checkpoint.load(full), Checkpoint.load(part)
    _same_state(a.state_dict, b.state_dict)
    _same_state(a.best_state_dict, b.best_state_dict)
    assert a.results["final"]["test_acc"] == b.results["final"]["test_acc"]


def test_save_atomic_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    Checkpoint(model_config=MicroNetConfig(), state_dict={"x": torch.ones(2)}).save(path)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        Checkpoint(model_config=MicroNetConfig(), state_dict={"x": torch.zeros(2)}).save(path)
    assert torch.equal(Checkpoint.load(path).state_dict["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        Checkpoint.load(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="cannot read"):
        Checkpoint.load(tmp_path / "junk.pt")
    torch.save({"something": 1}, tmp_path / "foreign.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a micronet-onnx checkpoint"):
        Checkpoint.load(tmp_path / "foreign.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": checkpoint.FORMAT, "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(checkpoint.CheckpointError, match="cannot read"):
        Checkpoint.load(tmp_path / "evil.pt")
