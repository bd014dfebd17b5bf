"""Tests of the storage / operations scorer (micronet_onnx/scoring/).

Every expected number is written as the arithmetic of the rule it checks (docs/scoring.md), worked out
from the tiny graph the test builds, never copied from a run of the scorer.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from micronet_onnx.cli.score_view import render_table
from micronet_onnx.format import spec as tf
from micronet_onnx.scoring import (
    REFERENCE_OPS,
    REFERENCE_PARAMS,
    LayerRecord,
    ScoreInputError,
    ScoreOptions,
    ScoreReport,
    alternative_formats,
    best_alternative,
    report_to_json,
    score_model,
    tree_adder_bits,
)

# ------------------------------------------------------------------------------------------------
# Graph builders
# ------------------------------------------------------------------------------------------------


class Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))

    def ternary(
        self,
        name: str,
        x: str,
        y: str,
        codes: np.ndarray,
        *,
        scale: bool = False,
        bias: bool = False,
        in_map=None,
        out_map=None,
        m_out: int = 0,
        stride: int = 1,
        pad: int = 1,
        activation: str = "",
        in_scale: bool = False,
        in_bias: bool = False,
        residual: str = "",
    ) -> None:
        packed = tf.pack_ternary(codes, -0.5, 0.25)
        m = m_out or codes.shape[0]
        n = codes.shape[1]
        ins = [
            x,
            self.init(f"{name}.mask", packed.mask),
            self.init(f"{name}.sign", packed.sign),
            self.init(f"{name}.centroids", packed.centroids),
            self.init(f"{name}.scale", np.full(m, 1.5, np.float16)) if scale else "",
            self.init(f"{name}.bias", np.full(m, 0.25, np.float16)) if bias else "",
            self.init(f"{name}.in", np.asarray(in_map, np.int32)) if in_map is not None else "",
            self.init(f"{name}.out", np.asarray(out_map, np.int32)) if out_map is not None else "",
            self.init(f"{name}.in_scale", np.full(n, 0.5, np.float32)) if in_scale else "",
            self.init(f"{name}.in_bias", np.full(n, -0.25, np.float32)) if in_bias else "",
            residual,
        ]
        while ins[-1] == "":
            ins.pop()
        attrs = tf.ConvAttrs(
            weight_shape=tuple(codes.shape),
            strides=(stride, stride),
            pads=(pad, pad, pad, pad),
            num_output_channels=m_out,
            activation=activation,
        )
        self.nodes.append(
            helper.make_node(tf.OP_TYPE, ins, [y], name=name, domain=tf.DOMAIN, **attrs.to_onnx())
        )

    def model(self, inputs: dict[str, list], outputs: list[str], opset: int = tf.OPSET_VERSION) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            initializer=self.inits,
        )
        return helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(tf.DOMAIN, opset)],
            ir_version=8,
        )


def layer(report: ScoreReport, name: str) -> LayerRecord:
    return report.layer(name)


def codes_all_channels(m: int, n: int, k: int = 3) -> np.ndarray:
    """Every row and every input channel has a +1 at the kernel centre: nnz = m * n."""
    c = np.zeros((m, n, k, k), np.int8)
    c[:, :, k // 2, k // 2] = 1
    return c


def one_ternary(codes: np.ndarray, c_in: int | None = None, hw: int = 6, batch: int = 1, opset: int = tf.OPSET_VERSION,
                **kw) -> onnx.ModelProto:
    b = Builder()
    b.ternary("t", "x", "y", codes, **kw)
    inputs = {"x": [batch, c_in or codes.shape[1], hw, hw]}
    if kw.get("residual"):  # a graph input of the output's shape
        stride, pad = kw.get("stride", 1), kw.get("pad", 1)
        o = (hw + 2 * pad - codes.shape[2]) // stride + 1
        inputs[kw["residual"]] = [batch, kw.get("m_out") or codes.shape[0], o, o]
    return b.model(inputs, ["y"], opset=opset)


# ------------------------------------------------------------------------------------------------
# params_paper: Appendix B
# ------------------------------------------------------------------------------------------------


def test_ternary_plain_node_params():
    codes = codes_all_channels(4, 3)  # 12 non-zeros
    codes[0, 0, 0, 0] = -1  # 13 non-zeros
    rep = score_model(one_ternary(codes))
    t = layer(rep, "t")
    n, k2, m, nnz = 3, 9, 4, 13
    assert t.params_paper == pytest.approx(n * k2 * m / 32 + nnz / 32 + 1)
    assert t.in_channels == [3, 3] and t.out_channels == [4, 4]
    assert t.sparsity == pytest.approx(1 - nnz / (n * k2 * m))
    # stored: mask ceil(108/8) bytes, sign ceil(13/8) bytes, 2 fp16 centroids
    assert t.params_stored == pytest.approx((math.ceil(108 / 8) + math.ceil(13 / 8) + 2 * 2) / 4)
    assert rep.params_paper == pytest.approx(t.params_paper)


def test_ternary_dead_rows_use_effective_m():
    codes = codes_all_channels(4, 3)
    codes[2] = 0  # a dead output row
    rep = score_model(one_ternary(codes))
    t = layer(rep, "t")
    n, k2, m_eff, nnz = 3, 9, 3, 9
    assert t.out_channels == [3, 4]
    assert t.params_paper == pytest.approx(n * k2 * m_eff / 32 + nnz / 32 + 1)
    assert t.sparsity == pytest.approx(1 - nnz / (n * k2 * m_eff))


def test_ternary_out_channels_map_and_dead_input_channel():
    codes = codes_all_channels(3, 3)
    codes[:, 1] = 0  # stored input channel 1 unused by every row: N_eff = 2
    rep = score_model(one_ternary(codes, out_map=[0, 1, 3], m_out=4))
    t = layer(rep, "t")
    n_eff, k2, m_eff, nnz = 2, 9, 3, 6
    assert t.in_channels == [2, 3]
    assert t.out_channels == [3, 4]
    assert t.params_paper == pytest.approx(n_eff * k2 * m_eff / 32 + nnz / 32 + 1)


def test_ternary_in_channels_map():
    codes = codes_all_channels(2, 3)
    codes[:, 2] = 0  # stored channel 2 (X channel 4) is all zero
    rep = score_model(one_ternary(codes, c_in=5, in_map=[0, 2, 4]))
    t = layer(rep, "t")
    n_eff, k2, m, nnz = 2, 9, 2, 4
    assert t.in_channels == [2, 5]
    assert t.params_paper == pytest.approx(n_eff * k2 * m / 32 + nnz / 32 + 1)
    # the int32 map is stored (3 * 4 bytes) but not in Appendix B
    mask, sign, cent, imap = math.ceil(54 / 8), math.ceil(4 / 8), 4, 3 * 4
    assert t.params_stored == pytest.approx((mask + sign + cent + imap) / 4)
    # dense fp32 equivalent: the plain Conv over all 5 X channels
    assert t.dense_fp32_params == 2 * 5 * 9


def test_ternary_bias_counts_bn_half_per_effective_channel():
    codes = codes_all_channels(4, 3)
    codes[1] = 0
    rep = score_model(one_ternary(codes, scale=True, bias=True))
    t = layer(rep, "t")
    n, k2, m_eff, nnz = 3, 9, 3, 9
    assert t.params_paper == pytest.approx(n * k2 * m_eff / 32 + nnz / 32 + 1 + m_eff / 2)
    assert t.params_paper_detail["bn_bias"] == m_eff / 2
    # stored: scale and bias are 4 fp16 each (all M_out channels)
    stored_bytes = math.ceil(108 / 8) + math.ceil(9 / 8) + 4 + 4 * 2 + 4 * 2
    assert t.params_stored == pytest.approx(stored_bytes / 4)
    # dense fp32: weight [4, 3, 3, 3] + folded bias [4]
    assert t.dense_fp32_params == 4 * 3 * 9 + 4


# ------------------------------------------------------------------------------------------------
# Format version 2: in_scale / in_bias (a pre-activation BN) and residual
# ------------------------------------------------------------------------------------------------


def test_input_affine_counts_like_a_batchnorm_on_the_read_channels():
    codes = codes_all_channels(4, 3)
    codes[:, 1] = 0  # stored input channel 1 is read by no row: n_eff = 2
    rep = score_model(one_ternary(codes, hw=6, batch=2, in_scale=True, in_bias=True))
    t = layer(rep, "t")
    n_stored, n_eff, k2, m, nnz = 3, 2, 9, 4, 8
    weights = n_eff * k2 * m / 32 + nnz / 32 + 1
    assert t.params_paper == pytest.approx(weights + n_eff / 2)  # a 16-bit bias per read channel, scale merged
    assert t.params_paper_detail["in_bn_bias"] == n_eff / 2 and t.params_paper_detail["bn_bias"] == 0
    # stored: mask, sign, centroids + in_scale and in_bias, float32 [N_stored] each
    stored_bytes = math.ceil(108 / 8) + math.ceil(8 / 8) + 4 + 2 * 4 * n_stored
    assert t.params_stored == pytest.approx(stored_bytes / 4)
    # the dense export's BatchNormalization: four float32 vectors
    assert t.dense_fp32_params == m * n_stored * k2 + 4 * n_stored
    # ops: one mult and one add per normalised element of X (read channels only), batch 2, 6x6
    normalised = 2 * n_eff * 6 * 6
    assert t.ops_detail["bn_mult"] == pytest.approx(normalised * 16 / 32)
    assert t.ops_detail["bn_add"] == pytest.approx(normalised * 32 / 32)
    pos = 2 * 6 * 6
    assert t.ops == pytest.approx(2 * pos * m * 16 / 32 + pos * m * (2 - 1) + normalised * (16 + 32) / 32)


def test_input_affine_with_in_channels_map_uses_x_spatial_size():
    codes = codes_all_channels(2, 3)
    rep = score_model(one_ternary(codes, c_in=5, in_map=[4, 0, 2], hw=8, stride=2, in_scale=True))
    t = layer(rep, "t")
    assert t.output_shape == [1, 2, 4, 4]
    assert t.params_paper_detail["in_bn_bias"] == 3 / 2  # in_scale alone: still the BN's bias rule
    assert t.ops_detail["bn_mult"] == pytest.approx(3 * 8 * 8 * 16 / 32)  # X is 8x8, not the output
    assert "bn_add" not in t.ops_detail  # no in_bias, no add
    assert t.dense_fp32_params == 2 * 5 * 9 + 4 * 3


def test_residual_counts_one_add_per_output_element():
    codes = codes_all_channels(3, 2)
    codes[1] = 0  # a dead row: with a residual its channel is act(bias + residual), not a constant
    model = one_ternary(codes, hw=8, stride=2, out_map=[0, 1, 3], m_out=4, bias=True, activation="Relu",
                        residual="r")
    t = layer(score_model(model), "t")
    pos, m_out, m_eff = 4 * 4, 4, 2
    assert t.ops_detail["residual_add"] == pytest.approx(pos * m_out)
    assert t.ops_detail["activation"] == pytest.approx(pos * m_out * 16 / 32)  # every channel now
    assert t.ops_detail["bias_add"] == pytest.approx(pos * m_eff)
    assert t.params_paper_detail["in_bn_bias"] == 0
    # the residual is a run-time value: nothing stored, no parameter
    assert t.initializers == ["t.mask", "t.sign", "t.centroids", "t.bias", "t.out"]


def test_residual_of_the_wrong_shape_is_an_input_error():
    b = Builder()
    b.ternary("t", "x", "y", codes_all_channels(2, 3), residual="r")
    model = b.model({"x": [1, 3, 6, 6], "r": [1, 2, 5, 6]}, ["y"])
    with pytest.raises(ScoreInputError, match="residual") as err:
        score_model(model)
    assert "\n" not in str(err.value)


def test_input_affine_of_the_wrong_dtype_is_an_input_error():
    model = one_ternary(codes_all_channels(2, 3), in_scale=True)
    for t in model.graph.initializer:
        if t.name == "t.in_scale":
            t.CopyFrom(numpy_helper.from_array(np.ones(3, np.float16), "t.in_scale"))
    with pytest.raises(ScoreInputError, match="in_scale"):
        score_model(model)


@pytest.mark.parametrize("extra", ["in_scale", "residual"])
def test_version_1_model_with_version_2_inputs_is_an_input_error(tmp_path, extra):
    kw = {"in_scale": True} if extra == "in_scale" else {"residual": "r"}
    model = one_ternary(codes_all_channels(2, 3), opset=1, **kw)
    assert len(model.graph.node[0].input) > tf.MAX_INPUTS_V1
    path = tmp_path / "v1.onnx"
    onnx.save(model, path)
    with pytest.raises(ScoreInputError, match="opset 1") as err:
        score_model(path)
    assert "\n" not in str(err.value) and "TernaryConv 't'" in str(err.value)
    # the same graph in a version-2 model scores
    score_model(one_ternary(codes_all_channels(2, 3), opset=2, **kw))


def test_cli_score_version_1_model_with_version_2_inputs_exit_2(tmp_path):
    from typer.testing import CliRunner

    from micronet_onnx.cli.app import app

    path = tmp_path / "v1.onnx"
    onnx.save(one_ternary(codes_all_channels(2, 3), opset=1, in_bias=True), path)
    r = CliRunner().invoke(app, ["score", str(path)])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnx: error:") and "opset 1" in lines[0]


def test_version_1_and_version_2_exports_score_the_same():
    """The v2 export moves bn1 into conv1 and the Add into conv2: with every channel of each block input
    read, params_paper, the ops (per category too) and the dense equivalent are unchanged; the file
    stores bn1 as two float32 vectors instead of four."""
    import tempfile
    from pathlib import Path

    from micronet_onnx.export import export_model
    from tests.helpers.models import tiny_model

    model = tiny_model(ternary=True, dead=False, zeros=0.5, seed=4)
    reports = {}
    with tempfile.TemporaryDirectory() as d:
        for version in (1, 2):
            path = Path(d) / f"v{version}.onnx"
            export_model(model, path, ternary=True, format_version=version, check=False)
            reports[version] = score_model(path, ScoreOptions(input_shape=(2, 3, 32, 32)))
    r1, r2 = reports[1], reports[2]
    conv1 = [x for x in r2.layers if x.name.endswith("conv1")]
    assert conv1 and all(x.in_channels[0] == x.in_channels[1] for x in conv1)  # every channel read
    assert r2.params_paper == pytest.approx(r1.params_paper, rel=1e-12)
    assert r2.ops == pytest.approx(r1.ops, rel=1e-12)
    assert r2.mults == r1.mults and r2.adds == r1.adds
    assert r2.ops_by_category == pytest.approx(r1.ops_by_category, rel=1e-12)
    assert r2.dense_fp32_params == r1.dense_fp32_params
    assert {x.op_type for x in r1.layers} - {x.op_type for x in r2.layers} == {"BatchNormalization", "Add"}
    bn1 = sum(blk.bn1.num_features for blk in model.blocks())
    assert r1.params_stored - r2.params_stored == (4 - 2) * bn1  # 32-bit units
    for r in (r1, r2):
        assert r.params_stored * 4 == r.initializer_bytes


def test_standalone_batchnorm_counts_half_per_channel():
    c = 6
    b = Builder()
    ones, zeros = np.ones(c, np.float32), np.zeros(c, np.float32)
    bn_in = [b.init("g", ones), b.init("b", zeros), b.init("m", zeros), b.init("v", ones)]
    b.node("BatchNormalization", ["x", *bn_in], ["y"], name="bn")
    rep = score_model(b.model({"x": [1, c, 4, 4]}, ["y"]))
    bn = layer(rep, "bn")
    assert bn.params_paper == c / 2
    assert bn.params_stored == 4 * c * 4 / 4  # four float32 vectors
    assert bn.dense_fp32_params == 4 * c


def test_batchnorm_effective_channels_follow_the_ternary_consumer():
    c = 4
    b = Builder()
    ones, zeros = np.ones(c, np.float32), np.zeros(c, np.float32)
    bn_in = [b.init("g", ones), b.init("b", zeros), b.init("m", zeros), b.init("v", ones)]
    b.node("BatchNormalization", ["x", *bn_in], ["h"], name="bn")
    codes = codes_all_channels(2, c)
    codes[:, 3] = 0  # channel 3 of the BN output is read by nobody
    b.ternary("t", "h", "y", codes)
    rep = score_model(b.model({"x": [1, c, 4, 4]}, ["y"]))
    assert layer(rep, "bn").params_paper == (c - 1) / 2


def _dense_conv_model(fp16: bool) -> onnx.ModelProto:
    b = Builder()
    w = np.arange(4 * 3 * 3 * 3, dtype=np.float32).reshape(4, 3, 3, 3) + 1  # no zeros
    bias = np.ones(4, np.float32)
    if fp16:
        b.init("w16", w.astype(np.float16))
        b.init("b16", bias.astype(np.float16))
        b.node("Cast", ["w16"], ["w"], name="cast_w", to=TensorProto.FLOAT)
        b.node("Cast", ["b16"], ["bias"], name="cast_b", to=TensorProto.FLOAT)
    else:
        b.init("w", w)
        b.init("bias", bias)
    b.node("Conv", ["x", "w", "bias"], ["y"], name="conv", pads=[1, 1, 1, 1])
    return b.model({"x": [1, 3, 5, 5]}, ["y"])


def test_dense_conv_fp32_vs_fp16():
    f32 = layer(score_model(_dense_conv_model(False)), "conv")
    f16 = layer(score_model(_dense_conv_model(True)), "conv")
    assert f32.params_paper == 4 * 3 * 9 + 4
    assert f16.params_paper == (4 * 3 * 9 + 4) / 2
    assert f32.params_stored == 4 * 3 * 9 + 4
    assert f16.params_stored == (4 * 3 * 9 + 4) / 2
    assert f32.dense_fp32_params == f16.dense_fp32_params == 4 * 3 * 9 + 4
    # ops: 25 positions * 4 channels, 27 mults at the stored width, 26 adds + 1 bias add at 32 bit
    out = 5 * 5 * 4
    assert f32.ops == pytest.approx(out * 27 * 32 / 32 + out * 26 + out)
    assert f16.ops == pytest.approx(out * 27 * 16 / 32 + out * 26 + out)
    # the Cast nodes are folded into the conv, not layers of their own
    rep16 = score_model(_dense_conv_model(True))
    assert [x.name for x in rep16.layers] == ["conv"]


def _gemm_model(fp16: bool) -> onnx.ModelProto:
    b = Builder()
    w = np.arange(1, 81, dtype=np.float32).reshape(10, 8)
    if fp16:
        b.init("w16", w.astype(np.float16))
        b.node("Cast", ["w16"], ["w"], name="cast", to=TensorProto.FLOAT)
    else:
        b.init("w", w)
    b.init("c", np.zeros(10, np.float32))
    b.node("Gemm", ["x", "w", "c"], ["y"], name="fc", transB=1)
    return b.model({"x": [1, 8]}, ["y"])


def test_gemm_fp32_vs_fp16():
    f32 = layer(score_model(_gemm_model(False)), "fc")
    f16 = layer(score_model(_gemm_model(True)), "fc")
    assert f32.params_paper == 80 + 10
    assert f16.params_paper == 80 / 2 + 10
    # 80 mults at the weight's width, 10 * 7 adds and 10 bias adds at 32 bit
    assert f32.ops == pytest.approx(80 + 70 + 10)
    assert f16.ops == pytest.approx(80 * 16 / 32 + 70 + 10)
    assert f32.in_channels == [8, 8] and f32.out_channels == [10, 10]


def test_dense_bits_option_overrides_stored_dtype():
    rep = score_model(_gemm_model(False), ScoreOptions(dense_bits=8))
    assert layer(rep, "fc").ops == pytest.approx(80 * 8 / 32 + 70 + 10)


def test_reshape_shape_initializer_is_stored_but_not_a_paper_parameter():
    b = Builder()
    b.init("shape", np.array([1, -1], np.int64))
    b.node("Reshape", ["x", "shape"], ["y"], name="reshape")
    rep = score_model(b.model({"x": [1, 2, 3]}, ["y"]))
    r = layer(rep, "reshape")
    assert r.params_paper == 0
    assert r.params_stored == 2 * 8 / 4
    assert r.ops == 0


# ------------------------------------------------------------------------------------------------
# Operations
# ------------------------------------------------------------------------------------------------


def test_ternary_ops_nnz_based():
    codes = codes_all_channels(4, 3)  # rows of 3 non-zeros
    codes[0, 0, 0, 0] = -1  # row 0: 4 non-zeros
    codes[3] = 0  # dead row: no ops
    rep = score_model(one_ternary(codes, hw=6))
    t = layer(rep, "t")
    pos, m_eff = 6 * 6, 3  # pad 1, stride 1 keeps 6x6
    mults = 2 * pos * m_eff  # two centroid mults at 16 bit
    adds = pos * ((4 - 1) + (3 - 1) + (3 - 1))  # nnz_r - 1 per live row, 32 bit
    assert t.mults == mults and t.adds == adds
    assert t.ops == pytest.approx(mults * 16 / 32 + adds * 32 / 32)


def test_ternary_ops_bias_relu_scale_and_stride():
    codes = codes_all_channels(2, 3)
    rep = score_model(one_ternary(codes, hw=8, stride=2, scale=True, bias=True, activation="Relu"))
    t = layer(rep, "t")
    assert t.output_shape == [1, 2, 4, 4]  # floor((8 + 2 - 3) / 2) + 1 = 4
    pos, m = 4 * 4, 2
    ternary = 2 * pos * m * 16 / 32 + pos * m * (3 - 1)
    bias = pos * m * 32 / 32
    relu = pos * m * 16 / 32  # a ReLU counts as one multiplication
    assert t.ops == pytest.approx(ternary + bias + relu)  # the scale is merged: 0
    unmerged = layer(
        score_model(
            one_ternary(codes, hw=8, stride=2, scale=True, bias=True, activation="Relu"),
            ScoreOptions(merge_scale=False),
        ),
        "t",
    )
    assert unmerged.ops == pytest.approx(ternary + bias + relu + pos * m * 16 / 32)


def test_ternary_mult_bits_one_bit_counts_one_32nd():
    codes = codes_all_channels(2, 3)
    t = layer(score_model(one_ternary(codes, hw=4), ScoreOptions(mult_bits=1)), "t")
    pos, m = 16, 2
    assert t.ops == pytest.approx(2 * pos * m / 32 + pos * m * 2)


def test_elementwise_pool_and_residual_ops():
    b = Builder()
    c, h = 4, 6
    ones, zeros = np.ones(c, np.float32), np.zeros(c, np.float32)
    bn_in = [b.init("g", ones), b.init("b", zeros), b.init("m", zeros), b.init("v", ones)]
    b.node("BatchNormalization", ["x", *bn_in], ["bn_y"], name="bn")
    b.node("Relu", ["bn_y"], ["r"], name="relu")
    b.node("Add", ["r", "x"], ["a"], name="add")
    b.node("MaxPool", ["a"], ["mp"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2])
    b.node("AveragePool", ["mp"], ["ap"], name="avgpool", kernel_shape=[3, 3])
    b.node("GlobalAveragePool", ["a"], ["gap"], name="gap")
    b.node("Flatten", ["gap"], ["f"], name="flatten")
    b.init("wm", np.ones((c, 3), np.float32))
    b.node("MatMul", ["f", "wm"], ["mm"], name="matmul")
    rep = score_model(b.model({"x": [1, c, h, h]}, ["mm", "ap"]))
    n = c * h * h
    assert layer(rep, "bn").ops == pytest.approx(n * 16 / 32 + n)  # one mult + one add per element
    assert layer(rep, "relu").ops == pytest.approx(n * 16 / 32)
    assert layer(rep, "add").ops == pytest.approx(n)
    assert layer(rep, "add").ops_detail == {"residual_add": n}
    n_mp = c * 3 * 3
    assert layer(rep, "maxpool").ops == pytest.approx(n_mp * (4 - 1) * 16 / 32)  # comparisons
    n_ap = c * 1 * 1
    assert layer(rep, "avgpool").ops == pytest.approx(n_ap * (9 - 1) + n_ap * 16 / 32)
    assert layer(rep, "gap").ops == pytest.approx(c * 16 / 32 + c * (h * h - 1))
    assert layer(rep, "flatten").ops == 0
    assert layer(rep, "matmul").ops == pytest.approx(3 * c + 3 * (c - 1))
    assert rep.ops == pytest.approx(sum(x.ops for x in rep.layers))


def test_tree_adder_bits_formula():
    assert tree_adder_bits(1) == 0
    assert tree_adder_bits(2) == 16
    assert tree_adder_bits(5) == 2 * 16 + 1 * 17 + 1 * 18  # 5 -> 3 -> 2 -> 1
    assert tree_adder_bits(8) == 4 * 16 + 2 * 17 + 1 * 18
    assert tree_adder_bits(4, base_bits=31, max_bits=32) == 2 * 31 + 1 * 32
    assert tree_adder_bits(8, base_bits=31, max_bits=32) == 4 * 31 + 2 * 32 + 1 * 32  # capped


def test_tree_adder_option_on_ternary_layer():
    codes = np.zeros((2, 5, 3, 3), np.int8)
    codes[0, :, 1, 1] = 1  # row 0: 5 non-zeros
    codes[1, :2, 1, 1] = -1  # row 1: 2 non-zeros
    flat = layer(score_model(one_ternary(codes, hw=4)), "t")
    tree = layer(score_model(one_ternary(codes, hw=4), ScoreOptions(tree_adder=True)), "t")
    pos = 16
    mult_ops = 2 * pos * 2 * 16 / 32
    assert flat.ops == pytest.approx(mult_ops + pos * ((5 - 1) + (2 - 1)))
    assert tree.ops == pytest.approx(mult_ops + pos * ((2 * 16 + 17 + 18) + 16) / 32)
    assert tree.adds == flat.adds  # same count, narrower adders


# ------------------------------------------------------------------------------------------------
# Alternative formats of the improved reference scorer
# ------------------------------------------------------------------------------------------------


def test_alternative_formats_formulas():
    n, nnz, m = 1000, 100, 10
    alts = alternative_formats(n, nnz, m)
    assert alts["fp16+mask"] == nnz / 2 + n / 32
    assert alts["CSR"] == math.ceil((nnz * 17 + (m + 1) * 16 + 32) / 32)
    assert alts["CER"] == math.ceil((nnz * 16 + 2 * (m + 1) * 16 + 32) / 32)
    assert alts["2 masks"] == math.ceil((2 * n + 32) / 32)
    assert alts["mask+sign"] == math.ceil((n + nnz + 32) / 32)
    assert best_alternative(n, nnz, m)["name"] == "mask+sign"
    # very sparse: CSR wins
    assert best_alternative(100_000, 10, 10)["name"] == "CSR"
    # a dense tensor needs no mask; non-ternary values have no mask formats
    dense = alternative_formats(50, 50, 5, two_valued=False)
    assert dense["fp16+mask"] == 50 / 2 and set(dense) == {"fp16+mask", "CSR", "CER"}


def test_ternary_layer_reports_best_alternative():
    codes = codes_all_channels(4, 3)
    codes[3] = 0
    t = layer(score_model(one_ternary(codes)), "t")
    n_eff_weights, nnz, m_eff = 3 * 9 * 3, 9, 3
    assert t.best_alternative.all == alternative_formats(n_eff_weights, nnz, m_eff)
    assert t.best_alternative.params == min(alternative_formats(n_eff_weights, nnz, m_eff).values())


# ------------------------------------------------------------------------------------------------
# A whole MicroNet-shaped graph: totals, stored bytes, score, rendering
# ------------------------------------------------------------------------------------------------


def _micronet_like() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    b = Builder()
    b.init("stem.w", rng.standard_normal((8, 3, 3, 3)).astype(np.float16))
    b.node("Cast", ["stem.w"], ["stem.wf"], name="stem.cast", to=TensorProto.FLOAT)
    b.init("stem.b", rng.standard_normal(8).astype(np.float32))
    b.node("Conv", ["x", "stem.wf", "stem.b"], ["s"], name="stem", pads=[1, 1, 1, 1])
    b.node("Relu", ["s"], ["s1"], name="stem.relu")
    ones, zeros = np.ones(8, np.float32), np.zeros(8, np.float32)
    bn_in = [b.init("bn1.g", ones), b.init("bn1.b", zeros), b.init("bn1.m", zeros), b.init("bn1.v", ones)]
    b.node("BatchNormalization", ["s1", *bn_in], ["b1"], name="bn1")
    c1 = rng.choice(np.array([-1, 0, 0, 1], np.int8), size=(8, 8, 3, 3))
    c1[5] = 0
    b.ternary(
        "conv1",
        "b1",
        "t1",
        c1[[0, 1, 2, 3, 4, 6, 7]],
        scale=True,
        bias=True,
        activation="Relu",
        out_map=[0, 1, 2, 3, 4, 6, 7],
        m_out=8,
    )
    c2 = rng.choice(np.array([-1, 0, 0, 1], np.int8), size=(16, 8, 3, 3))
    b.ternary("conv2", "t1", "t2", c2, scale=True, bias=True, stride=2)
    b.init("sc.w", rng.standard_normal((16, 8, 1, 1)).astype(np.float32))
    b.init("sc.b", np.zeros(16, np.float32))
    b.node("Conv", ["s1", "sc.w", "sc.b"], ["sc"], name="shortcut", strides=[2, 2])
    b.node("Add", ["t2", "sc"], ["a"], name="add")
    b.node("Relu", ["a"], ["r"], name="head.relu")
    b.node("GlobalAveragePool", ["r"], ["p"], name="gap")
    b.node("Flatten", ["p"], ["f"], name="flatten")
    b.init("fc.w", rng.standard_normal((10, 16)).astype(np.float32))
    b.init("fc.b", np.zeros(10, np.float32))
    b.node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1)
    return b.model({"x": ["N", 3, 8, 8]}, ["y"])


def test_params_stored_reconciles_with_initializer_bytes(tmp_path):
    model = _micronet_like()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    rep = score_model(path)
    raw = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    assert rep.initializer_bytes == raw
    assert rep.params_stored * 4 == raw
    assert rep.file_bytes == path.stat().st_size
    assert rep.file_bytes >= rep.initializer_bytes
    assert rep.params_paper == pytest.approx(sum(x.params_paper for x in rep.layers))
    # the 1x1 shortcut conv is counted (fp32: one per value)
    assert layer(rep, "shortcut").params_paper == 16 * 8 + 16
    # the stem's Cast is folded into the stem
    assert "stem.cast" not in [x.name for x in rep.layers]
    assert layer(rep, "stem").params_paper == 8 * 3 * 9 / 2 + 8


def test_score_formula_and_json(tmp_path):
    rep = score_model(_micronet_like())
    assert rep.score == pytest.approx(rep.params_paper / 36.5e6 + rep.ops / 10.49e9)
    assert rep.score_stored == pytest.approx(
        rep.params_stored / REFERENCE_PARAMS + rep.ops / REFERENCE_OPS
    )
    assert rep.compression_ratio == pytest.approx(rep.dense_fp32_params / rep.params_stored)
    assert rep.input_shapes == {"x": [1, 3, 8, 8]}  # symbolic batch -> 1
    back = json.loads(report_to_json(rep))
    for key in ("params_paper", "params_stored", "file_bytes", "ops", "score", "layers"):
        assert key in back
    for x in back["layers"]:
        for key in ("name", "op_type", "sparsity", "params_paper", "params_stored"):
            assert key in x
    conv1 = layer(rep, "conv1")
    assert conv1.out_channels == [7, 8]
    text = render_table(rep)
    assert "conv1" in text and "7/8" in text and "TernaryConv" in text
    assert "params_paper" in text and "score" in text and "compression" in text


def test_input_shape_override_and_symbolic_dims():
    b = Builder()
    b.ternary("t", "x", "y", codes_all_channels(2, 3))
    model = b.model({"x": ["N", 3, "H", "W"]}, ["y"])
    with pytest.raises(ScoreInputError, match="input_shape"):
        score_model(model)
    t = layer(score_model(model, ScoreOptions(input_shape=(1, 3, 4, 4))), "t")
    assert t.output_shape == [1, 2, 4, 4]
    assert t.ops == pytest.approx(2 * 16 * 2 * 16 / 32 + 16 * 2 * (3 - 1))


def test_unknown_op_counts_zero_and_is_listed():
    b = Builder()
    b.nodes.append(helper.make_node("Mystery", ["x"], ["y"], name="m", domain="other"))
    b.node("Relu", ["y"], ["z"], name="relu")
    model = b.model({"x": [1, 2, 3, 3]}, ["z"])
    model.opset_import.append(helper.make_opsetid("other", 1))
    rep = score_model(model)
    assert layer(rep, "m").ops == 0 and layer(rep, "m").unknown
    assert rep.unknown_ops == ["other::Mystery"]
    assert "Mystery?" in render_table(rep)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ScoreInputError, match="no such file"):
        score_model(tmp_path / "nope.onnx")


def test_non_onnx_and_empty_files(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 10)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for p in (text, empty, tmp_path):
        with pytest.raises(ScoreInputError) as info:
            score_model(p)
        assert "\n" not in str(info.value)
    assert issubclass(ScoreInputError, ValueError)


def test_truncated_file(tmp_path):
    data = _micronet_like().SerializeToString()
    for cut in (10, len(data) // 3, len(data) // 2, len(data) - 40, len(data) - 5, len(data) - 1):
        p = tmp_path / f"cut{cut}.onnx"
        p.write_bytes(data[:cut])
        with pytest.raises(ScoreInputError):
            score_model(p)


def test_malformed_ternary_node_is_an_input_error():
    codes = codes_all_channels(2, 3)
    model = one_ternary(codes)
    for t in model.graph.initializer:
        if t.name == "t.sign":
            t.CopyFrom(numpy_helper.from_array(np.zeros(5, np.uint8), "t.sign"))  # wrong length
    with pytest.raises(ScoreInputError, match="TernaryConv"):
        score_model(model)


# ------------------------------------------------------------------------------------------------
# More graph shapes: grouped ternary conv, quantized and Constant weights
# ------------------------------------------------------------------------------------------------


def test_grouped_ternary_counts_effective_weights_per_group():
    b = Builder()
    codes = codes_all_channels(4, 2)  # group 2: rows 0-1 read X channels 0-1, rows 2-3 read 2-3
    codes[2:, 1] = 0  # X channel 3 unused
    packed = tf.pack_ternary(codes, -0.5, 0.25)
    ins = ["x", b.init("m", packed.mask), b.init("s", packed.sign), b.init("c", packed.centroids)]
    attrs = tf.ConvAttrs(weight_shape=(4, 2, 3, 3), pads=(1, 1, 1, 1), group=2)
    b.nodes.append(helper.make_node(tf.OP_TYPE, ins, ["y"], name="t", domain=tf.DOMAIN, **attrs.to_onnx()))
    t = layer(score_model(b.model({"x": [1, 4, 4, 4]}, ["y"])), "t")
    eff = 2 * 9 * 2 + 1 * 9 * 2  # sum over groups of N_g K^2 M_g
    nnz = 8 - 2
    assert t.in_channels == [3, 4]
    assert t.params_paper == pytest.approx(eff / 32 + nnz / 32 + 1)


def test_dequantized_int8_weight_counts_at_8_bits():
    b = Builder()
    b.init("wq", np.arange(1, 13, dtype=np.int8).reshape(3, 4))
    b.init("ws", np.array(0.1, np.float32))
    b.init("wz", np.array(0, np.int8))
    b.node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dq")
    b.node("MatMul", ["x", "w"], ["y"], name="mm")
    rep = score_model(b.model({"x": [1, 3]}, ["y"]))
    mm = layer(rep, "mm")
    assert mm.params_paper == pytest.approx(12 * 8 / 32 + 1 + 8 / 32)
    assert mm.ops == pytest.approx(4 * 3 * 8 / 32 + 4 * (3 - 1))  # mults at the stored 8 bit
    assert [x.name for x in rep.layers] == ["mm"]


def test_constant_node_weights_are_stored_values():
    b = Builder()
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    b.nodes.append(helper.make_node("Constant", [], ["w"], name="const", value=w))
    b.node("MatMul", ["x", "w"], ["y"], name="mm")
    rep = score_model(b.model({"x": [1, 2]}, ["y"]))
    assert rep.initializer_bytes == 0 and rep.constant_bytes == 6 * 4
    assert rep.params_stored == 6 and rep.params_paper == 6


# ------------------------------------------------------------------------------------------------
# The typed report and its JSON form
# ------------------------------------------------------------------------------------------------


def test_report_json_has_the_documented_keys_and_matches_the_records():
    rep = score_model(_micronet_like())
    d = rep.to_dict()
    assert list(d) == [  # docs/scoring.md, "Report (JSON)", in order
        "model", "file_bytes", "initializer_bytes", "constant_bytes", "params_paper", "params_stored",
        "params_best_format", "entropy_bound", "assignment_params", "dense_fp32_params", "compression_ratio",
        "compression_ratio_paper", "ops", "mults",
        "adds", "ops_by_category", "score", "score_stored", "score_terms", "reference", "options", "input_shapes",
        "num_ternary_layers", "unknown_ops", "warnings", "layers",
    ]
    common = ["name", "op_type", "domain", "output_shape", "in_channels", "out_channels", "kernel", "sparsity",
              "params_paper", "params_paper_detail", "params_stored", "dense_fp32_params", "weight_format_params",
              "best_alternative", "unknown", "shape_unknown", "initializers"]
    ternary = ["stored_channels", "group", "nnz", "weights_effective", "weights_stored", "sparsity_stored",
               "encoding", "assignment_params", "entropy_bound"]
    tail = ["mults", "adds", "ops", "ops_detail"]
    for record, x in zip(rep.layers, d["layers"], strict=True):
        if record.op_type == "TernaryConv":
            assert list(x) == common + ternary + tail
        else:
            assert list(x) == common + (["nnz"] if record.nnz is not None else []) + tail
        for key in set(x) - {"best_alternative"}:
            assert x[key] == getattr(record, key)
        assert x["best_alternative"] == (record.best_alternative and record.best_alternative.to_dict())
    for key in set(d) - {"layers", "options", "score_terms", "reference"}:
        assert d[key] == getattr(rep, key)
    assert d["score_terms"]["ops"] == rep.score_terms.ops and d["reference"]["params"] == rep.reference.params
    assert d["options"]["mult_bits"] == rep.options.mult_bits == 16
    assert json.loads(report_to_json(rep)) == d


def test_unused_constants_pseudo_layer_json():
    b = Builder()
    b.init("orphan", np.ones(3, np.float32))
    b.node("Relu", ["x"], ["y"], name="relu")
    rep = score_model(b.model({"x": [1, 2]}, ["y"]))
    unused = rep.to_dict()["layers"][-1]
    assert list(unused) == ["name", "op_type", "params_paper", "params_stored", "dense_fp32_params", "initializers",
                            "sparsity", "mults", "adds", "ops", "ops_detail"]
    assert unused["name"] == "(unused constants)" and unused["params_stored"] == 3
    assert unused["initializers"] == ["orphan"]
    assert rep.warnings == ["1 stored constant(s) are not used by any node"]
