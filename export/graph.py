"""Build the ONNX graph of a MicroNet directly from its module tree with onnx-graphsurgeon.

Layout (ternary export, format version 2, the default)::

    input [batch, C, H, W]
    stem      Conv(BN folded) -> Relu
    block     TernaryConv conv1  in_scale/in_bias = bn1, scale/bias = bn2, activation Relu
                                 (Dropout: identity at eval)
              shortcut: identity | Conv 1x1 (BN folded)
              TernaryConv conv2  scale/bias = bn3, residual = the shortcut's value: the block's output
    head      Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits [batch, classes]

Format version 1 (``format_version=1``) and the dense export keep bn1 and the skip connection as
standard nodes; the dense export has a Conv (+ Relu) where a TernaryConv stands::

    block     BatchNormalization (bn1, standalone)
              TernaryConv conv1  scale/bias = bn2, activation Relu
              TernaryConv conv2  scale/bias = bn3
              shortcut: identity | Conv 1x1 (BN folded)
              Add

Nothing is traced, so the graph, its names and its bytes are a pure function of the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues
from torch import nn

from micronet_onnx.export import channels as ch
from micronet_onnx.export import portable
from micronet_onnx.export.errors import ExportError
from micronet_onnx.export.folding import TernaryParts, bn_affine, bn_params, conv_bn, conv_geometry, to_fp16, to_fp32
from micronet_onnx.format import encodings, versions
from micronet_onnx.format import spec as tf
from micronet_onnx.format.node import TernaryConvNode
from micronet_onnx.model import Block, MicroNet
from micronet_onnx.training.ec2t import TernaryConv2d

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"


@dataclass
class LayerReport:
    """What one ternary conv stores, what it leaves out and why."""

    name: str
    weight_shape: list[int]  # the layer's full [M, N/g, kH, kW]
    stored_shape: list[int]  # weight_shape attribute of the node
    nnz: int  # non-zero codes stored
    sparsity: float  # share of zeros in the full layer's codes
    stored_bytes: int  # bytes of the node's constant inputs (in_scale / in_bias included)
    dead_outputs: list[int] = field(default_factory=list)  # rows not stored, all codes zero
    dead_outputs_zero_inputs: list[int] = field(default_factory=list)  # rows not stored, read only zeros
    constant_outputs: dict[int, float] = field(default_factory=dict)  # dead output -> act(bias) (+ residual)
    dropped_inputs: list[int] = field(default_factory=list)  # provably-zero input channels
    kept_constant_inputs: list[int] = field(default_factory=list)  # dead producers with act(bias) != 0
    fp16_subnormal: int = 0  # folded values that fell into float16's subnormal range
    input_affine: bool = False  # carries the BN before it as in_scale / in_bias (format version 2)
    residual: bool = False  # adds the block's shortcut before its activation (format version 2)
    encoding: str = ""  # how the TernaryConv node stores its assignment (masks, rows, entropy); "" portable
    assignment_bytes: int = 0  # bytes of that stored assignment (inputs 1 and 2)

    def reasons(self) -> list[str]:
        """One readable line per kind of thing left out or kept."""
        out = []
        yields = "act(bias + residual)" if self.residual else "constant act(bias)"
        if self.dead_outputs:
            out.append(f"{self.name}: output channels {self.dead_outputs} not stored: all codes zero "
                       f"(the node still yields their {yields})")
        if self.dead_outputs_zero_inputs:
            out.append(f"{self.name}: output channels {self.dead_outputs_zero_inputs} not stored: their "
                       "non-zero codes only read provably-zero inputs")
        if self.dropped_inputs:
            out.append(f"{self.name}: input channels {self.dropped_inputs} dropped: dead in the previous "
                       "conv with relu(bias) == 0, so zero everywhere")
        if self.kept_constant_inputs:
            out.append(f"{self.name}: input channels {self.kept_constant_inputs} kept although dead in the "
                       "previous conv: their constant relu(bias) != 0 (zero padding makes it non-constant)")
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["constant_outputs"] = {str(k): v for k, v in self.constant_outputs.items()}
        return d


@dataclass
class BuiltGraph:
    graph: gs.Graph
    layers: list[LayerReport]  # one per TernaryConv node
    fp16_layers: list[str]  # layers whose standard-op parameters are stored as float16
    rounded_layers: list[str]  # ternary layers (centroids, scale, bias rounded to float16)
    param_count: int  # elements of all constants (weights, maps, masks: as stored)


class _Builder:
    def __init__(self, *, ternary: bool, fp16: bool, format_version: int = tf.OPSET_VERSION,
                 portable: bool = False, encoding: str = "auto") -> None:
        self.ternary = ternary
        self.encoding = encoding
        self.portable = portable
        self.fp16 = fp16
        self.format_version = format_version
        self.nodes: list[gs.Node] = []
        self.layers: list[LayerReport] = []
        self.fp16_layers: list[str] = []
        self.rounded_layers: list[str] = []

    # -- tensors -------------------------------------------------------------------------
    def const(self, name: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(name, np.ascontiguousarray(values))

    def param(self, layer: str, name: str, values: np.ndarray) -> gs.Tensor:
        """A float parameter of a standard op: float32, or float16 + Cast with ``fp16``."""
        if not self.fp16:
            return self.const(name, to_fp32(values, name))
        if not self.fp16_layers or self.fp16_layers[-1] != layer:
            self.fp16_layers.append(layer)
        stored = self.const(f"{name}.fp16", to_fp16(values, name))
        out = gs.Variable(name, dtype=np.float32, shape=list(np.shape(values)))
        self.nodes.append(gs.Node("Cast", name=f"{name}.cast", attrs={"to": onnx.TensorProto.FLOAT},
                                  inputs=[stored], outputs=[out]))
        return out

    def node(self, op: str, name: str, inputs: list, shape: list, attrs: dict | None = None,
             domain: str | None = None, out_name: str | None = None) -> gs.Variable:
        if self.portable and out_name != OUTPUT_NAME:
            # Bytes the portable file can do without (25 KB of a C100 one): no value_info (shape
            # inference recovers it) and each output named as its node (ONNX keeps the two apart).
            out = gs.Variable(out_name or name)
        else:
            out = gs.Variable(out_name or f"{name}.out", dtype=np.float32, shape=shape)
        node = gs.Node(op, name=name, attrs=attrs or {}, inputs=inputs, outputs=[out])
        if domain:
            node.domain = domain
        self.nodes.append(node)
        return out

    def written_node(self, node: TernaryConvNode, tensors: dict[str, gs.Tensor], shape: list
                     ) -> tuple[gs.Variable, list[gs.Constant]]:
        """Add ``node`` as `TernaryConvNode.to_onnx` writes it (names, input order, attribute order,
        initializers); ``tensors`` maps its non-constant inputs (X, residual) to graph tensors.
        Returns the output and the node's constants."""
        proto, inits = node.to_onnx()
        consts = [self.const(t.name, numpy_helper.to_array(t)) for t in inits]
        by_name: dict[str, gs.Tensor] = {**tensors, **{c.name: c for c in consts}}
        inputs = [by_name[n] if n else gs.Variable.empty() for n in proto.input]
        attrs = {}
        for a in proto.attribute:
            v = onnx.helper.get_attribute_value(a)
            attrs[a.name] = v.decode() if isinstance(v, bytes) else v
        out = gs.Variable(proto.output[0], dtype=np.float32, shape=shape)
        written = gs.Node(proto.op_type, name=proto.name, attrs=attrs, inputs=inputs, outputs=[out])
        written.domain = proto.domain
        self.nodes.append(written)
        return out, consts

    # -- layers --------------------------------------------------------------------------
    def dense_conv(self, name: str, x: gs.Tensor, shape: tuple, conv: nn.Conv2d, w: np.ndarray,
                   b: np.ndarray, act: str) -> tuple[gs.Variable, tuple]:
        geo = conv_geometry(conv, name)
        oshape = _conv_out(shape, w.shape, geo)
        inputs = [x, self.param(name, f"{name}.weight", w), self.param(name, f"{name}.bias", b)]
        y = self.node("Conv", name, inputs, [BATCH_DIM, *oshape], {"kernel_shape": list(w.shape[2:]), **geo})
        if act == "Relu":
            y = self.node("Relu", f"{name}.relu", [y], [BATCH_DIM, *oshape])
        return y, oshape

    def fuses(self, conv: nn.Module) -> bool:
        """Whether ``conv`` becomes a TernaryConv node that takes in_scale / in_bias / residual."""
        return self.ternary and self.format_version >= 2 and isinstance(conv, TernaryConv2d)

    def conv_unit(self, name: str, x: gs.Tensor, shape: tuple, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: str,
                  zero_inputs: np.ndarray | None, dead_inputs: np.ndarray | None,
                  in_bn: nn.BatchNorm2d | None = None, residual: gs.Tensor | None = None):
        """A conv + its BN (+ activation). Returns (output, shape, zero outputs, dead outputs); the
        last two are bool [M] for a ternary node, None otherwise.

        ``in_bn`` (the BN before the conv) and ``residual`` (a value added before the activation) are
        only for a conv that `fuses`: they become the node's in_scale / in_bias and residual inputs."""
        if (in_bn is not None or residual is not None) and not self.fuses(conv):
            raise ExportError(f"{name}: only a format-version-2 TernaryConv takes an input BN or a residual")
        if not isinstance(conv, TernaryConv2d):
            w, b = conv_bn(conv, bn, name)
            y, oshape = self.dense_conv(name, x, shape, conv, w, b, act)
            return y, oshape, None, None
        parts = TernaryParts(conv, bn, name)
        self.rounded_layers.append(name)
        if not (self.ternary or self.portable):
            y, oshape = self.dense_conv(name, x, shape, conv, parts.dense_weight(), parts.bias, act)
            return y, oshape, None, None
        plan = ch.plan_channels(parts.codes, group=parts.groups, zero_inputs=zero_inputs,
                                dead_inputs=dead_inputs)
        if self.portable:
            return self.portable_conv(name, x, shape, conv, parts, plan, act)
        m = plan.num_outputs
        attrs = tf.ConvAttrs(
            weight_shape=tuple(int(s) for s in plan.stored_codes.shape),
            strides=parts.stride,
            pads=parts.padding,
            dilations=parts.dilation,
            group=parts.groups,
            num_output_channels=m if plan.needs_out_map else 0,
            activation=act,
        ).validate()
        in_scale = in_bias = None
        if in_bn is not None:
            # Only the stored input channels: entry c normalises X channel in_channels[c].
            s64, t64 = bn_affine(in_bn, f"{name} input BatchNorm")
            keep = plan.in_channels.astype(np.int64)
            in_scale = to_fp32(s64[keep], f"{name} input BatchNorm scale")
            in_bias = to_fp32(t64[keep], f"{name} input BatchNorm shift")
        node = TernaryConvNode(
            name=name, x=x.name, output=f"{name}.out", attrs=attrs,
            codes=plan.stored_codes.astype(np.int8), centroids=parts.centroids, scale=parts.scale, bias=parts.bias,
            in_channels=plan.in_channels if plan.needs_in_map else None,
            out_channels=plan.out_rows if plan.needs_out_map else None,
            in_scale=in_scale, in_bias=in_bias, residual=None if residual is None else residual.name,
            version=self.format_version).choose_encoding(self.encoding)
        oshape = tuple(node.output_shape([None, *shape])[1:])
        y, consts = self.written_node(node, {x.name: x, **({} if residual is None else {residual.name: residual})},
                                      [BATCH_DIM, *oshape])
        zero, dead = self.report_layer(name, parts, plan, act, consts, in_bn, residual is not None)
        self.layers[-1].encoding = node.encoding
        self.layers[-1].assignment_bytes = node.stored_assignment_bytes()
        return y, oshape, zero, dead

    def portable_conv(self, name: str, x: gs.Tensor, shape: tuple, conv: nn.Conv2d, parts: TernaryParts,
                      plan: ch.ChannelPlan, act: str):
        """A ternary conv of the portable export (`export.portable`): INT2 codes -> standard Conv."""
        weight, consts = portable.ternary_weight(self, name, parts, plan)
        geo = conv_geometry(conv, name)
        oshape = _conv_out(shape, parts.codes.shape, geo)
        bias = portable.fp16_param(self, f"{name}.bias", parts.bias)
        consts.append(bias.inputs[0].inputs[0])
        y = self.node("Conv", name, [x, weight, bias], [BATCH_DIM, *oshape],
                      {"kernel_shape": list(parts.codes.shape[2:]), **geo})
        if act == "Relu":
            y = self.node("Relu", f"{name}.relu", [y], [BATCH_DIM, *oshape])
        return y, oshape, *self.report_layer(name, parts, plan, act, consts, None, False)

    def report_layer(self, name: str, parts: TernaryParts, plan: ch.ChannelPlan, act: str,
                     consts: list[gs.Constant], in_bn: nn.BatchNorm2d | None, residual: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Append the layer's `LayerReport`; returns its (zero outputs, dead outputs), bool [M]."""
        m = plan.num_outputs
        dead = np.zeros(m, dtype=bool)
        dead[plan.dead_rows] = True
        const_vals = ch.activation(parts.bias.astype(np.float64), act)
        self.layers.append(LayerReport(
            name=name,
            weight_shape=list(parts.codes.shape),
            stored_shape=[int(s) for s in plan.stored_codes.shape],
            nnz=int((plan.stored_codes != 0).sum()),
            sparsity=float((parts.codes == 0).mean()),
            stored_bytes=int(sum(_const_bytes(c) for c in consts)),
            dead_outputs=plan.dead_all_zero,
            dead_outputs_zero_inputs=plan.dead_zero_inputs,
            constant_outputs={int(o): float(const_vals[o]) for o in plan.dead_rows},
            dropped_inputs=plan.dropped_inputs,
            kept_constant_inputs=plan.kept_constant_inputs,
            fp16_subnormal=parts.subnormal,
            input_affine=in_bn is not None,
            residual=residual,
        ))
        return dead & (const_vals == 0.0), dead

    def batch_norm(self, name: str, x: gs.Tensor, shape: tuple, bn: nn.BatchNorm2d) -> gs.Variable:
        p = bn_params(bn, name)
        inputs = [x, *(self.param(name, f"{name}.{k}", p[k]) for k in ("scale", "B", "mean", "var"))]
        return self.node("BatchNormalization", name, inputs, [BATCH_DIM, *shape], {"epsilon": float(bn.eps)})

    def affine(self, name: str, x: gs.Tensor, shape: tuple, bn: nn.BatchNorm2d) -> gs.Variable:
        """A standalone BatchNorm as Mul + Add of its folded float32 affine: two vectors where
        BatchNormalization stores four, and the arithmetic of the TernaryConv file's ``in_scale`` /
        ``in_bias`` (the portable export; 48 KB less in a paper-scale C100 file)."""
        s64, t64 = bn_affine(bn, name)
        c = len(s64)
        a = self.param(name, f"{name}.scale", s64.reshape(c, 1, 1))
        y = self.node("Mul", f"{name}.mul", [x, a], [BATCH_DIM, *shape], out_name=f"{name}.scaled")
        t = self.param(name, f"{name}.shift", t64.reshape(c, 1, 1))
        return self.node("Add", name, [y, t], [BATCH_DIM, *shape])

    def shortcut(self, name: str, x: gs.Tensor, shape: tuple, block: Block) -> tuple[gs.Tensor, tuple]:
        if block.shortcut is None:
            return x, shape
        w, b = conv_bn(block.shortcut.conv, block.shortcut.bn, f"{name}.shortcut")
        return self.dense_conv(f"{name}.shortcut", x, shape, block.shortcut.conv, w, b, "")

    def block(self, name: str, x: gs.Tensor, shape: tuple, block: Block) -> tuple[gs.Variable, tuple]:
        fuse_bn1, fuse_add = self.fuses(block.conv1), self.fuses(block.conv2)
        if fuse_bn1:
            h, in_bn = x, block.bn1
        else:
            norm = self.affine if self.portable else self.batch_norm
            h, in_bn = norm(f"{name}.bn1", x, shape, block.bn1), None
        h, s1, zero1, dead1 = self.conv_unit(f"{name}.conv1", h, shape, block.conv1, block.bn2, "Relu",
                                             None, None, in_bn=in_bn)
        if fuse_add:
            sc, ssc = self.shortcut(name, x, shape, block)
            y, s2, _, _ = self.conv_unit(f"{name}.conv2", h, s1, block.conv2, block.bn3, "", zero1, dead1,
                                         residual=sc)
        else:
            h, s2, _, _ = self.conv_unit(f"{name}.conv2", h, s1, block.conv2, block.bn3, "", zero1, dead1)
            sc, ssc = self.shortcut(name, x, shape, block)
        if ssc != s2:
            what = "identity shortcut" if block.shortcut is None else "shortcut"
            raise ExportError(f"{name}: {what} shape {ssc} differs from branch shape {s2}")
        if fuse_add:
            return y, s2
        return self.node("Add", f"{name}.add", [h, sc], [BATCH_DIM, *s2]), s2


def _const_bytes(c: gs.Constant) -> int:
    """Bytes of a constant's values as stored (an INT2 constant: its packed raw data)."""
    if isinstance(c._values, LazyValues):
        return len(c._values.tensor.raw_data)
    return int(c.values.nbytes)


def _conv_out(shape: tuple, wshape: tuple, geo: dict) -> tuple:
    attrs = tf.ConvAttrs(weight_shape=(int(wshape[0]), 1, int(wshape[2]), int(wshape[3])),
                         strides=tuple(geo["strides"]), pads=tuple(geo["pads"]),
                         dilations=tuple(geo["dilations"]))
    return (int(wshape[0]), *attrs.output_hw(shape[1], shape[2]))


def check_encoding_request(encoding: str, format_version: int) -> str:
    """``encoding`` if a file of ``format_version`` can be written with it (``auto``, or one of
    `spec.ENCODINGS` from version 3 on; ``masks`` only before); `spec.FormatError` otherwise."""
    if encoding not in encodings.CHOICES:
        raise tf.FormatError(f"unknown encoding {encoding!r} (one of {', '.join(encodings.CHOICES)})")
    if format_version < tf.ENCODING_VERSION and encoding not in (encodings.AUTO, "masks"):
        raise tf.FormatError(f"encoding {encoding} needs format version {tf.ENCODING_VERSION} "
                             f"(format version {format_version} stores masks only)")
    return encoding


def build_graph(model: MicroNet, *, ternary: bool, fp16: bool, input_hw: tuple[int, int],
                format_version: int = tf.OPSET_VERSION, portable: bool = False,
                encoding: str = "auto") -> BuiltGraph:
    """The gs graph of an eval-mode MicroNet (model is only read).

    ``format_version`` (TernaryConv format, ternary exports only): 2 fuses each block's bn1 into conv1
    (``in_scale``/``in_bias``) and its skip connection into conv2 (``residual``); 1 writes them as a
    standalone BatchNormalization and an Add. ``portable`` (with ``ternary=False``): the dense layout,
    each ternary conv's codes stored as INT2 and looked up by standard ops (`export.portable`).
    ``encoding`` (format version 3): how every TernaryConv stores its assignment, ``auto`` the smallest
    per layer (`TernaryConvNode.choose_encoding`); older versions store masks only."""
    try:
        versions.check_format_version(format_version)
        check_encoding_request(encoding, format_version)
    except tf.FormatError as e:
        raise ExportError(str(e)) from None
    if not isinstance(model, MicroNet):
        raise ExportError(f"only MicroNet models can be exported, got {type(model).__name__}")
    if not isinstance(model.pool, nn.AdaptiveAvgPool2d) or model.pool.output_size not in (1, (1, 1)):
        raise ExportError("the head must pool to 1x1")
    if portable and ternary:
        raise ExportError("a portable export is standard ONNX: it cannot also be a TernaryConv export")
    b = _Builder(ternary=ternary, fp16=fp16, format_version=format_version, portable=portable, encoding=encoding)
    c_in = int(model.stem_conv.in_channels)
    shape = (c_in, int(input_hw[0]), int(input_hw[1]))
    x_in = gs.Variable(INPUT_NAME, dtype=np.float32, shape=[BATCH_DIM, *shape])

    w, bias = conv_bn(model.stem_conv, model.stem_bn, "stem")
    x, shape = b.dense_conv("stem.conv", x_in, shape, model.stem_conv, w, bias, "Relu")
    for si, stage in enumerate((model.stage1, model.stage2, model.stage3), start=1):
        for bi, blk in enumerate(stage):
            x, shape = b.block(f"stage{si}.{bi}", x, shape, blk)
    x = b.node("Relu", "head.relu", [x], [BATCH_DIM, *shape])
    x = b.node("GlobalAveragePool", "head.pool", [x], [BATCH_DIM, shape[0], 1, 1])
    x = b.node("Flatten", "head.flatten", [x], [BATCH_DIM, shape[0]], {"axis": 1})
    fc = model.fc
    if fc.in_features != shape[0]:
        raise ExportError(f"fc expects {fc.in_features} features, the trunk gives {shape[0]}")
    fc_b = fc.bias.detach().double().cpu().numpy() if fc.bias is not None else np.zeros(fc.out_features)
    fc_w = fc.weight.detach().double().cpu().numpy()
    inputs = [x, b.param("fc", "fc.weight", fc_w), b.param("fc", "fc.bias", fc_b)]
    logits = b.node("Gemm", "fc", inputs, [BATCH_DIM, fc.out_features], {"transB": 1}, out_name=OUTPUT_NAME)

    graph = gs.Graph(nodes=b.nodes, inputs=[x_in], outputs=[logits], name="micronet")
    graph.cleanup().toposort()
    count = sum(int(np.prod(t.shape)) for t in graph.tensors().values() if isinstance(t, gs.Constant))
    return BuiltGraph(graph=graph, layers=b.layers, fp16_layers=b.fp16_layers,
                      rounded_layers=b.rounded_layers, param_count=count)
