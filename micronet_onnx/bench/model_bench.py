"""Inference benchmark: a ternary ONNX file in onnxruntime with our TernaryConv library against its
dense float32 twin in stock onnxruntime (and, optionally, the PyTorch checkpoint).

Everything here returns plain data; ``mnx bench`` renders it (``render``, ``render_layers``) or prints
it as JSON. Timing is interleaved: each round runs every contestant once (a measurement of a few
runs each, after a short idle pause and one untimed run, see `SETTLE_SECONDS`), so a noisy
neighbour on the machine hits all of them alike; medians over rounds are reported, with the ratios
ternary / dense of images per second.

- `dense_twin(model)` rewrites every ``micronet::TernaryConv`` into standard ONNX (a
  ``BatchNormalization`` for ``in_scale``/``in_bias``, ``Conv`` with the decoded weight, ``scale``
  folded into the weight and ``bias`` into the Conv bias, an ``Add`` for ``residual``, then ``Relu``
  when fused): the graph the dense export writes, the same function up to float32 rounding,
  runnable in stock onnxruntime.
- `make_random_ternary_model(preset, sparsity, path)` exports a MicroNet with random ternary codes
  (the given share of zeros) and random BatchNorm statistics, for benchmarks without a trained model.
- `bench_model(path, ...)` times the whole model; `bench_layers(...)` times single TernaryConv nodes
  against single dense Conv nodes over MicroNet's conv shapes and several sparsities.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from micronet_onnx.format import spec as tf

KERNEL_ENV = "MICRONET_TERNARY_KERNEL"

# ---------------------------------------------------------------------------------------------
# the dense twin


def _tensor_shapes(graph: onnx.GraphProto) -> dict[str, list[int | None]]:
    shapes: dict[str, list[int | None]] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return shapes


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dense_nodes(node: onnx.NodeProto, inits: dict[str, np.ndarray], x_channels: int | None,
                 ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Standard nodes (and their initializers) computing what one TernaryConv node computes."""
    attrs = tf.ConvAttrs.from_onnx(_attrs(node))
    names = list(node.input) + [""] * (tf.MAX_INPUTS - len(node.input))

    def const(idx: int) -> np.ndarray | None:
        name = names[idx]
        if not name:
            return None
        if name not in inits:
            raise tf.FormatError(f"{node.name}: input {tf.INPUT_NAMES[idx]} ({name!r}) is not an initializer")
        return inits[name]

    mask, sign, centroids = const(tf.IN_MASK), const(tf.IN_SIGN), const(tf.IN_CENTROIDS)
    scale, bias = const(tf.IN_SCALE), const(tf.IN_BIAS)
    in_ch, out_ch = const(tf.IN_IN_CHANNELS), const(tf.IN_OUT_CHANNELS)
    in_scale, in_bias = const(tf.IN_IN_SCALE), const(tf.IN_IN_BIAS)
    residual = names[tf.IN_RESIDUAL]
    w = tf.decode_weight(mask, sign, centroids, attrs.weight_shape).astype(np.float64)
    m_stored, cpg, kh, kw = attrs.weight_shape
    group, m_out = attrs.group, attrs.m_out
    rows = np.arange(m_stored) if out_ch is None else out_ch.astype(np.int64)
    s = np.ones(m_out) if scale is None else scale.astype(np.float64)
    b = np.zeros(m_out) if bias is None else bias.astype(np.float64)

    prefix = node.name or node.output[0]
    x_name = node.input[0]
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    identity_rows = out_ch is None and m_out == m_stored
    if group > 1 and identity_rows:
        full = w * s[:, None, None, None]  # grouped Conv as is
        conv_group = group
    else:
        # group 1 over all input channels of X (grouped weights expand block-diagonally)
        n_stored = cpg * group
        if in_ch is not None:
            if x_channels is None:  # X's channel count unknown: gather the read channels first
                gathered = f"{prefix}.dense_gather.out"
                idx_name = f"{prefix}.dense_gather.indices"
                new_inits.append(numpy_helper.from_array(in_ch.astype(np.int64), idx_name))
                new_nodes.append(helper.make_node("Gather", [x_name, idx_name], [gathered], axis=1,
                                                  name=f"{prefix}.dense_gather"))
                x_name, cols = gathered, np.arange(n_stored)
                c_total = n_stored
            else:
                cols, c_total = in_ch.astype(np.int64), x_channels
        else:
            cols, c_total = np.arange(n_stored), n_stored
        full = np.zeros((m_out, c_total, kh, kw))
        rows_per_group = m_stored // group
        for r in range(m_stored):
            g = r // rows_per_group
            full[rows[r], cols[g * cpg:(g + 1) * cpg]] = w[r] * s[rows[r]]
        conv_group = 1
    if in_scale is not None or in_bias is not None:
        # The input affine as the dense export writes a pre-activation BN: a BatchNormalization over
        # all of X's channels (the one the Conv reads), identity (1, 0) on the channels it ignores.
        n_stored = cpg * group
        if conv_group == 1:
            x_cols, x_total = cols, c_total
        else:
            x_cols, x_total = np.arange(n_stored), n_stored
        bn_scale, bn_shift = np.ones(x_total, np.float32), np.zeros(x_total, np.float32)
        if in_scale is not None:
            bn_scale[x_cols] = in_scale
        if in_bias is not None:
            bn_shift[x_cols] = in_bias
        bn_names = [f"{prefix}.dense_bn.{k}" for k in ("scale", "B", "mean", "var")]
        for name, v in zip(bn_names, (bn_scale, bn_shift, np.zeros(x_total, np.float32),
                                      np.ones(x_total, np.float32)), strict=True):
            new_inits.append(numpy_helper.from_array(v, name))
        normalised = f"{prefix}.dense_bn.out"
        new_nodes.append(helper.make_node("BatchNormalization", [x_name, *bn_names], [normalised],
                                          name=f"{prefix}.dense_bn", epsilon=0.0))
        x_name = normalised
    w_name, b_name = f"{prefix}.dense_weight", f"{prefix}.dense_bias"
    new_inits.append(numpy_helper.from_array(full.astype(np.float32), w_name))
    new_inits.append(numpy_helper.from_array(b.astype(np.float32), b_name))
    conv_attrs = dict(kernel_shape=[kh, kw], strides=list(attrs.strides), pads=list(attrs.pads),
                      dilations=list(attrs.dilations), group=conv_group)
    relu = attrs.activation == "Relu"
    conv_out = f"{prefix}.dense_conv.out" if relu or residual else node.output[0]
    new_nodes.append(helper.make_node("Conv", [x_name, w_name, b_name], [conv_out], name=f"{prefix}",
                                      **conv_attrs))
    if residual:  # the skip connection stays an Add, and a Relu after it cannot fuse into the Conv
        added = f"{prefix}.dense_add.out" if relu else node.output[0]
        new_nodes.append(helper.make_node("Add", [conv_out, residual], [added], name=f"{prefix}.add"))
        conv_out = added
    if relu:
        new_nodes.append(helper.make_node("Relu", [conv_out], [node.output[0]], name=f"{prefix}.relu"))
    return new_nodes, new_inits


def dense_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every ``micronet::TernaryConv`` replaced by standard ONNX ops.

    Each node becomes ``Conv`` (weight = decoded ternary weight x ``scale``, scattered into a full
    ``[M_out, C, kH, kW]`` weight through the channel maps; Conv bias = ``bias``; dead output channels
    have a zero filter and their bias) followed by ``Relu`` when the node fuses it. A node with
    ``in_scale``/``in_bias`` gets a ``BatchNormalization`` before the Conv (scale = ``in_scale``, B =
    ``in_bias`` scattered to X's channels, 1 and 0 on the unread ones; mean 0, var 1, epsilon 0), and
    a node with ``residual`` an ``Add`` after it (then the ``Relu``): the layout of the dense export.
    The folding is done in float64 and rounded once, so the twin computes the same function up to
    float32 rounding. When ``in_channels`` is present and X's channel count is not recorded in the
    graph, a ``Gather`` picks the read channels first. The ``micronet`` domain import is dropped; the
    result runs in stock onnxruntime.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    shapes = _tensor_shapes(graph)
    used: set[str] = set()
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.domain == tf.DOMAIN and node.op_type == tf.OP_TYPE:
            shape = shapes.get(node.input[0])
            x_channels = shape[1] if shape is not None and len(shape) == 4 else None
            new_nodes, new_inits = _dense_nodes(node, inits, x_channels)
            nodes.extend(new_nodes)
            graph.initializer.extend(new_inits)
        else:
            nodes.append(node)
    for node in nodes:
        used.update(node.input)
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    imports = [o for o in out.opset_import if o.domain != tf.DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(imports)
    for prop in out.metadata_props:
        if prop.key == "micronet.export_kind":
            prop.value = "dense-twin"
    return out


# ---------------------------------------------------------------------------------------------
# random test models


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
        for blk in model.blocks():  # small residual branches: the stream stays O(1) over 69 blocks
            blk.bn3.weight.mul_(0.2)
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


# ---------------------------------------------------------------------------------------------
# timing


class kernel_env:
    """Context manager: set ``MICRONET_TERNARY_KERNEL`` (read when a session creates its kernels)."""

    def __init__(self, kernel: str | None) -> None:
        self.kernel = kernel
        self.saved: str | None = None

    def __enter__(self) -> kernel_env:
        self.saved = os.environ.get(KERNEL_ENV)
        if self.kernel is not None:
            os.environ[KERNEL_ENV] = self.kernel
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved is None:
            os.environ.pop(KERNEL_ENV, None)
        else:
            os.environ[KERNEL_ENV] = self.saved


def _calibrate(fn: Callable[[], object], min_seconds: float) -> int:
    """Calls per measurement so that one measurement takes about ``min_seconds``."""
    t0 = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-6)
    return max(1, min(1000, math.ceil(min_seconds / dt)))


# Pause before each timed measurement. onnxruntime's intra-op workers (and numpy's BLAS threads)
# keep spinning for a while after their last task; without the pause the contestant measured right
# after another one shares the cores with those spinning threads. Measured on the 2-core VM
# (MicroNet-C100, batch 1, 2 threads, one process): 0 s gave 5.3 / 11.0 ms (ternary / dense),
# 0.01 s 4.9 / 10.6 ms, 0.05 s 4.3 / 10.5 ms = the times of each session alone in its own process.
SETTLE_SECONDS = 0.05


def interleaved_times(contestants: dict[str, Callable[[], object]], repeats: int, *, warmup: int = 1,
                      min_seconds: float = 0.05, settle: float = SETTLE_SECONDS) -> dict[str, list[float]]:
    """Seconds per call of each contestant: ``repeats`` rounds, each timing every contestant once
    (a measurement of a few calls, about ``min_seconds`` long), so a noisy machine hits all alike.
    Each measurement starts after ``settle`` seconds of idling and one untimed call, so that it
    measures the contestant alone, as it runs when it is the only model in its process."""
    for fn in contestants.values():
        for _ in range(warmup):
            fn()
    calls = {name: _calibrate(fn, min_seconds) for name, fn in contestants.items()}
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(repeats):
        for name, fn in contestants.items():
            n = calls[name]
            if settle > 0:
                time.sleep(settle)
            fn()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n)
    return times


def _ort_session(model: onnx.ModelProto | bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(threads)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _ternary_session(model: onnx.ModelProto | bytes, threads: int, kernel: str | None = None):
    from micronet_onnx.runtime.session import create_session

    data = model if isinstance(model, bytes) else model.SerializeToString()
    with kernel_env(kernel):
        return create_session(data, threads=threads)


# ---------------------------------------------------------------------------------------------
# per-layer microbenchmark

# MicroNet's block convs: (in channels, out channels, input size, stride); the paper-scale
# MicroNet-C100 widths are 32/64/120, the strided convs open stages 2 and 3.
MICRONET_LAYERS: tuple[tuple[int, int, int, int], ...] = (
    (32, 32, 32, 1),
    (32, 64, 32, 2),
    (64, 64, 16, 1),
    (64, 120, 16, 2),
    (120, 120, 8, 1),
)
LAYER_SPARSITIES: tuple[float, ...] = (0.0, 0.5, 0.8, 0.9, 0.95)


def single_layer_model(cin: int, cout: int, size: int, stride: int, sparsity: float, *, seed: int = 0,
                       relu: bool = True) -> onnx.ModelProto:
    """A one-node ternary model: 3x3 TernaryConv (pad 1) with scale, bias and optional ReLU, random
    codes with the given share of zeros; input ``X`` [batch, cin, size, size], output ``Y``."""
    rng = np.random.default_rng(seed)
    shape = (cout, cin, 3, 3)
    codes = np.where(rng.random(shape) < sparsity, 0, rng.choice(np.array([-1, 1], np.int8), size=shape))
    packed = tf.pack_ternary(codes.astype(np.int8), -0.05, 0.06)
    attrs = tf.ConvAttrs(weight_shape=shape, strides=(stride, stride), pads=(1, 1, 1, 1),
                         activation="Relu" if relu else "").validate()
    inits = {
        "mask": packed.mask, "sign": packed.sign, "centroids": packed.centroids,
        "scale": rng.uniform(0.5, 1.5, cout).astype(np.float16),
        "bias": (rng.standard_normal(cout) * 0.1).astype(np.float16),
    }
    node = helper.make_node(tf.OP_TYPE, ["X", "mask", "sign", "centroids", "scale", "bias"], ["Y"],
                            domain=tf.DOMAIN, name="tc", **attrs.to_onnx())
    out = (size + 2 - 3) // stride + 1
    graph = helper.make_graph(
        [node], "layer",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", cin, size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", cout, out, out])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(tf.DOMAIN, tf.OPSET_VERSION)],
                             ir_version=8)


def kernel_choice(model: onnx.ModelProto | bytes, kernel: str | None = None) -> list[dict]:
    """The kernel the library picks for each TernaryConv node of ``model`` (``MICRONET_TERNARY_LOG``
    lines, read from file descriptor 2 while a session is created): a list of
    ``{"node", "kernel", "isa", "density"}``."""
    import re
    import tempfile

    data = model if isinstance(model, bytes) else model.SerializeToString()
    saved_log = os.environ.get("MICRONET_TERNARY_LOG")
    os.environ["MICRONET_TERNARY_LOG"] = "1"
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        import sys

        sys.stderr.flush()
        saved_fd = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            _ternary_session(data, 1, kernel)
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            if saved_log is None:
                os.environ.pop("MICRONET_TERNARY_LOG", None)
            else:
                os.environ["MICRONET_TERNARY_LOG"] = saved_log
        tmp.seek(0)
        text = tmp.read().decode("utf-8", "replace")
    pattern = re.compile(r"micronet: TernaryConv node '([^']*)': kernel=(\w+) isa=(\w+) density=([0-9.]+)")
    return [{"node": m.group(1), "kernel": m.group(2), "isa": m.group(3), "density": float(m.group(4))}
            for m in pattern.finditer(text)]


def bench_layers(layers: Sequence[tuple[int, int, int, int]] = MICRONET_LAYERS,
                 sparsities: Sequence[float] = LAYER_SPARSITIES, *, batch: int = 1, threads: int = 1,
                 repeats: int = 7, kernels: Sequence[str] = ("auto", "sparse", "dense"),
                 min_seconds: float = 0.02) -> dict:
    """Single TernaryConv node (our library, each of ``kernels`` forced through
    ``MICRONET_TERNARY_KERNEL``) against its dense twin (one ``Conv`` + ``Relu`` in stock onnxruntime,
    which at ``ORT_ENABLE_ALL`` adds NCHWc reorders around a lone Conv), per MicroNet conv shape
    ``(cin, cout, size, stride)`` and sparsity; medians of interleaved rounds.

    Returns ``{"machine", "batch", "threads", "repeats", "kernels", "rows"}``; each row has ``layer``
    (``"CinxCout@HxW/s"``), ``cin``, ``cout``, ``size``, ``stride``, ``sparsity``, ``auto_kernel`` and
    ``isa`` (what ``auto`` picked), ``onnxruntime_ms`` (the dense Conv), ``ternary_<kernel>_ms`` per
    kernel and ``speedup_<kernel>`` = onnxruntime time / ternary time.
    """
    if repeats < 1 or batch < 1 or threads < 1:
        raise ValueError("repeats, batch and threads must be positive")
    machine = machine_info()
    rows = []
    for cin, cout, size, stride in layers:
        x = np.random.default_rng(1).standard_normal((batch, cin, size, size)).astype(np.float32)
        for sparsity in sparsities:
            model = single_layer_model(cin, cout, size, stride, sparsity)
            choice = kernel_choice(model)
            dense = _ort_session(dense_twin(model), threads)
            contestants: dict[str, Callable[[], object]] = {
                "onnxruntime": lambda s=dense, x=x: s.run(None, {"X": x})}
            for k in kernels:
                sess = _ternary_session(model, threads, k)
                contestants[f"ternary_{k}"] = lambda s=sess, x=x: s.run(None, {"X": x})
            times = interleaved_times(contestants, repeats, min_seconds=min_seconds)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"layer": f"{cin}x{cout}@{size}x{size}/{stride}", "cin": cin, "cout": cout, "size": size,
                   "stride": stride, "sparsity": sparsity,
                   "auto_kernel": choice[0]["kernel"] if choice else None,
                   "isa": choice[0]["isa"] if choice else None,
                   "onnxruntime_ms": med["onnxruntime"] * 1e3}
            for k in kernels:
                row[f"ternary_{k}_ms"] = med[f"ternary_{k}"] * 1e3
                row[f"speedup_{k}"] = med["onnxruntime"] / med[f"ternary_{k}"]
            rows.append(row)
    return {"machine": machine, "batch": batch, "threads": threads, "repeats": repeats,
            "kernels": list(kernels), "rows": rows}


def render_layers(report: dict) -> str:
    """A text table of `bench_layers`."""
    kernels = report["kernels"]
    head = f"{'layer':<18} {'sparsity':>8} {'auto':>6} {'onnxruntime':>11}"
    for k in kernels:
        head += f" {k + ' ms':>10} {'x':>6}"
    lines = [f"per-layer: batch {report['batch']}, {report['threads']} thread(s)",
             _machine_line(report, "interleaved rounds"), head]
    for r in report["rows"]:
        line = (f"{r['layer']:<18} {r['sparsity'] * 100:>7.0f}% {r['auto_kernel'] or '-':>6} "
                f"{r['onnxruntime_ms']:>9.3f}ms")
        for k in kernels:
            line += f" {r[f'ternary_{k}_ms']:>10.3f} {r[f'speedup_{k}']:>5.2f}x"
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# whole-model benchmark


def _model_input(model: onnx.ModelProto) -> tuple[str, list[int]]:
    """Name and shape (batch dimension as 1) of the model's single graph input."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"the model has {len(inputs)} graph inputs, expected one image input")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    if len(shape) != 4:
        raise ValueError(f"the model input must be [batch, C, H, W], got rank {len(shape)}")
    return inputs[0].name, shape


# CPUs' worth of other work (measured over a short window before the run) above which a report says
# that the machine was shared. (The load average lags by minutes: it still counts a test run that
# just ended, so it is not used.)
BUSY_CPUS = 0.3


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat, or None where there is no such file."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    return fields[3] + fields[4], sum(fields[:8])


def busy_cpus(window: float = 0.25) -> float | None:
    """How many CPUs' worth of work other processes did during ``window`` seconds (we sleep)."""
    a = _cpu_times()
    time.sleep(window)
    b = _cpu_times()
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (1.0 - (b[0] - a[0]) / (b[1] - a[1])) * (os.cpu_count() or 1)


def machine_info() -> dict:
    """CPU model name, logical CPU count, onnxruntime version and how busy the machine was just
    before the run (the machines are shared: other work makes the numbers noisy)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    busy = busy_cpus()
    return {"cpu": name, "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "onnxruntime": ort_version, "busy_cpus_before": None if busy is None else round(busy, 3)}


def _machine_line(report: dict, what: str) -> str:
    machine = report["machine"]
    line = (f"machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, onnxruntime "
            f"{machine.get('onnxruntime')}; medians of {report['repeats']} {what}")
    busy = machine.get("busy_cpus_before")
    if busy is not None and busy > BUSY_CPUS:
        line += (f"\nnote: other processes kept {busy:.1f} CPUs busy just before the run: "
                 "this machine is shared, the timings are noisy")
    return line


def bench_model(path: str | os.PathLike[str], *, batches: Sequence[int] = (1, 64), threads: Sequence[int] = (1, 2),
                repeats: int = 7, checkpoint: str | os.PathLike[str] | None = None, kernel: str | None = None,
                min_seconds: float = 0.1, warmup: int = 2, seed: int = 0) -> dict:
    """Time a ternary ONNX file in onnxruntime with our library against its dense twin in stock
    onnxruntime (``ORT_ENABLE_ALL``), and optionally the PyTorch checkpoint in eager mode.

    For each batch size and thread count the contestants run interleaved for ``repeats`` rounds
    (one measurement of each per round, a few runs long); the result reports medians.

    Returns ``{"model", "machine", "repeats", "kernel", "rows": [...], "max_abs_diff", "max_abs_logit"}``
    where each
    row has ``batch``, ``threads``, ``runtime`` (``"ternary"``, ``"dense"`` or ``"torch"``),
    ``ms_per_batch``, ``images_per_s`` (medians), ``samples`` (seconds per batch of every round) and
    ``speedup_vs_dense`` (images/s over the dense twin's, same batch and threads).
    ``max_abs_diff`` is the largest |ternary - dense| logit difference seen on the benchmark inputs,
    ``max_abs_logit`` the largest |logit| of the dense twin there (the scale of that difference).
    """
    import torch

    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    if any(b < 1 for b in batches) or any(t < 1 for t in threads):
        raise ValueError("batch sizes and thread counts must be positive")
    machine = machine_info()
    model = onnx.load(os.fspath(path))
    name, shape = _model_input(model)
    ternary_bytes = model.SerializeToString()
    dense_bytes = dense_twin(model).SerializeToString()
    torch_model = None
    if checkpoint is not None:
        from micronet_onnx.training.checkpoint import load_model

        torch_model, _ = load_model(checkpoint)
    rows: list[dict] = []
    max_diff = 0.0
    max_logit = 0.0
    saved_threads = torch.get_num_threads()
    try:
        for t in threads:
            tern = _ternary_session(ternary_bytes, t, kernel)
            dense = _ort_session(dense_bytes, t)
            for b in batches:
                x = np.random.default_rng(seed + b).standard_normal((b, *shape[1:])).astype(np.float32)
                y_t = tern.run(None, {name: x})[0]
                y_d = dense.run(None, {name: x})[0]
                if y_t.size:
                    max_diff = max(max_diff, float(np.max(np.abs(y_t - y_d))))
                    max_logit = max(max_logit, float(np.max(np.abs(y_d))))
                contestants: dict[str, Callable[[], object]] = {
                    "ternary": lambda s=tern, x=x: s.run(None, {name: x}),
                    "dense": lambda s=dense, x=x: s.run(None, {name: x}),
                }
                if torch_model is not None:
                    xt = torch.from_numpy(x)

                    def run_torch(xt=xt, t=t) -> object:
                        torch.set_num_threads(t)
                        with torch.inference_mode():
                            return torch_model(xt)

                    contestants["torch"] = run_torch
                times = interleaved_times(contestants, repeats, warmup=warmup, min_seconds=min_seconds)
                dense_med = statistics.median(times["dense"])
                for runtime, samples in times.items():
                    med = statistics.median(samples)
                    rows.append({
                        "batch": b, "threads": t, "runtime": runtime, "ms_per_batch": med * 1e3,
                        "images_per_s": b / med, "speedup_vs_dense": dense_med / med,
                        "samples": [round(s, 9) for s in samples],
                    })
            del tern, dense
    finally:
        torch.set_num_threads(saved_threads)
    return {"model": os.fspath(path), "machine": machine, "repeats": repeats,
            "kernel": kernel or os.environ.get(KERNEL_ENV, "auto"), "rows": rows, "max_abs_diff": max_diff,
            "max_abs_logit": max_logit}


def render(report: dict) -> str:
    """A text table of `bench_model`: images/s (ms per batch) per runtime, and ternary / dense."""
    runtimes = [r for r in ("ternary", "dense", "torch") if any(row["runtime"] == r for row in report["rows"])]
    keys = sorted({(row["batch"], row["threads"]) for row in report["rows"]}, key=lambda k: (k[1], k[0]))
    by = {(row["batch"], row["threads"], row["runtime"]): row for row in report["rows"]}
    lines = [
        f"model: {report['model']}  (kernel: {report['kernel']})",
        _machine_line(report, "interleaved rounds; images/s (ms per batch)"),
    ]
    head = f"{'batch':>5} {'threads':>7}"
    for r in runtimes:
        head += f" {r:>22}"
    head += f" {'ternary/dense':>14}"
    if "torch" in runtimes:
        head += f" {'ternary/torch':>14}"
    lines.append(head)
    for b, t in keys:
        line = f"{b:>5} {t:>7}"
        for r in runtimes:
            row = by[(b, t, r)]
            line += f" {row['images_per_s']:>10.1f} ({row['ms_per_batch']:>8.2f})"
        tern = by[(b, t, "ternary")]
        line += f" {tern['speedup_vs_dense']:>13.2f}x"
        if "torch" in runtimes:
            line += f" {by[(b, t, 'torch')]['ms_per_batch'] / tern['ms_per_batch']:>13.2f}x"
        lines.append(line)
    lines.append(f"max |ternary - dense| logit difference: {report['max_abs_diff']:.3g} "
                 f"(largest |logit| {report['max_abs_logit']:.3g})")
    return "\n".join(lines)


def _current_format(path: Path) -> bool:
    """Whether ``path`` is a ternary file in the format version the exporter writes now (a file written
    before a format change is rewritten, not benchmarked in the old layout)."""
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable: write it again
        return False
    return any(o.domain == tf.DOMAIN and o.version == tf.OPSET_VERSION for o in model.opset_import)


def bench_random(preset: str = "micronet-c100", sparsities: Sequence[float] = (0.0, 0.5, 0.9),
                 out_dir: str | os.PathLike[str] = "runs/bench", *, seed: int = 0, reuse: bool = True,
                 **bench_kwargs: Any) -> list[dict]:
    """`make_random_ternary_model` for each sparsity (files ``<out_dir>/<preset>-sp<NN>-seed<S>.onnx``,
    reused when present, written in the current format version and ``reuse``), then `bench_model` on
    each; returns the reports (each with an added ``"sparsity"`` key)."""
    reports = []
    for sparsity in sparsities:
        path = Path(out_dir) / f"{preset}-sp{round(sparsity * 100):02d}-seed{seed}.onnx"
        if not (reuse and path.is_file() and _current_format(path)):
            make_random_ternary_model(preset, sparsity, path, seed=seed)
        report = bench_model(path, **bench_kwargs)
        report["sparsity"] = sparsity
        reports.append(report)
    return reports
