"""`TrainConfig`: every setting of a training run, stored in its checkpoint so ``resume`` needs only
the checkpoint; and the phases a run goes through."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from micronet_onnx.training.ec2t import EC2TConfig

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

    def validate(self) -> TrainConfig:
        if self.epochs < 0 or self.ternary_epochs < 0 or self.freeze_epochs < 0:
            raise ValueError("epoch counts must be non-negative")
        if self.batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
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
