"""Tiny MicroNets for tests: random BN statistics, random ternary codes and forced dead channels,
and a checkpoint writer (shared by the export, bench and scorer tests)."""

from __future__ import annotations

import torch

from micronet_onnx.model import MicroNet, preset_config
from micronet_onnx.training.checkpoint import Checkpoint
from micronet_onnx.training.ec2t import EC2TConfig, ternarize_model, ternary_layers


def _randomize_bn(model: torch.nn.Module, g: torch.Generator) -> None:
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            mod.weight.copy_(torch.rand(c, generator=g) + 0.5)
            mod.bias.copy_(torch.randn(c, generator=g) * 0.3)


@torch.no_grad()
def tiny_model(*, ternary: bool, dead: bool = True, seed: int = 0, zeros: float = 0.9) -> MicroNet:
    """MicroNet with widths 8/16/32, 2 blocks per stage; random BN statistics; with ``ternary``
    random codes (``zeros`` share of zeros) and, with ``dead``, forced dead channels in every block:

    conv1 rows 0, 1 dead with a negative folded bias (relu = 0: conv2 may drop inputs 0, 1);
    conv1 rows 2, 3 dead with a positive folded bias (constant != 0: conv2 must keep inputs 2, 3);
    conv2 row 1 all zero (dead output); conv2 row 4 non-zero only on input 0 (dead after dropping).
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    model = MicroNet(preset_config("micronet", 10, depth=0.15, width=0.5))
    _randomize_bn(model, g)
    if not ternary:
        return model.eval()
    ternarize_model(model, EC2TConfig())
    for _, layer in ternary_layers(model):
        r = torch.rand(layer.codes.shape, generator=g)
        half = (1 - zeros) / 2
        layer.codes.copy_(torch.where(r < half, -1, torch.where(r > 1 - half, 1, 0)).to(torch.int8))
        layer.w_p.fill_(0.2 + 0.2 * float(torch.rand(1, generator=g)))
        layer.w_n.fill_(0.2 + 0.2 * float(torch.rand(1, generator=g)))
    if dead:
        for _, _, blk in model.iter_blocks():
            first, second = blk.conv_bn_pairs()
            first.conv.codes[:4] = 0
            first.bn.running_mean[:4] = 0.0
            first.bn.bias[:2] = -0.5
            first.bn.bias[2:4] = 0.5
            second.conv.codes[1] = 0
            second.conv.codes[4] = 0
            second.conv.codes[4, 0, 1, 1] = 1
    return model.eval()


def save_checkpoint(model: MicroNet, path, *, ternary: bool) -> None:
    """A checkpoint of ``model`` alone (no training state), as export and bench read it."""
    Checkpoint(model_config=model.config, state_dict=model.state_dict(),
               ternary=EC2TConfig() if ternary else None).save(path)


