"""MicroNet-C10 / MicroNet-C100: compound-scaled ResNet-44 with PyramidNet-order blocks.

Architecture facts are from the EC2T paper's Appendix A and the authors' code
(`../shared/paper/ec2t-reference.md`): a block is
``BN3(conv2(Dropout(ReLU(BN2(conv1(BN1(x))))))) + shortcut(x)`` with nothing after the add, and a
1x1 conv + BN shortcut where stride or width changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

PHI_PAPER = 3.5
DEPTH_BASE = 1.4
WIDTH_BASE = 1.2
BASE_BLOCKS = 7
BASE_WIDTHS = (16, 32, 64)

# name -> (depth multiplier, width multiplier, classes the preset is meant for)
PRESETS: dict[str, tuple[float, float, int | None]] = {
    "micronet-c10": (DEPTH_BASE**PHI_PAPER, WIDTH_BASE**PHI_PAPER, 10),
    "micronet-c100": (DEPTH_BASE**PHI_PAPER, WIDTH_BASE**PHI_PAPER, 100),
    "baseline": (1.0, 1.0, None),  # ResNet-44 widths/depth with MicroNet blocks
    "micronet": (1.0, 1.0, None),  # custom scale: set --depth/--width
}


def round_channels(f: float, divisor: int = 8) -> int:
    """EfficientNet's rule: nearest multiple of ``divisor``, never below 90 % of ``f``."""
    new = max(divisor, int(f + divisor / 2) // divisor * divisor)
    if new < 0.9 * f:
        new += divisor
    return new


@dataclass(frozen=True)
class MicroNetConfig:
    """Everything that determines a MicroNet's shape; stored in checkpoints as a plain dict."""

    num_classes: int = 10
    depth: float = 1.0
    width: float = 1.0
    dropout: float = 0.2
    in_channels: int = 3

    @property
    def blocks_per_stage(self) -> int:
        return math.ceil(BASE_BLOCKS * self.depth - 1e-9)

    @property
    def widths(self) -> tuple[int, int, int]:
        return tuple(round_channels(c * self.width) for c in BASE_WIDTHS)  # type: ignore[return-value]

    def validate(self) -> MicroNetConfig:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if not (0 < self.depth <= 20):
            raise ValueError(f"depth must be in (0, 20], got {self.depth}")
        if not (0 < self.width <= 20):
            raise ValueError(f"width must be in (0, 20], got {self.width}")
        if not (0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MicroNetConfig:
        return cls(**{k: d[k] for k in ("num_classes", "depth", "width", "dropout", "in_channels") if k in d})


def preset_config(name: str, num_classes: int, depth: float | None = None, width: float | None = None,
                  dropout: float = 0.2) -> MicroNetConfig:
    """Resolve a preset name plus optional overrides into a config."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)}")
    d, w, classes = PRESETS[name]
    if classes is not None and classes != num_classes:
        raise ValueError(f"model {name} is for {classes} classes but the dataset has {num_classes}")
    return MicroNetConfig(
        num_classes=num_classes,
        depth=d if depth is None else depth,
        width=w if width is None else width,
        dropout=dropout,
    ).validate()


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class Shortcut(nn.Module):
    """1x1 strided conv + BN, used where stride or width changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ConvBN(NamedTuple):
    """A conv of a block and the norm applied to its output, with their attribute paths in the block.

    ``bn`` is the module, not necessarily an ``nn.BatchNorm2d``: export's float16 reference swaps it
    for a per-channel affine with ``block.set_submodule(bn_name, ...)``.
    """

    name: str  # path of the conv inside its block: "conv1", "conv2", "shortcut.conv"
    conv: nn.Conv2d
    bn: nn.Module
    bn_name: str  # path of the norm inside its block: "bn2", "bn3", "shortcut.bn"


class BlockConv(NamedTuple):
    """A conv inside MicroNet's blocks, named as in ``model.named_modules()``."""

    name: str  # e.g. "stage2.0.conv1"
    stage: int  # 0, 1, 2
    conv: nn.Conv2d
    bn: nn.Module  # the norm applied to its output


class Block(nn.Module):
    """PyramidNet-order residual block: BN-conv-BN-ReLU-Dropout-conv-BN + shortcut."""

    # the residual branch's convs and the norm after each, in forward order
    _BRANCH = (("conv1", "bn2"), ("conv2", "bn3"))

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(cout, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = Shortcut(cin, cout, stride) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.bn1(x))
        out = self.dropout(self.relu(self.bn2(out)))
        out = self.bn3(self.conv2(out))
        return out + (x if self.shortcut is None else self.shortcut(x))

    def conv_bn_pairs(self, *, shortcut: bool = False) -> Iterator[ConvBN]:
        """The residual branch's two 3x3 convs, each with the BN after it (conv1 -> bn2, conv2 -> bn3);
        with ``shortcut`` also the 1x1 shortcut conv and its BN where the block has one.

        The one place that spells out which norm follows which conv, so folding, export and
        ternarization never hard-code the attribute names.
        """
        for conv_name, bn_name in self._BRANCH:
            yield ConvBN(conv_name, getattr(self, conv_name), getattr(self, bn_name), bn_name)
        if shortcut and self.shortcut is not None:
            yield ConvBN("shortcut.conv", self.shortcut.conv, self.shortcut.bn, "shortcut.bn")


class MicroNet(nn.Module):
    """Stem, three stages of `Block`s, head. Walk the structure with `iter_blocks` and `block_convs`
    rather than spelling out ``stage1..3``: those names are this class's business (they are also the
    prefixes of the state-dict keys, so they stay as they are)."""

    STAGE_NAMES = ("stage1", "stage2", "stage3")

    def __init__(self, config: MicroNetConfig) -> None:
        super().__init__()
        self.config = config.validate()
        c1, c2, c3 = config.widths
        n = config.blocks_per_stage
        self.stem_conv = conv3x3(config.in_channels, c1)
        self.stem_bn = nn.BatchNorm2d(c1)
        self.stem_relu = nn.ReLU(inplace=True)
        stages = []
        cin = c1
        for i, cout in enumerate((c1, c2, c3)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(Block(cin, cout, stride, config.dropout))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        for name, stage in zip(self.STAGE_NAMES, stages):
            setattr(self, name, stage)
        self.head_relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, config.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> tuple[nn.Sequential, ...]:
        """The three stages (``nn.Sequential`` of `Block`), at 32x32, 16x16 and 8x8 for a 32x32 input."""
        return tuple(getattr(self, name) for name in self.STAGE_NAMES)

    def iter_blocks(self) -> Iterator[tuple[str, int, Block]]:
        """``(name, stage index, block)`` in forward order; ``name`` as in ``named_modules()``
        (``"stage2.0"``), the stage index counts from 0."""
        for si, (stage_name, stage) in enumerate(zip(self.STAGE_NAMES, self.stages())):
            for bi, block in enumerate(stage):
                yield f"{stage_name}.{bi}", si, block

    def blocks(self) -> list[Block]:
        return [block for _, _, block in self.iter_blocks()]

    def block_convs(self) -> Iterator[BlockConv]:
        """Every conv inside the blocks (the two 3x3 branch convs, then the 1x1 shortcut conv where
        there is one), block by block in forward order, each with the norm after it."""
        for name, si, block in self.iter_blocks():
            for unit in block.conv_bn_pairs(shortcut=True):
                yield BlockConv(f"{name}.{unit.name}", si, unit.conv, unit.bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_relu(self.stem_bn(self.stem_conv(x)))
        for stage in self.stages():
            x = stage(x)
        x = self.pool(self.head_relu(x)).flatten(1)
        return self.fc(x)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of the full-precision model (what the paper's 8.05 M counts)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.endswith(("w_p", "w_n")))


def count_macs(config: MicroNetConfig, resolution: int = 32) -> int:
    """Multiply-accumulates of one forward pass at ``resolution`` (convs and FC only)."""
    c1, c2, c3 = config.widths
    n = config.blocks_per_stage
    r = resolution
    macs = r * r * config.in_channels * 9 * c1
    cin = c1
    for i, cout in enumerate((c1, c2, c3)):
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            if stride == 2:
                r //= 2
            macs += r * r * cin * 9 * cout + r * r * cout * 9 * cout
            if stride != 1 or cin != cout:
                macs += r * r * cin * cout
            cin = cout
    return macs + c3 * config.num_classes
