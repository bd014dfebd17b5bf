"""`Checkpoint`: the one owner of the checkpoint file layout.

On disk a checkpoint is a plain dict of tensors and primitives (so it is read with
``torch.load(weights_only=True)`` and opening one never runs code from the file), written
atomically. Its keys (format 1, unchanged since the first release; `Checkpoint.to_dict`):

    format, version       "micronet-onnx/checkpoint", 1
    config                TrainConfig as a dict (None for a checkpoint not written by training)
    model_config          MicroNetConfig as a dict
    ternary               EC2TConfig as a dict, or None for a full-precision model
    state_dict            the current weights
    best_state_dict       the best-on-validation weights of the current phase, or None
    best                  {"val_acc": float, "epoch": int} of those, or None
    optimizer, scheduler  their state dicts, or None
    phase, phase_epoch    where the run stands: epochs done in that phase
    rng                   {"torch": ByteTensor, "data": ByteTensor[, "cuda": [ByteTensor]]}
    metrics, results      per-epoch rows and per-phase summaries (plain data)
    history               per-epoch full records for plots (learning rates, lambda, centroids
                          besides the metrics row); absent in older files, read as []
    complete              whether the run has finished

`Checkpoint.load` checks the type of every field and raises a one-line `CheckpointError` naming
the field, so a damaged or hand-made file never surfaces as a KeyError or TypeError deep inside
training, export or benchmarking.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from micronet_onnx.fileio import atomic_writer
from micronet_onnx.model import MicroNet, MicroNetConfig
from micronet_onnx.training.config import PHASES, TrainConfig, check_model_size
from micronet_onnx.training.ec2t import EC2TConfig, ternarize_model

FORMAT = "micronet-onnx/checkpoint"
VERSION = 1

StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, not ours, or has a malformed field."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _kind(value: Any) -> str:
    return "None" if value is None else type(value).__name__


@dataclass
class RngState:
    """The random generators a run draws from: torch's global one (weight init, dropout), the data
    generator (shuffling, augmentation) and, where present, CUDA's."""

    cpu: torch.Tensor  # on disk: "torch"
    data: torch.Tensor
    cuda: list[torch.Tensor] | None = None

    @classmethod
    def capture(cls, gen: torch.Generator, *, cuda: bool = True) -> RngState:
        """The current state of all of them (``gen`` is the data generator); ``cuda=False`` leaves the
        CUDA generators out (under DDP, where each rank re-seeds them per epoch and reading all of them
        would open a context on every GPU from every rank)."""
        cuda_states = torch.cuda.get_rng_state_all() if cuda and torch.cuda.is_available() else None
        return cls(cpu=torch.get_rng_state(), data=gen.get_state(), cuda=cuda_states)

    def restore(self, gen: torch.Generator) -> None:
        torch.set_rng_state(self.cpu)
        gen.set_state(self.data)
        if self.cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.cuda)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"torch": self.cpu, "data": self.data}
        if self.cuda is not None:
            out["cuda"] = self.cuda
        return out


@dataclass
class Checkpoint:
    """Everything a training run, an export or a benchmark reads from a checkpoint.

    Only ``model_config`` and ``state_dict`` are needed to rebuild the model; the rest is training
    state, present in files written by `micronet_onnx.training.loop` (``require_training_state``).
    """

    model_config: MicroNetConfig
    state_dict: StateDict
    ternary: EC2TConfig | None = None  # None: full precision; else rebuilt with the default layer filter
    best_state_dict: StateDict | None = None
    train_config: TrainConfig | None = None  # on disk: "config"
    best: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    phase: str | None = None
    phase_epoch: int = 0
    rng: RngState | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    complete: bool = False

    # ---- file layout ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The on-disk dict (the layout in the module docstring)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "config": self.train_config.to_dict() if self.train_config is not None else None,
            "model_config": self.model_config.to_dict(),
            "ternary": self.ternary.to_dict() if self.ternary is not None else None,
            "state_dict": self.state_dict,
            "best_state_dict": self.best_state_dict,
            "best": self.best,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "phase": self.phase,
            "phase_epoch": self.phase_epoch,
            "rng": self.rng.to_dict() if self.rng is not None else None,
            "metrics": self.metrics,
            "history": self.history,
            "results": self.results,
            "complete": self.complete,
        }

    @classmethod
    def from_dict(cls, raw: Any, source: str = "checkpoint") -> Checkpoint:
        """Check and convert an on-disk dict; `CheckpointError` names the first malformed field."""
        return _Reader(source).checkpoint(raw)

    def save(self, path: str | Path) -> None:
        """Write atomically, so a run killed mid-write leaves the previous checkpoint intact."""
        with atomic_writer(path) as f:
            torch.save(self.to_dict(), f)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read (``weights_only=True``, on the CPU) and check a checkpoint."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(e)}") from None
        return cls.from_dict(raw, source=str(path))

    # ---- what the file holds ----------------------------------------------------------------
    @property
    def is_ternary(self) -> bool:
        return self.ternary is not None

    @property
    def dataset(self) -> str | None:
        """The dataset the run trained on (None when the file has no training config)."""
        return self.train_config.dataset if self.train_config is not None else None

    @property
    def final_test_acc(self) -> float | None:
        """PyTorch's top-1 test accuracy of the finished run's selected weights, if recorded."""
        final = self.results.get("final")
        acc = final.get("test_acc") if isinstance(final, dict) else None
        return acc if isinstance(acc, float) else None

    def weights_name(self, best: bool = True) -> str:
        """``"best"`` when ``best`` and the file holds best-on-validation weights, else ``"final"``."""
        return "best" if best and self.best_state_dict is not None else "final"

    def weights(self, best: bool = True) -> StateDict:
        """The state dict `weights_name` names."""
        if self.weights_name(best) == "best":
            assert self.best_state_dict is not None
            return self.best_state_dict
        return self.state_dict

    def load_weights(self, model: nn.Module, *, best: bool = True) -> None:
        """``model.load_state_dict`` of `weights`, a mismatch reported as a one-line `CheckpointError`."""
        try:
            model.load_state_dict(self.weights(best))
        except (RuntimeError, TypeError, AttributeError, KeyError) as e:
            raise CheckpointError(f"checkpoint weights do not fit its model config: {_first_line(e)}") from None

    def build_model(self, *, best: bool = True) -> MicroNet:
        """The model the checkpoint holds, in eval mode (the selected weights when ``best``).

        A ternary checkpoint is rebuilt with `ternarize_model`'s default layer filter, the one
        training uses."""
        model = MicroNet(self.model_config)
        if self.ternary is not None:
            ternarize_model(model, self.ternary)
        self.load_weights(model, best=best)
        return model.eval()

    def require_training_state(self) -> None:
        """Raise `CheckpointError` unless the file holds what ``resume`` needs."""
        for name in ("train_config", "best", "phase", "rng"):
            if getattr(self, name) is None:
                key = "config" if name == "train_config" else name
                raise CheckpointError(f"checkpoint has no training state to resume from (field {key!r} is empty)")


def load_model(path: str | Path, *, best: bool = True) -> tuple[MicroNet, Checkpoint]:
    """Convenience: (eval-mode model, checkpoint) of the file at ``path``."""
    ckpt = Checkpoint.load(path)
    return ckpt.build_model(best=best), ckpt


class _Reader:
    """Type checks of the on-disk dict, each failure one `CheckpointError` naming the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, name: str, problem: str) -> typing.NoReturn:
        raise CheckpointError(f"{self.source}: malformed checkpoint field {name!r}: {problem}")

    def checkpoint(self, raw: Any) -> Checkpoint:
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise CheckpointError(f"{self.source} is not a micronet-onnx checkpoint")
        version = raw.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            self.fail("version", f"expected an int, got {_kind(version)}")
        if version > VERSION:
            raise CheckpointError(f"{self.source} has checkpoint version {version}, this tool reads <= {VERSION}")
        if "model_config" not in raw:
            self.fail("model_config", "missing")
        if "state_dict" not in raw:
            self.fail("state_dict", "missing")
        ternary = raw.get("ternary")
        config = raw.get("config")
        return Checkpoint(
            model_config=self.config(MicroNetConfig, raw["model_config"], "model_config", validate=True),
            state_dict=self.state_dict(raw["state_dict"], "state_dict"),
            ternary=None if ternary is None else self.config(EC2TConfig, ternary, "ternary", validate=True),
            best_state_dict=self.optional(raw, "best_state_dict", self.state_dict),
            train_config=None if config is None else self.config(TrainConfig, config, "config", validate=False),
            best=self.optional(raw, "best", self.best),
            optimizer=self.optional(raw, "optimizer", self.optimizer),
            scheduler=self.optional(raw, "scheduler", self.plain_dict),
            phase=self.optional(raw, "phase", self.phase),
            phase_epoch=self.count(raw.get("phase_epoch", 0), "phase_epoch"),
            rng=self.optional(raw, "rng", self.rng),
            metrics=self.metrics(raw.get("metrics", []), "metrics"),
            history=self.metrics(raw.get("history", []), "history"),
            results=self.plain_dict(raw.get("results", {}), "results"),
            complete=self.flag(raw.get("complete", False), "complete"),
        )

    def optional(self, raw: dict, key: str, check: typing.Callable[[Any, str], Any]) -> Any:
        value = raw.get(key)
        return None if value is None else check(value, key)

    # -- leaves
    def plain_dict(self, value: Any, name: str) -> dict:
        if not isinstance(value, dict):
            self.fail(name, f"expected a dict, got {_kind(value)}")
        return value

    def flag(self, value: Any, name: str) -> bool:
        if not isinstance(value, bool):
            self.fail(name, f"expected a bool, got {_kind(value)}")
        return value

    def count(self, value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, f"expected an int, got {_kind(value)}")
        if value < 0:
            self.fail(name, f"expected a non-negative int, got {value}")
        return value

    def tensor(self, value: Any, name: str) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            self.fail(name, f"expected a tensor, got {_kind(value)}")
        return value

    def state_dict(self, value: Any, name: str) -> StateDict:
        self.plain_dict(value, name)
        for k, v in value.items():
            if not isinstance(k, str):
                self.fail(name, f"expected str keys, got a {_kind(k)} key")
            self.tensor(v, f"{name}[{k!r}]")
        return value

    def phase(self, value: Any, name: str) -> str:
        if value not in PHASES:
            self.fail(name, f"expected one of {', '.join(PHASES)}, got {value!r}")
        return value

    def best(self, value: Any, name: str) -> dict:
        self.plain_dict(value, name)
        for key, ok, what in (("val_acc", (int, float), "a number"), ("epoch", (int,), "an int")):
            v = value.get(key)
            if isinstance(v, bool) or not isinstance(v, ok):
                self.fail(f"{name}.{key}", f"expected {what}, got {_kind(v)}")
        return value

    def optimizer(self, value: Any, name: str) -> dict:
        self.plain_dict(value, name)
        self.plain_dict(value.get("state"), f"{name}.state")
        if not isinstance(value.get("param_groups"), list):
            self.fail(f"{name}.param_groups", f"expected a list, got {_kind(value.get('param_groups'))}")
        return value

    def metrics(self, value: Any, name: str) -> list:
        if not isinstance(value, list):
            self.fail(name, f"expected a list, got {_kind(value)}")
        for i, row in enumerate(value):
            self.plain_dict(row, f"{name}[{i}]")
        return value

    def rng(self, value: Any, name: str) -> RngState:
        self.plain_dict(value, name)
        cuda = value.get("cuda")
        if cuda is not None:
            if not isinstance(cuda, (list, tuple)):
                self.fail(f"{name}.cuda", f"expected a list of tensors, got {_kind(cuda)}")
            cuda = [self.tensor(t, f"{name}.cuda[{i}]") for i, t in enumerate(cuda)]
        return RngState(cpu=self.tensor(value.get("torch"), f"{name}.torch"),
                        data=self.tensor(value.get("data"), f"{name}.data"), cuda=cuda)

    # -- config dataclasses: each present key checked against the field's annotation
    def config(self, cls: type, value: Any, name: str, *, validate: bool) -> Any:
        self.plain_dict(value, name)
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name in value and not _fits(value[f.name], hints[f.name]):
                self.fail(f"{name}.{f.name}", f"expected {_type_name(hints[f.name])}, got {_kind(value[f.name])}")
        try:
            cfg = cls.from_dict(value)
            if validate:
                cfg.validate()
            if cls is MicroNetConfig:  # a billion classes is refused before the model is built
                check_model_size(cfg)
            return cfg
        except (TypeError, ValueError) as e:
            self.fail(name, _first_line(e))


def _fits(value: Any, annotation: Any) -> bool:
    """Whether ``value`` has the type a config field is annotated with (int counts as float)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(_fits(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation) or annotation
    if origin is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if origin is float:
        return isinstance(value, (int, float))
    return isinstance(value, origin)


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    return getattr(typing.get_origin(annotation) or annotation, "__name__", str(annotation))
