"""`TrainConfig`: every setting of a training run, stored in its checkpoint so ``resume`` needs only
the checkpoint; and the phases a run goes through."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields

from micronet_onnx.model import MicroNetConfig
from micronet_onnx.training.ec2t import EC2TConfig
from micronet_onnx.training.precision import AMP_CHOICES

# Bounds checked before anything is allocated (documented in README, "Using it").
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1 << 16
MAX_PARAMETERS = 200_000_000  # 50x a paper-scale C100 MicroNet; about 3.2 GB of weights + Adam state
BYTES_PER_PARAMETER = 16  # weight, gradient and two optimizer moments, float32
MAX_VAL_FRACTION = 0.99  # --val-fraction must leave images to train on

# full-precision pre-training, EC2T (assignment re-computed every step), assignment frozen
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
    # speed settings (`precision.py`); older checkpoints lack them and read the defaults
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False

    def validate(self) -> TrainConfig:
        """Every field in range (also for a config read back from a checkpoint on ``resume``): finite
        numbers, bounded counts, a validation share that leaves images to train on."""
        _check_finite(self)
        for name in ("epochs", "ternary_epochs", "freeze_epochs"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_EPOCHS:
                raise ValueError(f"epoch counts must be in [0, {MAX_EPOCHS}], got {name}={value}")
        if not 0 < self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch size must be in [1, {MAX_BATCH_SIZE}], got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.val_fraction <= MAX_VAL_FRACTION:
            raise ValueError(f"val fraction must be in [0, {MAX_VAL_FRACTION}] (images must be left to train on), "
                             f"got {self.val_fraction}")
        for name in ("depth", "width"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 20:
                raise ValueError(f"{name} must be in (0, 20], got {value}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
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


def _check_finite(cfg: TrainConfig) -> None:
    """NaN or infinity in any float setting (the EC2T ones included) would train a NaN model silently."""
    values = [(f.name, getattr(cfg, f.name)) for f in fields(cfg)]
    values += [(f"ec2t.{k}", v) for k, v in (cfg.ec2t or {}).items()]
    for name, value in values:
        if isinstance(value, float) and not math.isfinite(value):
            flag = "--" + name.split(".")[-1].replace("_", "-")
            raise ValueError(f"{flag} must be a finite number, got {value}")


def parameter_count(model_cfg: MicroNetConfig) -> int:
    """Parameters of the model ``model_cfg`` describes, computed from its shape (nothing is built: a
    billion-class or depth-20 config must be refused without allocating it). Within a few per cent of
    ``sum(p.numel())`` of the built model (BN and shortcut terms included; tested)."""
    n = model_cfg.blocks_per_stage
    widths = model_cfg.widths
    total = 9 * model_cfg.in_channels * widths[0] + 2 * widths[0]  # stem conv + its BN
    cin = widths[0]
    for stage, c in enumerate(widths):
        for j in range(n):
            stride = 2 if stage > 0 and j == 0 else 1
            total += 2 * cin + 9 * cin * c + 2 * c + 9 * c * c + 2 * c  # bn1, conv1, bn2, conv2, bn3
            if stride != 1 or cin != c:
                total += cin * c + 2 * c  # 1x1 shortcut + BN
            cin = c
    return total + 2 * cin + cin * model_cfg.num_classes + model_cfg.num_classes  # head BN, fc


def available_memory() -> int | None:
    """Bytes of memory available now (None where the platform does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_model_size(model_cfg: MicroNetConfig) -> int:
    """Refuse a model (a --depth/--width or a checkpoint's class count) above `MAX_PARAMETERS` or
    larger than the memory available, before it is built; returns its parameter count."""
    if model_cfg.num_classes > 1 << 20:
        raise ValueError(f"num_classes {model_cfg.num_classes} is above the bound {1 << 20}")
    count = parameter_count(model_cfg)
    need = count * BYTES_PER_PARAMETER
    free = available_memory()
    if count > MAX_PARAMETERS:
        raise ValueError(f"the model has {count:,} parameters, above the bound of {MAX_PARAMETERS:,} "
                         f"(about {need / 1e9:.1f} GB to train); choose a smaller --depth/--width")
    if free is not None and need > free:
        raise ValueError(f"the model has {count:,} parameters, about {need / 1e9:.1f} GB to train, but only "
                         f"{free / 1e9:.1f} GB of memory is available")
    return count
