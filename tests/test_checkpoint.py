"""`Checkpoint`: round trip, the on-disk layout of files written before the type existed, and a
one-line `CheckpointError` naming the field for every malformed field."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from micronet_onnx.model import MicroNetConfig
from micronet_onnx.training import checkpoint as ckpt_mod
from micronet_onnx.training.checkpoint import Checkpoint, CheckpointError, RngState
from micronet_onnx.training.config import TrainConfig
from micronet_onnx.training.ec2t import EC2TConfig, EC2TQuantizer, selected_layers, ternary_layers
from tests.helpers.models import tiny_model

from .conftest import TINY


def _full_checkpoint() -> Checkpoint:
    """A checkpoint with every field set, as training writes it in the EC2T phase (a fresh copy)."""
    return copy.deepcopy(_build_full_checkpoint())


@functools.cache
def _build_full_checkpoint() -> Checkpoint:
    model = tiny_model(ternary=True, seed=2)
    quantizer = EC2TQuantizer(model, EC2TConfig())
    opt = torch.optim.Adam(quantizer.param_groups(model))
    model.train()
    torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).backward()
    opt.step()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return Checkpoint(
        model_config=model.config, state_dict=state, ternary=EC2TConfig(lambda_gain=0.3),
        best_state_dict={k: v.clone() for k, v in state.items()},
        train_config=TrainConfig(**TINY, epochs=2, ternary=True), best={"val_acc": 0.5, "epoch": 3},
        optimizer=opt.state_dict(), scheduler=None, phase="ec2t", phase_epoch=1,
        rng=RngState.capture(torch.Generator().manual_seed(5)),
        metrics=[{"epoch": 1, "train_loss": 2.0}], results={"final": {"test_acc": 0.25}}, complete=False,
    )


def _old_layout(c: Checkpoint) -> dict:
    """The dict `training.loop._save` wrote before `Checkpoint` existed (format 1), spelled out."""
    return {
        "format": "micronet-onnx/checkpoint",
        "version": 1,
        "config": c.train_config.to_dict(),
        "model_config": c.model_config.to_dict(),
        "ternary": c.ternary.to_dict(),
        "state_dict": c.state_dict,
        "best_state_dict": c.best_state_dict,
        "best": c.best,
        "optimizer": c.optimizer,
        "scheduler": c.scheduler,
        "phase": c.phase,
        "phase_epoch": c.phase_epoch,
        "rng": {"torch": c.rng.cpu, "data": c.rng.data},
        "metrics": c.metrics,
        "results": c.results,
        "complete": c.complete,
    }


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_equal, a, b))
    return a == b


def test_round_trip(tmp_path):
    c = _full_checkpoint()
    c.save(tmp_path / "c.pt")
    back = Checkpoint.load(tmp_path / "c.pt")
    assert _equal(back.to_dict(), c.to_dict())
    assert back.model_config == c.model_config and back.ternary == c.ternary and back.train_config == c.train_config
    assert back.is_ternary and back.dataset == "digits" and back.final_test_acc == 0.25
    assert back.weights_name() == "best" and back.weights_name(best=False) == "final"
    x = torch.randn(2, 3, 32, 32)
    ref = tiny_model(ternary=True, seed=2)
    ref.load_state_dict(c.state_dict)
    with torch.no_grad():
        assert torch.equal(back.build_model(best=False)(x), ref.eval()(x))


def test_file_written_before_the_type_loads_and_rewrites_the_same_dict(tmp_path):
    c = _full_checkpoint()
    old = _old_layout(c)
    torch.save(old, tmp_path / "old.pt")
    back = Checkpoint.load(tmp_path / "old.pt")
    new = back.to_dict()
    assert _equal({k: new[k] for k in old}, old)  # every key of the old layout, same values
    # keys added since (format 1 grows only by optional keys) come back empty
    assert set(new) - set(old) <= {"history"} and not new.get("history")
    assert back.rng.cuda is None and back.phase == "ec2t" and back.best == {"val_acc": 0.5, "epoch": 3}


def test_model_only_file_of_the_old_test_helper_loads(tmp_path):
    model = tiny_model(ternary=True)
    torch.save({"format": ckpt_mod.FORMAT, "version": 1, "model_config": model.config.to_dict(),
                "ternary": EC2TConfig().to_dict(), "state_dict": model.state_dict(), "best_state_dict": None},
               tmp_path / "m.pt")
    c = Checkpoint.load(tmp_path / "m.pt")
    assert c.train_config is None and c.dataset is None and c.final_test_acc is None and c.metrics == []
    assert c.weights_name() == "final"
    rebuilt = c.build_model()
    # the default layer filter rebuilds exactly the policy's layers
    assert [n for n, _ in ternary_layers(rebuilt)] == [n for n, _ in selected_layers(tiny_model(ternary=False))]
    with pytest.raises(CheckpointError, match="no training state.*'config'"):
        c.require_training_state()


def test_load_reads_weights_only(tmp_path, monkeypatch):
    _full_checkpoint().save(tmp_path / "c.pt")
    seen = {}
    real = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    Checkpoint.load(tmp_path / "c.pt")
    assert seen.get("weights_only") is True


def _set(d: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        d = d[k]
    if value is _DROP:
        del d[path[-1]]
    else:
        d[path[-1]] = value


_DROP = object()

# (path into the on-disk dict, bad value, the field the error must name)
MALFORMED = [
    (("version",), "1", "version"),
    (("model_config",), _DROP, "model_config"),
    (("model_config",), "micronet", "model_config"),
    (("model_config", "depth"), "deep", "model_config.depth"),
    (("model_config", "num_classes"), 10.0, "model_config.num_classes"),
    (("model_config", "width"), -1.0, "model_config"),
    (("state_dict",), _DROP, "state_dict"),
    (("state_dict",), [1, 2], "state_dict"),
    (("state_dict", "fc.weight"), [1.0], "state_dict['fc.weight']"),
    (("ternary",), 0.15, "ternary"),
    (("ternary", "lambda_gain"), "high", "ternary.lambda_gain"),
    (("ternary", "wn_grad"), "sideways", "ternary"),
    (("best_state_dict",), 3, "best_state_dict"),
    (("config",), "digits", "config"),
    (("config", "epochs"), "many", "config.epochs"),
    (("config", "augment"), 1, "config.augment"),
    (("config", "ec2t"), [0.15], "config.ec2t"),
    (("best",), 0.5, "best"),
    (("best", "val_acc"), "0.5", "best.val_acc"),
    (("best", "epoch"), None, "best.epoch"),
    (("optimizer",), [], "optimizer"),
    (("optimizer", "param_groups"), {}, "optimizer.param_groups"),
    (("optimizer", "state"), None, "optimizer.state"),
    (("scheduler",), "cosine", "scheduler"),
    (("phase",), "warmup", "phase"),
    (("phase_epoch",), "1", "phase_epoch"),
    (("phase_epoch",), -1, "phase_epoch"),
    (("rng",), [1], "rng"),
    (("rng", "torch"), [1, 2], "rng.torch"),
    (("rng", "data"), _DROP, "rng.data"),
    (("rng", "cuda"), 7, "rng.cuda"),
    (("metrics",), {"epoch": 1}, "metrics"),
    (("metrics", 0), 1.5, "metrics[0]"),
    (("history",), {"epoch": 1}, "history"),
    (("results",), [], "results"),
    (("complete",), "yes", "complete"),
]


@pytest.mark.parametrize(("path", "value", "name"), MALFORMED, ids=lambda v: None)
def test_malformed_field_is_one_line_error_naming_it(tmp_path, path, value, name):
    raw = _old_layout(_full_checkpoint())
    _set(raw, path, value)
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        Checkpoint.load(tmp_path / "bad.pt")
    msg = str(info.value)
    assert f"field {name!r}" in msg and "\n" not in msg, msg
    assert str(tmp_path / "bad.pt") in msg


def test_version_from_the_future_and_weights_that_do_not_fit(tmp_path):
    raw = _old_layout(_full_checkpoint())
    torch.save(dict(raw, version=2), tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="version 2, this tool reads <= 1"):
        Checkpoint.load(tmp_path / "new.pt")
    c = Checkpoint.from_dict(raw)
    c.model_config = MicroNetConfig(num_classes=10, depth=0.15, width=1.0)  # widths 16/32/64, not 8/16/32
    with pytest.raises(CheckpointError, match="do not fit its model config"):
        c.build_model()


def test_resume_of_a_model_only_checkpoint_says_so(tmp_path):
    from micronet_onnx.training.loop import train

    model = tiny_model(ternary=False)
    Checkpoint(model_config=model.config, state_dict=model.state_dict()).save(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="no training state"):
        train(TrainConfig(**TINY), tmp_path / "m.pt", resume=True, log=lambda s: None)
