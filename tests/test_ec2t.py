import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from micronet_onnx.model import MicroNet, MicroNetConfig
from micronet_onnx.training.ec2t import (
    EC2TConfig,
    EC2TQuantizer,
    TernaryConv2d,
    cluster_information,
    entropy_constrained_codes,
    nearest_codes,
    overall_sparsity,
    paper_layer_filter,
    selected_layers,
    ternarize_model,
    ternary_layers,
)
from micronet_onnx.training.loop import TrainConfig, train

from .conftest import TINY


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return MicroNet(MicroNetConfig(num_classes=10, depth=0.15, width=0.5))


def test_only_block_3x3_convs_are_ternarized():
    model = tiny_model()
    before = {n: p.clone() for n, p in model.named_parameters()}
    ternarize_model(model, EC2TConfig())
    kept = [model.stem_conv, model.fc] + [b.shortcut.conv for b in model.blocks() if b.shortcut is not None]
    assert all(not isinstance(m, TernaryConv2d) for m in kept)
    assert torch.equal(model.stem_conv.weight, before["stem_conv.weight"])
    assert torch.equal(model.fc.weight, before["fc.weight"])
    for b in model.blocks():
        first, second = b.conv_bn_pairs()
        assert isinstance(first.conv, TernaryConv2d) and isinstance(second.conv, TernaryConv2d)
        assert first.conv.stride == (2, 2) or b.shortcut is None or b.shortcut.conv.stride == (1, 1)


def test_layer_policy_is_a_filter():
    model = tiny_model()
    # the default filter is the paper's policy: the 3x3 convs inside the blocks, nothing else
    names = [n for n, _ in selected_layers(model)]
    assert names == [c.name for c in model.block_convs() if c.conv.kernel_size == (3, 3)]
    assert names == [n for n, _ in selected_layers(model, paper_layer_filter(model))]
    assert not paper_layer_filter(model)(model.stem_conv, "stem_conv")
    # any other policy is a filter_fn(module, fqn), as in torchao's quantize_
    custom = ternarize_model(tiny_model(), EC2TConfig(),
                             filter_fn=lambda m, fqn: fqn == "stem_conv" or fqn.endswith("shortcut.conv"))
    assert [n for n, _ in ternary_layers(custom)] == ["stem_conv", "stage2.0.shortcut.conv", "stage3.0.shortcut.conv"]
    # ternarizing again with the default filter leaves those alone and adds the policy's layers
    ternarize_model(custom, EC2TConfig())
    assert len(ternary_layers(custom)) == 3 + len(names)


def test_init_centroids_and_nearest_assignment():
    conv = nn.Conv2d(4, 6, 3, bias=False)
    t = TernaryConv2d.from_conv(conv, EC2TConfig(centroid_init=0.45))
    w = conv.weight
    assert math.isclose(t.w_p.item(), 0.45 * w.max().abs().item(), rel_tol=1e-6)
    assert math.isclose(t.w_n.item(), 0.45 * w.min().abs().item(), rel_tol=1e-6)
    # nearest of {-w_n, 0, w_p} computed the long way
    c = torch.stack([-t.w_n, torch.tensor(0.0), t.w_p]).detach()
    idx = (w.detach().unsqueeze(-1) - c).abs().argmin(-1)
    assert torch.equal(t.codes, (idx - 1).to(torch.int8))


def test_ternary_weights_hold_three_values_after_training(tmp_path):
    cfg = TrainConfig(**TINY, epochs=1, ternary=True, ternary_epochs=1, freeze_epochs=0, batch_size=64)
    train(cfg, tmp_path / "t.pt", log=lambda s: None)
    from micronet_onnx.training.checkpoint import Checkpoint

    model = Checkpoint.load(tmp_path / "t.pt").build_model()
    for b in model.blocks():
        for conv in (unit.conv for unit in b.conv_bn_pairs()):
            w = conv.ternary_weight().detach()
            values = set(torch.unique(w).tolist())
            assert values <= {-conv.w_n.item(), 0.0, conv.w_p.item()}
            assert conv.w_n.item() > 0 and conv.w_p.item() > 0  # so w_n as a value is < 0 < w_p


def test_scaled_ste_and_centroid_gradients():
    torch.manual_seed(0)
    conv = TernaryConv2d.from_conv(nn.Conv2d(3, 4, 3, bias=False), EC2TConfig())
    x = torch.randn(2, 3, 6, 6)
    g_out = torch.randn(2, 4, 4, 4)
    (conv(x) * g_out).sum().backward()
    # the gradient w.r.t. the ternary tensor, computed independently
    w_t = conv.ternary_weight().detach().requires_grad_(True)
    (F.conv2d(x, w_t) * g_out).sum().backward()
    g = w_t.grad
    pos, neg = conv.codes == 1, conv.codes == -1
    expect_w = torch.where(pos, g * conv.w_p.detach(), torch.where(neg, g * conv.w_n.detach(), g))
    torch.testing.assert_close(conv.weight.grad, expect_w)
    torch.testing.assert_close(conv.w_p.grad, g[pos].sum())
    torch.testing.assert_close(conv.w_n.grad, -g[neg].sum())  # true derivative of the value -w_n

    ttq = TernaryConv2d.from_conv(nn.Conv2d(3, 4, 3, bias=False), EC2TConfig(wn_grad="ttq"))
    ttq.load_state_dict(conv.state_dict())
    (ttq(x) * g_out).sum().backward()
    torch.testing.assert_close(ttq.w_n.grad, g[neg].sum())  # the reference code's sign


def test_cluster_information_clamps_zero_share():
    codes = torch.tensor([-1] * 4 + [0] * 2 + [1] * 4, dtype=torch.int8)  # P = .4 .2 .4
    info = cluster_information(codes, 0.5)
    # P_0 raised to .5; the .3 taken from - and + in proportion (.4/.8 each): .25 .5 .25
    torch.testing.assert_close(info, torch.tensor([2.0, 1.0, 2.0], dtype=info.dtype))
    codes = torch.tensor([-1] + [0] * 7 + [1] * 2, dtype=torch.int8)  # P_0 = .7 kept
    torch.testing.assert_close(info := cluster_information(codes, 0.5),
                               -torch.log2(torch.tensor([0.1, 0.7, 0.2], dtype=info.dtype)))


def test_lambda_matches_formula_and_gamma_zero_is_nearest():
    torch.manual_seed(0)
    model = ternarize_model(tiny_model(), EC2TConfig())
    q = EC2TQuantizer(model, EC2TConfig(lambda_gain=0.2))
    name, layer = q.layers[3]
    (lam, info) = q.lambdas()[3]
    w = layer.weight.detach().double()
    i_neg, i_zero, i_pos = cluster_information(nearest_codes(layer.weight, layer.w_p, layer.w_n), 0.5).tolist()
    w_n, w_p = layer.w_n.item(), layer.w_p.item()
    lmax_n = (w.min() ** 2 - (w.min().abs() - w_n) ** 2) / (i_neg - i_zero)
    lmax_p = (w.max() ** 2 - (w.max() - w_p) ** 2) / (i_pos - i_zero)
    n_max = max(lay.weight.numel() for _, lay in q.layers)
    delta = (layer.weight.numel() / n_max + 0.05) / 1.05
    assert math.isclose(lam.item(), 0.2 * delta * min(lmax_n.item(), lmax_p.item()), rel_tol=1e-5)

    q0 = EC2TQuantizer(model, EC2TConfig(lambda_gain=0.0))
    with torch.no_grad():
        for _, lay in q0.layers:
            lay.weight.add_(0.01 * torch.randn_like(lay.weight))
    q0.reassign()
    for _, lay in q0.layers:
        assert torch.equal(lay.codes, nearest_codes(lay.weight, lay.w_p, lay.w_n))


def test_entropy_term_moves_weights_to_zero():
    w = torch.tensor([-0.5, -0.2, 0.0, 0.2, 0.5])
    wp, wn = torch.tensor(0.5), torch.tensor(0.5)
    info = torch.tensor([3.0, 1.0, 3.0])
    assert entropy_constrained_codes(w, wp, wn, torch.tensor(0.0), info).tolist() == [-1, 0, 0, 0, 1]
    # w = 0.5: cost(+) = 0 + 3 lam, cost(0) = 0.25 + lam, so it drops to zero once lam > 0.125
    assert entropy_constrained_codes(w, wp, wn, torch.tensor(0.1), info).tolist() == [-1, 0, 0, 0, 1]
    assert entropy_constrained_codes(w, wp, wn, torch.tensor(0.2), info).tolist() == [0, 0, 0, 0, 0]


def _run_ec2t(gamma, steps=15):
    torch.manual_seed(0)
    model = tiny_model()
    ternarize_model(model, EC2TConfig())
    q = EC2TQuantizer(model, EC2TConfig(lambda_gain=gamma))
    opt = torch.optim.Adam(q.param_groups(model))
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(16, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        q.after_step()
    return model, q


def test_sparsity_rises_with_gamma():
    sparsities = [overall_sparsity(_run_ec2t(g)[0]) for g in (0.0, 0.15, 0.5, 1.5)]
    assert all(b > a for a, b in zip(sparsities, sparsities[1:])), sparsities


def test_frozen_phase_never_changes_assignment():
    model, q = _run_ec2t(0.3, steps=2)
    q.freeze()
    codes = [lay.codes.clone() for _, lay in q.layers]
    weights = [lay.weight.clone() for _, lay in q.layers]
    centroids = [lay.w_p.item() for _, lay in q.layers]
    opt = torch.optim.Adam(q.param_groups(model), lr=1e-2)
    for group in opt.param_groups:
        group["lr"] = 1e-2
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,))).backward()
        opt.step()
        q.after_step()
    for (_, lay), c, w in zip(q.layers, codes, weights):
        assert torch.equal(lay.codes, c) and torch.equal(lay.weight, w)
    assert [lay.w_p.item() for _, lay in q.layers] != centroids  # the centroids did train


def test_config_validation():
    with pytest.raises(ValueError, match="lambda gain"):
        EC2TConfig(lambda_gain=-1).validate()
    with pytest.raises(ValueError, match="wn_grad"):
        EC2TConfig(wn_grad="other").validate()


def _reference_after_step(layers, config, deltas):
    """EC2T's per-step update written per layer with the single-layer functions (an independent path)."""
    out = []
    for delta, layer in zip(deltas, layers):
        w = layer.weight.detach()
        floor = config.centroid_floor * w.std()
        w_p, w_n = torch.maximum(layer.w_p.detach(), floor), torch.maximum(layer.w_n.detach(), floor)
        info = cluster_information(nearest_codes(w, w_p, w_n), config.zero_share_floor)
        w_min, w_max = w.min().double(), w.max().double()
        lmax_n = (w_min**2 - (w_min.abs() - w_n.double()) ** 2) / (info[0] - info[1]).clamp_min(1e-12)
        lmax_p = (w_max**2 - (w_max - w_p.double()) ** 2) / (info[2] - info[1]).clamp_min(1e-12)
        lam = (config.lambda_gain * delta * torch.minimum(lmax_n, lmax_p)).clamp_min(0.0)
        out.append((w_p, w_n, entropy_constrained_codes(w, w_p, w_n, lam.float(), info.float())))
    return out


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("gamma", [0.0, 0.15, 0.8])
def test_update_matches_per_layer_rule(gamma, flat):
    """Both ways of gathering the statistics (layer loop, flat segment reductions) follow the rule."""
    model, q = _run_ec2t(0.15, steps=3)
    config = EC2TConfig(lambda_gain=gamma)
    q = EC2TQuantizer(model, config)
    q.flat = flat
    with torch.no_grad():
        for _, lay in q.layers:
            lay.weight.add_(0.02 * torch.randn_like(lay.weight))
    layers = [lay for _, lay in q.layers]
    expected = _reference_after_step(layers, config, q.delta)
    q.after_step()
    mismatched = 0
    for lay, (w_p, w_n, codes) in zip(layers, expected):
        torch.testing.assert_close(lay.w_p.detach(), w_p, rtol=1e-5, atol=0)
        torch.testing.assert_close(lay.w_n.detach(), w_n, rtol=1e-5, atol=0)
        mismatched += int((lay.codes != codes).sum())
    total = sum(lay.codes.numel() for lay in layers)
    assert mismatched <= total * 1e-4  # only float-rounding ties at a threshold may differ
