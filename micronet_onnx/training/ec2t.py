"""EC2T: Entropy-Constrained Trained Ternarization, as a transformation with a config object.

`ternarize_model(model, config, filter_fn)` swaps the convs ``filter_fn`` selects (by default
`paper_layer_filter`: EC2T's policy, every 3x3 conv inside the blocks) for a `TernaryConv2d`: a
full-precision background weight, two trainable centroid magnitudes ``w_p, w_n > 0`` and an int8 assignment
``codes`` in {-1, 0, +1}. The forward pass uses ``w_p * [codes = +1] - w_n * [codes = -1]``.
`EC2TQuantizer.after_step()` runs after every optimizer step: it floors the centroids and re-assigns
every weight with the entropy-constrained rule. Facts from the authors' code are in
`../shared/paper/ec2t-reference.md`; the choices we made differently are in `docs/ec2t.md`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from micronet_onnx.model import MicroNet

WN_GRAD_CHOICES = ("true", "ttq")


@dataclass(frozen=True)
class EC2TConfig:
    """Every knob of EC2T; the defaults are the reference CIFAR-100 run."""

    lambda_gain: float = 0.15  # gamma: scales the entropy term, steers sparsity
    centroid_init: float = 0.45  # s: w_p = s*|max W|, w_n = s*|min W| at the start
    zero_share_floor: float = 0.5  # P_0 is raised to at least this before computing I_c
    centroid_floor: float = 0.675  # after each step, w_p, w_n >= centroid_floor * std(W_fp)
    wn_grad: str = "true"  # "true": d loss / d w_n of weight -w_n; "ttq": the reference code's sign
    lr_weights: float = 1e-4  # Adam for the background weights (no weight decay)
    lr_centroids: float = 1e-5  # Adam for w_p, w_n
    lr_other: float = 1e-4  # Adam for the non-quantized parameters
    wd_other: float = 5e-6

    def validate(self) -> EC2TConfig:
        if self.lambda_gain < 0:
            raise ValueError(f"lambda gain must be >= 0, got {self.lambda_gain}")
        if not (0 < self.centroid_init <= 1):
            raise ValueError(f"centroid init must be in (0, 1], got {self.centroid_init}")
        if not (0 <= self.zero_share_floor < 1):
            raise ValueError(f"zero share floor must be in [0, 1), got {self.zero_share_floor}")
        if self.wn_grad not in WN_GRAD_CHOICES:
            raise ValueError(f"wn_grad must be one of {WN_GRAD_CHOICES}, got {self.wn_grad!r}")
        for name in ("lr_weights", "lr_centroids", "lr_other"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EC2TConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class _Ternarize(torch.autograd.Function):
    """Ternary weight forward; scaled straight-through gradients backward."""

    @staticmethod
    def forward(ctx, weight, w_p, w_n, codes, ttq_sign: bool):  # type: ignore[override]
        pos = codes == 1
        neg = codes == -1
        ctx.save_for_backward(pos, neg, w_p, w_n)
        ctx.ttq_sign = ttq_sign
        return w_p * pos - w_n * neg

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        pos, neg, w_p, w_n = ctx.saved_tensors
        g_weight = None
        if ctx.needs_input_grad[0]:
            # scaled STE: w_p * g on + positions, w_n * g on - positions, g on zeros
            g_weight = torch.where(pos, g * w_p, torch.where(neg, g * w_n, g))
        g_pos = (g * pos).sum()
        g_neg = (g * neg).sum()
        return g_weight, g_pos, (g_neg if ctx.ttq_sign else -g_neg), None, None


class TernaryConv2d(nn.Conv2d):
    """A conv whose forward weight is ternary: {-w_n, 0, +w_p} chosen by ``codes``."""

    def __init__(self, *args, wn_grad: str = "true", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.w_p = nn.Parameter(torch.tensor(1.0))
        self.w_n = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("codes", torch.zeros(self.weight.shape, dtype=torch.int8))
        self.wn_grad = wn_grad

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, config: EC2TConfig) -> TernaryConv2d:
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, wn_grad=config.wn_grad,
        )
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
            w = layer.weight
            layer.w_p.fill_(config.centroid_init * w.max().abs().item())
            layer.w_n.fill_(config.centroid_init * w.min().abs().item())
            layer.codes.copy_(nearest_codes(w, layer.w_p, layer.w_n))
        return layer.to(conv.weight.device)

    def ternary_weight(self) -> torch.Tensor:
        return _Ternarize.apply(self.weight, self.w_p, self.w_n, self.codes, self.wn_grad == "ttq")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.ternary_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    @property
    def sparsity(self) -> float:
        return float((self.codes == 0).float().mean())

    def dead_channels(self) -> int:
        """Output channels whose whole filter is zero."""
        return int((self.codes.flatten(1) == 0).all(1).sum())


def nearest_codes(w: torch.Tensor, w_p: torch.Tensor, w_n: torch.Tensor) -> torch.Tensor:
    """Nearest-centroid assignment to {-w_n, 0, +w_p} as int8 codes (ties go to zero)."""
    return entropy_constrained_codes(w, w_p, w_n, lam=None, info=None)


def entropy_constrained_codes(w: torch.Tensor, w_p: torch.Tensor, w_n: torch.Tensor, lam: torch.Tensor | None,
                              info: torch.Tensor | None) -> torch.Tensor:
    """``argmin_c (w - C_c)^2 + lam * I_c`` over C = [-w_n, 0, +w_p], as codes -1/0/+1.

    The costs are quadratics in ``w``, so each comparison with the zero cluster is a threshold:
    + wins over 0 iff ``w > (w_p^2 + lam (I_+ - I_0)) / (2 w_p)`` and - wins over 0 iff
    ``w < -(w_n^2 + lam (I_- - I_0)) / (2 w_n)``. Two compares per weight instead of three costs
    and an argmin; + against - only needs settling where the two regions overlap, which the
    P_0 >= 0.5 clamp rules out (it makes both information gaps non-negative). Ties go to zero.
    """
    w_p = w_p.detach()
    w_n = w_n.detach()
    gap_p = gap_n = torch.zeros((), dtype=w.dtype, device=w.device)
    if lam is not None and info is not None:
        gap_p = lam * (info[2] - info[1])
        gap_n = lam * (info[0] - info[1])
    t_p = (w_p * w_p + gap_p) / (2 * w_p)
    t_n = (w_n * w_n + gap_n) / (2 * w_n)
    pos = w > t_p
    neg = w < -t_n
    if bool(t_p < -t_n):  # overlapping regions: settle + against - by their costs
        both = pos & neg
        pos_wins = (w - w_p) ** 2 + gap_p < (w + w_n) ** 2 + gap_n
        pos = pos & (~both | pos_wins)
        neg = neg & (~both | ~pos_wins)
    return pos.to(torch.int8) - neg.to(torch.int8)


def _threshold_codes(w: torch.Tensor, wp: torch.Tensor, wn: torch.Tensor, gap_p: torch.Tensor | None,
                     gap_n: torch.Tensor | None, seg: torch.Tensor) -> torch.Tensor:
    """`entropy_constrained_codes` for a flat concatenation of layers (per-layer values by ``seg``)."""
    if gap_p is None or gap_n is None:
        gap_p = gap_n = torch.zeros_like(wp)
    t_p = (wp * wp + gap_p) / (2 * wp)
    t_n = (wn * wn + gap_n) / (2 * wn)
    pos = w > t_p[seg]
    neg = w < -t_n[seg]
    if bool((t_p < -t_n).any()):  # overlapping regions: settle + against - by their costs
        both = pos & neg
        pos_wins = (w - wp[seg]) ** 2 + gap_p[seg] < (w + wn[seg]) ** 2 + gap_n[seg]
        pos = pos & (~both | pos_wins)
        neg = neg & (~both | ~pos_wins)
    return pos.to(torch.int8) - neg.to(torch.int8)


def cluster_information(codes: torch.Tensor, zero_share_floor: float) -> torch.Tensor:
    """I_c = -log2 P_c of the shares of [-, 0, +], with P_0 raised to ``zero_share_floor``.

    Raising P_0 takes the missing share from P_- and P_+ in proportion, as the reference code does,
    so a layer that starts dense is not pushed to zero by a huge I_0.
    """
    p = torch.bincount((codes.reshape(-1) + 1).to(torch.int64), minlength=3).double() / codes.numel()
    deficit = (zero_share_floor - p[1]).clamp_min(0.0)
    nonzero = p[0] + p[2]
    take = torch.where(nonzero > 0, deficit / nonzero.clamp_min(1e-300), torch.zeros_like(nonzero))
    p = torch.stack([p[0] * (1 - take), torch.maximum(p[1], torch.as_tensor(zero_share_floor, dtype=p.dtype)),
                     p[2] * (1 - take)])
    return -torch.log2(p.clamp_min(1e-12))


class EC2TQuantizer:
    """Owns the ternary layers of a model and runs EC2T's per-step updates on them."""

    def __init__(self, model: nn.Module, config: EC2TConfig) -> None:
        self.config = config.validate()
        self.layers: list[tuple[str, TernaryConv2d]] = ternary_layers(model)
        if not self.layers:
            raise ValueError("model has no ternary layers; call ternarize_model first")
        n_max = max(layer.weight.numel() for _, layer in self.layers)
        # delta_l = (N_l / N_max + 0.05) / 1.05 scales lambda by layer size
        self.delta = [(layer.weight.numel() / n_max + 0.05) / 1.05 for _, layer in self.layers]
        self.frozen = False

    def freeze(self) -> None:
        """Fix the assignment: from now on only centroids and non-quantized parameters train."""
        self.frozen = True
        for _, layer in self.layers:
            layer.weight.requires_grad_(False)

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Adam parameter groups: background weights, centroids, everything else."""
        c = self.config
        weights = [layer.weight for _, layer in self.layers]
        centroids = [p for _, layer in self.layers for p in (layer.w_p, layer.w_n)]
        taken = {id(p) for p in weights + centroids}
        other = [p for p in model.parameters() if id(p) not in taken]
        groups = [
            {"params": centroids, "lr": c.lr_centroids, "weight_decay": 0.0, "name": "centroids"},
            {"params": other, "lr": c.lr_other, "weight_decay": c.wd_other, "name": "other"},
        ]
        if not self.frozen:
            groups.insert(0, {"params": weights, "lr": c.lr_weights, "weight_decay": 0.0, "name": "weights"})
        return groups

    @torch.no_grad()
    def after_step(self) -> None:
        """Floor the centroids, then (unless frozen) re-assign every weight."""
        stats = self._layer_stats(floor=True)
        if not self.frozen:
            self._assign(stats)

    @torch.no_grad()
    def floor_centroids(self) -> None:
        self._layer_stats(floor=True)

    @torch.no_grad()
    def reassign(self) -> None:
        """Entropy-constrained re-assignment with the current centroids (no floor)."""
        self._assign(self._layer_stats(floor=False))

    @torch.no_grad()
    def lambdas(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (lambda_l, I) for the current weights and centroids."""
        lam, info = self._lambdas(self._layer_stats(floor=False))
        return list(zip(lam.unbind(), info.unbind()))

    # The statistics EC2T needs per layer (std, min, max, nearest-cluster counts) are gathered
    # in one of two ways with the same results: a loop over layers on the CPU, where an op costs
    # microseconds and big temporaries cost page faults; and on one flat copy of all weights with
    # segment reductions on a GPU, where it is the number of kernel launches that counts
    # (MicroNet-C100 has 138 ternary layers). ``flat=None`` picks by device.
    flat: bool | None = None

    def _use_flat(self) -> bool:
        return self.flat if self.flat is not None else self.layers[0][1].weight.device.type == "cuda"

    def _layer_stats(self, floor: bool) -> dict[str, torch.Tensor]:
        layers = [layer for _, layer in self.layers]
        c = self.config.centroid_floor
        if self._use_flat():
            numels = [layer.weight.numel() for layer in layers]
            lengths = torch.tensor(numels, device=layers[0].weight.device)
            w = torch.cat([layer.weight.detach().reshape(-1) for layer in layers])
            seg = torch.repeat_interleave(torch.arange(len(layers), device=w.device), lengths,
                                          output_size=w.numel())
            wp = torch.stack([layer.w_p.detach() for layer in layers])
            wn = torch.stack([layer.w_n.detach() for layer in layers])
            if floor:
                mean = torch.segment_reduce(w, "mean", lengths=lengths)
                var = torch.segment_reduce((w - mean[seg]) ** 2, "sum", lengths=lengths) / (lengths - 1).clamp_min(1)
                wp, wn = torch.maximum(wp, c * var.sqrt()), torch.maximum(wn, c * var.sqrt())
                torch._foreach_copy_([layer.w_p for layer in layers], list(wp.unbind()))
                torch._foreach_copy_([layer.w_n for layer in layers], list(wn.unbind()))
            n_pos = torch.segment_reduce((w > (wp / 2)[seg]).float(), "sum", lengths=lengths)
            n_neg = torch.segment_reduce((w < -(wn / 2)[seg]).float(), "sum", lengths=lengths)
            w_min = torch.segment_reduce(w, "min", lengths=lengths)
            w_max = torch.segment_reduce(w, "max", lengths=lengths)
            n = lengths.to(w.dtype)
            return {"w": w, "seg": seg, "numels": numels, "wp": wp, "wn": wn, "w_min": w_min, "w_max": w_max,
                    "counts": torch.stack([n_neg, n - n_pos - n_neg, n_pos], 1)}
        rows = []
        for layer in layers:
            w = layer.weight.detach()
            if floor:
                f = c * w.std()
                layer.w_p.clamp_(min=f)
                layer.w_n.clamp_(min=f)
            wp, wn = layer.w_p.detach(), layer.w_n.detach()
            n_pos = torch.count_nonzero(w > wp / 2)
            n_neg = torch.count_nonzero(w < -wn / 2)
            lo, hi = torch.aminmax(w)
            rows.append(torch.stack([wp, wn, lo, hi, n_neg.to(w.dtype), (w.numel() - n_pos - n_neg).to(w.dtype),
                                     n_pos.to(w.dtype)]))
        t = torch.stack(rows)
        return {"wp": t[:, 0], "wn": t[:, 1], "w_min": t[:, 2], "w_max": t[:, 3], "counts": t[:, 4:7]}

    def _lambdas(self, stats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """lambda_l and I (per layer x [-, 0, +]) from the nearest-assignment cluster counts."""
        counts = stats["counts"].double()
        p = counts / counts.sum(1, keepdim=True)
        floor0 = self.config.zero_share_floor
        deficit = (floor0 - p[:, 1]).clamp_min(0.0)
        nonzero = p[:, 0] + p[:, 2]
        take = torch.where(nonzero > 0, deficit / nonzero.clamp_min(1e-300), torch.zeros_like(nonzero))
        p = torch.stack([p[:, 0] * (1 - take), p[:, 1].clamp_min(floor0), p[:, 2] * (1 - take)], 1)
        info = -torch.log2(p.clamp_min(1e-12))
        w_min, w_max = stats["w_min"].double(), stats["w_max"].double()
        wn, wp = stats["wn"].double(), stats["wp"].double()
        eps = 1e-12
        lmax_n = (w_min**2 - (w_min.abs() - wn) ** 2) / (info[:, 0] - info[:, 1]).clamp_min(eps)
        lmax_p = (w_max**2 - (w_max - wp) ** 2) / (info[:, 2] - info[:, 1]).clamp_min(eps)
        delta = torch.tensor(self.delta, dtype=torch.float64, device=counts.device)
        lam = (self.config.lambda_gain * delta * torch.minimum(lmax_n, lmax_p)).clamp_min(0.0)
        dtype = stats["wp"].dtype
        return lam.to(dtype), info.to(dtype)

    def _assign(self, stats: dict[str, torch.Tensor]) -> None:
        lam, info = self._lambdas(stats)
        if "w" in stats:
            gap_p = lam * (info[:, 2] - info[:, 1])
            gap_n = lam * (info[:, 0] - info[:, 1])
            codes = _threshold_codes(stats["w"], stats["wp"], stats["wn"], gap_p, gap_n, stats["seg"])
            # copy_ by logical index, so codes stored channels-last (--channels-last) are written right
            torch._foreach_copy_([layer.codes for _, layer in self.layers],
                                 [c.view(layer.codes.shape) for c, (_, layer) in
                                  zip(codes.split(stats["numels"]), self.layers)])
            return
        for i, (_, layer) in enumerate(self.layers):
            layer.codes.copy_(entropy_constrained_codes(layer.weight.detach(), stats["wp"][i], stats["wn"][i],
                                                        lam[i], info[i]))

    def stats(self) -> list[dict]:
        """Per-layer sparsity, centroids and dead channels (plain data for tables and logs)."""
        rows = []
        for name, layer in self.layers:
            rows.append({
                "layer": name,
                "shape": list(layer.weight.shape),
                "sparsity": layer.sparsity,
                "w_n": -layer.w_n.item(),
                "w_p": layer.w_p.item(),
                "dead_channels": layer.dead_channels(),
            })
        return rows


def ternary_layers(model: nn.Module) -> list[tuple[str, TernaryConv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TernaryConv2d)]


# ``filter_fn(module, fqn) -> bool`` picks the convs to ternarize, as in torchao's
# ``quantize_(model, config, filter_fn)``; ``fqn`` is the name in ``model.named_modules()``.
LayerFilter = Callable[[nn.Module, str], bool]


def paper_layer_filter(model: MicroNet) -> LayerFilter:
    """EC2T's layer policy for ``model``: every 3x3 conv inside the blocks is ternary; the stem conv,
    the 1x1 shortcut convs and the FC layer (and every BN) stay full precision.

    Which convs sit inside the blocks is the model's business (`MicroNet.block_convs`); that only the
    3x3 ones among them are ternarized is EC2T's.
    """
    inside = {c.name for c in model.block_convs()}

    def is_ternarized(module: nn.Module, fqn: str) -> bool:
        return fqn in inside and isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (3, 3)

    return is_ternarized


def selected_layers(model: MicroNet, filter_fn: LayerFilter | None = None) -> list[tuple[str, nn.Conv2d]]:
    """The convs of ``model`` that ``filter_fn`` (default `paper_layer_filter`) picks, in module order;
    ternary ones included."""
    keep = paper_layer_filter(model) if filter_fn is None else filter_fn
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and keep(m, name)]


def ternarize_model(model: MicroNet, config: EC2TConfig, filter_fn: LayerFilter | None = None) -> MicroNet:
    """Replace every conv that ``filter_fn`` picks (default: `paper_layer_filter`, the policy every
    checkpoint is rebuilt with) by a `TernaryConv2d` initialised from its weights (in place).
    Layers that are ternary already are left alone."""
    config.validate()
    for name, conv in selected_layers(model, filter_fn):
        if isinstance(conv, TernaryConv2d):
            continue
        model.set_submodule(name, TernaryConv2d.from_conv(conv, config))
    return model


def overall_sparsity(model: nn.Module) -> float:
    """Share of zeros over all ternary weights."""
    layers = ternary_layers(model)
    total = sum(layer.codes.numel() for _, layer in layers)
    zeros = sum(int((layer.codes == 0).sum()) for _, layer in layers)
    return zeros / total if total else 0.0


def is_ternary(model: nn.Module) -> bool:
    return bool(ternary_layers(model))
