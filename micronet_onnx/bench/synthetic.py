"""Random ternary models for benchmarks without a trained model: a whole MicroNet with random codes
and BatchNorm statistics (`random_ternary_micronet`, exported by `make_random_ternary_model`), and a
one-node model of one conv shape (`single_layer_model`)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from micronet_onnx.format import spec as tf
from micronet_onnx.format import versions
from micronet_onnx.format.node import TernaryConvNode


def random_ternary_micronet(preset: str = "micronet-c100", sparsity: float = 0.9, *, seed: int = 0,
                            depth: float | None = None, width: float | None = None,
                            num_classes: int | None = None):
    """A MicroNet (eval mode) ternarized with EC2T's layers, random codes and random BatchNorm stats.

    ``sparsity`` is the share of zero codes in every ternary layer (drawn independently per weight);
    the centroids are scaled so that a conv keeps its input's variance, and each block's last BatchNorm
    is scaled down so that the residual stream stays of order one through deep presets.
    """
    import torch

    from micronet_onnx.model import PRESETS, MicroNet, preset_config
    from micronet_onnx.training.ec2t import EC2TConfig, ternarize_model, ternary_layers

    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    if preset not in PRESETS:
        raise ValueError(f"unknown model {preset!r}; choose one of {', '.join(PRESETS)}")
    classes = num_classes or PRESETS[preset][2] or 10
    paper = preset in ("micronet-c10", "micronet-c100")
    cfg = preset_config(preset, classes, None if paper else depth, None if paper else width)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MicroNet(cfg)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                mod.bias.copy_(torch.randn(c, generator=g) * 0.3)
        for _, _, block in model.iter_blocks():  # small residual branches: the stream stays O(1) over 69 blocks
            *_, last = block.conv_bn_pairs()  # the branch's last norm, the one before the residual add
            last.bn.weight.mul_(0.2)
        ternarize_model(model, EC2TConfig())
        for _, layer in ternary_layers(model):
            r = torch.rand(layer.codes.shape, generator=g)
            half = (1.0 - sparsity) / 2.0
            codes = torch.where(r < half, -1, torch.where(r >= 1.0 - half, 1, 0)).to(torch.int8)
            layer.codes.copy_(codes)
            fan_in = layer.codes[0].numel() * max(1.0 - sparsity, 1e-3)
            c = 1.0 / math.sqrt(fan_in)
            layer.w_p.fill_(c * (0.8 + 0.4 * float(torch.rand(1, generator=g))))
            layer.w_n.fill_(c * (0.8 + 0.4 * float(torch.rand(1, generator=g))))
    return model.eval()


def make_random_ternary_model(preset: str = "micronet-c100", sparsity: float = 0.9,
                              path: str | os.PathLike[str] = "runs/bench/model.onnx", *, seed: int = 0,
                              depth: float | None = None, width: float | None = None,
                              check: bool = False) -> Path:
    """Export `random_ternary_micronet` as a ternary ONNX file at ``path``; returns the path."""
    from micronet_onnx.export import export_model

    model = random_ternary_micronet(preset, sparsity, seed=seed, depth=depth, width=width)
    path = Path(path)
    export_model(model, path, ternary=True, check=check)
    return path


def single_layer_model(cin: int, cout: int, size: int, stride: int, sparsity: float, *, seed: int = 0,
                       relu: bool = True) -> onnx.ModelProto:
    """A one-node ternary model: 3x3 TernaryConv (pad 1) with scale, bias and optional ReLU, random
    codes with the given share of zeros; input ``X`` [batch, cin, size, size], output ``Y``. The node
    is written by `TernaryConvNode.to_onnx`, the exporter's writer."""
    rng = np.random.default_rng(seed)
    shape = (cout, cin, 3, 3)
    codes = np.where(rng.random(shape) < sparsity, 0, rng.choice(np.array([-1, 1], np.int8), size=shape))
    attrs = tf.ConvAttrs(weight_shape=shape, strides=(stride, stride), pads=(1, 1, 1, 1),
                         activation="Relu" if relu else "")
    node = TernaryConvNode(name="tc", x="X", output="Y", attrs=attrs, codes=codes.astype(np.int8),
                           centroids=np.array([-0.05, 0.06], tf.CENTROID_DTYPE),
                           scale=rng.uniform(0.5, 1.5, cout).astype(np.float16),
                           bias=(rng.standard_normal(cout) * 0.1).astype(np.float16)).validate()
    proto, inits = node.to_onnx()
    _, _, oh, ow = node.output_shape([None, cin, size, size])
    graph = helper.make_graph(
        [proto], "layer",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", cin, size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", cout, oh, ow])],
        inits,
    )
    return helper.make_model(graph, opset_imports=versions.opset_imports(ternary=True),
                             ir_version=versions.IR_VERSION)
