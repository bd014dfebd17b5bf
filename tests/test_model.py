import math

import pytest
import torch

from micronet_onnx.model import (
    MicroNet,
    MicroNetConfig,
    count_macs,
    count_parameters,
    preset_config,
    round_channels,
)
from micronet_onnx.training.ec2t import selected_layers


def expected_params(widths, blocks, classes, cin=3):
    """Parameter count written out from the architecture table, independent of the module code."""
    c1, c2, c3 = widths
    total = cin * 9 * c1 + 2 * c1  # stem conv + BN
    prev = c1
    for i, c in enumerate(widths):
        for j in range(blocks):
            stride = 2 if i > 0 and j == 0 else 1
            total += 2 * prev + prev * 9 * c + 2 * c + c * 9 * c + 2 * c  # bn1 conv1 bn2 conv2 bn3
            if stride != 1 or prev != c:
                total += prev * c + 2 * c  # 1x1 shortcut + BN
            prev = c
    return total + c3 * classes + classes


def test_width_rounding_is_nearest_multiple_of_8():
    assert [round_channels(f) for f in (16 * 1.2**3.5, 32 * 1.2**3.5, 64 * 1.2**3.5)] == [32, 64, 120]
    assert round_channels(16) == 16 and round_channels(3) == 8 and round_channels(11.9) == 16
    assert round_channels(19.9) == 24  # 16 < 0.9 * 19.9 would round down too far


@pytest.mark.parametrize("name,classes,expected_widths,blocks", [
    ("micronet-c10", 10, (32, 64, 120), 23),
    ("micronet-c100", 100, (32, 64, 120), 23),
    ("baseline", 10, (16, 32, 64), 7),
    ("baseline", 100, (16, 32, 64), 7),
])
def test_presets_match_paper(name, classes, expected_widths, blocks):
    cfg = preset_config(name, classes)
    assert cfg.widths == expected_widths
    assert cfg.blocks_per_stage == blocks == math.ceil(7 * cfg.depth - 1e-9)
    model = MicroNet(cfg)
    assert count_parameters(model) == expected_params(expected_widths, blocks, classes)
    assert len(selected_layers(model)) == 6 * blocks


def test_paper_scale_numbers():
    c100 = MicroNet(preset_config("micronet-c100", 100))
    assert abs(count_parameters(c100) - 8.05e6) < 0.01e6  # "about 8.05 M parameters"
    assert abs(count_macs(c100.config) - 1243e6) < 1e6  # "1243 M MACs per 32x32 image"
    base = MicroNet(preset_config("baseline", 100))
    assert abs(count_parameters(base) - 0.67e6) < 0.01e6


def test_block_order_and_shortcuts():
    model = MicroNet(MicroNetConfig(num_classes=10, depth=0.15, width=0.5))
    blocks = model.blocks()
    shortcuts = [b.shortcut is not None for b in blocks]
    assert shortcuts == [False, False, True, False, True, False]  # first block of stages 2 and 3
    assert blocks[2].conv1.stride == (2, 2) and blocks[2].shortcut.conv.stride == (2, 2)
    assert blocks[0].conv1.bias is None and blocks[0].conv2.kernel_size == (3, 3)
    x = torch.randn(2, 3, 32, 32)
    assert model.eval()(x).shape == (2, 10)


def test_preset_class_mismatch_and_bad_values():
    with pytest.raises(ValueError, match="100 classes"):
        preset_config("micronet-c100", 10)
    with pytest.raises(ValueError, match="unknown model"):
        preset_config("resnet", 10)
    with pytest.raises(ValueError, match="depth"):
        preset_config("micronet", 10, depth=-1)


def test_structure_api_walks_blocks_in_forward_order():
    model = MicroNet(MicroNetConfig(num_classes=10, depth=0.15, width=0.5))
    blocks = list(model.iter_blocks())
    assert [(n, s) for n, s, _ in blocks] == [("stage1.0", 0), ("stage1.1", 0), ("stage2.0", 1), ("stage2.1", 1),
                                             ("stage3.0", 2), ("stage3.1", 2)]
    assert [b for _, _, b in blocks] == model.blocks()
    modules = dict(model.named_modules())
    for name, _, block in blocks:
        assert modules[name] is block
        pairs = list(block.conv_bn_pairs())
        assert [(p.name, p.bn_name) for p in pairs] == [("conv1", "bn2"), ("conv2", "bn3")]
        assert all(p.conv is block.get_submodule(p.name) and p.bn is block.get_submodule(p.bn_name) for p in pairs)
    convs = list(model.block_convs())
    # every conv inside the blocks, named as in named_modules (the stem conv is not one)
    expected = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and n.startswith("stage")]
    assert [c.name for c in convs] == expected
    assert all(modules[c.name] is c.conv for c in convs)
    assert [c.name for c in convs if c.conv.kernel_size == (1, 1)] == ["stage2.0.shortcut.conv",
                                                                       "stage3.0.shortcut.conv"]
    assert {c.stage for c in convs if c.name.startswith("stage3")} == {2}
