"""The TernaryConv node model (micronet_onnx/format/node.py), its lowering (lower.py) and the version
checks (versions.py): round trips, every validation error, and the lowering and output size held to
the reference op."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from micronet_onnx.format import spec as tf
from micronet_onnx.format import versions
from micronet_onnx.format.node import TernaryConvNode, decode_codes, is_ternary_conv
from micronet_onnx.format.reference_op import evaluate, reference_evaluator
from tests.helpers.nodes import random_node

# (m_stored, cin_per_group, k, kwargs) of random nodes covering every optional input and attribute.
CASES = [
    (4, 3, (3, 3), dict(pads=(1, 1, 1, 1))),
    (4, 3, (3, 3), dict(affine=True, relu=True, strides=(2, 2))),
    (6, 2, (3, 1), dict(group=3, affine=True, dilations=(2, 1), pads=(2, 0, 1, 1))),
    (3, 4, (1, 1), dict(m_out=5, x_channels=7, affine=True, relu=True)),
    (5, 3, (3, 3), dict(m_out=8, x_channels=4, bias=True, pads=(0, 2, 1, 1), strides=(2, 1))),
    (4, 3, (3, 3), dict(in_affine=True, residual=True, affine=True, relu=True, pads=(1, 1, 1, 1))),
    (4, 3, (3, 3), dict(in_scale=True, x_channels=5, m_out=6, residual=True, relu=True, pads=(1, 1, 1, 1))),
    (4, 2, (3, 3), dict(group=2, in_bias=True, residual=True, strides=(2, 2), pads=(1, 1, 1, 1))),
]
ANY = ["B", "M", "OH", "OW"]
V2_KEYS = ("in_affine", "in_scale", "in_bias", "residual")


def _node(i: int, *, version: int = tf.OPSET_VERSION, name: str = "tc") -> tuple[TernaryConvNode, object]:
    m, n, k, kw = CASES[i]
    helper_node = random_node(np.random.default_rng(100 + i), m, n, k, **kw)
    node = TernaryConvNode.from_tensors(
        helper_node.attrs, *helper_node.input_arrays(), name=name, x="X", output="Y",
        residual="R" if helper_node.residual_seed is not None else None, version=version)
    return node, helper_node


def _v1_cases() -> list[int]:
    return [i for i, c in enumerate(CASES) if not any(c[3].get(k) for k in V2_KEYS)]


def _x_channels(node: TernaryConvNode) -> int:
    return node.n_stored if node.in_channels is None else int(node.in_channels.max()) + 1


def _model(nodes, inits, node: TernaryConvNode, x_shape, *, ternary: bool) -> onnx.ModelProto:
    g_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    if node.residual:
        g_inputs.append(helper.make_tensor_value_info(node.residual, TensorProto.FLOAT, ANY))
    graph = helper.make_graph(nodes, "g", g_inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ANY)],
                              inits)
    return helper.make_model(graph, opset_imports=versions.opset_imports(ternary=ternary,
                                                                         format_version=node.version),
                             ir_version=versions.IR_VERSION)


def _same(a: TernaryConvNode, b: TernaryConvNode) -> None:
    assert (a.name, a.x, a.output, a.residual, a.version, a.attrs) == (b.name, b.x, b.output, b.residual, b.version,
                                                                       b.attrs)
    for field in ("codes", "centroids", "scale", "bias", "in_channels", "out_channels", "in_scale", "in_bias"):
        va, vb = getattr(a, field), getattr(b, field)
        assert (va is None) == (vb is None), field
        if va is not None:
            assert va.dtype == vb.dtype, field
            np.testing.assert_array_equal(va, vb, err_msg=field)


# -- round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", tf.SUPPORTED_OPSET_VERSIONS)
@pytest.mark.parametrize("i", range(len(CASES)))
def test_to_onnx_from_onnx_round_trip(i, version):
    if version == 1 and i not in _v1_cases():
        pytest.skip("version-2 inputs")
    node, _ = _node(i, version=version)
    proto, inits = node.to_onnx()
    assert is_ternary_conv(proto) and proto.name == "tc" and list(proto.output) == ["Y"]
    assert all(t.name.startswith("tc.") for t in inits)
    assert proto.input[-1] != "" and len(proto.input) <= versions.max_inputs(version)
    assert [a.name for a in proto.attribute] == list(node.attrs.to_onnx()) + (
        [tf.ATTR_ENCODING] if version >= tf.ENCODING_VERSION else [])
    constants = {t.name: numpy_helper.to_array(t) for t in inits}
    back = TernaryConvNode.from_onnx(proto, constants, version, x_channels=_x_channels(node))
    _same(node, back)
    again, inits2 = back.to_onnx()
    assert again.SerializeToString() == proto.SerializeToString()
    assert [t.SerializeToString() for t in inits2] == [t.SerializeToString() for t in inits]


def test_initializer_names_follow_the_node_name():
    node, _ = _node(6, name="stage1.0.conv1")
    _, inits = node.to_onnx()
    assert [t.name for t in inits] == [f"stage1.0.conv1.{n}" for n in
                                       ("mask", "sign", "centroids", "in_channels", "out_channels", "in_scale")]


def test_dense_weight_is_the_decoded_codes():
    node, h = _node(1)
    w = node.dense_weight()
    assert w.dtype == np.float32 and w.shape == node.attrs.weight_shape
    c = h.packed.centroids.astype(np.float32)
    np.testing.assert_array_equal(w, np.where(node.codes > 0, c[1], np.where(node.codes < 0, c[0], 0)))
    np.testing.assert_array_equal(decode_codes(node.codes, node.centroids), w)


# -- validation --------------------------------------------------------------------------------


def _proto(i: int = 4, version: int = 2):
    node, _ = _node(i, version=version)
    proto, inits = node.to_onnx()
    return node, proto, {t.name: numpy_helper.to_array(t) for t in inits}


def _set_attr(proto, name, value):
    kept = [a for a in proto.attribute if a.name != name]
    del proto.attribute[:]
    proto.attribute.extend(kept)
    if value is not None:
        proto.attribute.append(value if isinstance(value, onnx.AttributeProto) else helper.make_attribute(name, value))


def _bad_attr(name, value):
    def mutate(proto, consts):
        _set_attr(proto, name, value)
    return mutate


def _bad_const(suffix, value):
    def mutate(proto, consts):
        consts[f"tc.{suffix}"] = value
    return mutate


def _drop_const(suffix):
    def mutate(proto, consts):
        del consts[f"tc.{suffix}"]
    return mutate


def _inputs(names):
    def mutate(proto, consts):
        del proto.input[:]
        proto.input.extend(names)
    return mutate


def _weight_shape_int(proto, consts):
    _set_attr(proto, "weight_shape", helper.make_attribute("weight_shape", 5))


BAD = {
    "weight_shape type": (_weight_shape_int, "weight_shape must be of type INTS"),
    "group type": (_bad_attr("group", [1]), "group must be of type INT"),
    "activation type": (_bad_attr("activation", 1), "activation must be of type STRING"),
    "no weight_shape": (_bad_attr("weight_shape", None), "missing required attribute weight_shape"),
    "bad activation": (_bad_attr("activation", "Sigmoid"), "activation must be one of"),
    "zero stride": (_bad_attr("strides", [0, 1]), "strides"),
    "negative pad": (_bad_attr("pads", [0, -1, 0, 0]), "pads"),
    "group": (_bad_attr("group", 2), "group 2"),
    "m_out below m_stored": (_bad_attr("num_output_channels", 3), "num_output_channels 3 < weight_shape"),
    "too few inputs": (_inputs(["X", "tc.mask", "tc.sign"]), "has 3 inputs"),
    "too many inputs": (_inputs(["X", *["tc.mask"] * 11]), "at most 11"),
    "empty mask": (_inputs(["X", "", "tc.sign", "tc.centroids"]), r"input 1 \(mask\) is required"),
    "not an initializer": (_drop_const("sign"), r"input 2 \(sign\) must be an initializer"),
    "mask length": (_bad_const("mask", np.zeros(1, np.uint8)), "bit array holds 1 bytes"),
    "mask dtype": (_bad_const("mask", np.zeros(23, np.int8)), "bit array must be uint8"),
    "sign length": (_bad_const("sign", np.zeros(40, np.uint8)), "sign holds 40 bytes"),
    "centroids dtype": (_bad_const("centroids", np.zeros(2, np.float32)), "centroids must be float16"),
    "bias length": (_bad_const("bias", np.zeros(5, np.float16)), r"bias must be float16 \[8\]"),
    "in_channels dtype": (_bad_const("in_channels", np.arange(3, dtype=np.int64)), "in_channels must be int32"),
    "in_channels repeat": (_bad_const("in_channels", np.array([0, 1, 1], np.int32)), "in_channels repeats"),
    "in_channels range": (_bad_const("in_channels", np.array([0, 1, 9], np.int32)), "in_channels has an index"),
    "out_channels range": (_bad_const("out_channels", np.array([0, 1, 2, 3, 8], np.int32)), "out_channels has an"),
    "no out_channels": (_inputs(["X", "tc.mask", "tc.sign", "tc.centroids", "", "tc.bias", "tc.in_channels"]),
                        "without out_channels"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_from_onnx_errors(case):
    mutate, message = BAD[case]
    node, proto, consts = _proto()
    mutate(proto, consts)
    with pytest.raises(tf.FormatError, match=message):
        TernaryConvNode.from_onnx(proto, consts, 2, x_channels=4)


def test_from_onnx_errors_for_the_node_kind_version_and_channels():
    node, proto, consts = _proto(5)  # in_scale, in_bias, residual: version 2 only
    with pytest.raises(tf.FormatError, match="opset 1 nodes have at least 4 and at most 8"):
        TernaryConvNode.from_onnx(proto, consts, 1)
    with pytest.raises(tf.FormatError, match="micronet opset 4 is not a supported format version"):
        TernaryConvNode.from_onnx(proto, consts, 4)
    with pytest.raises(tf.FormatError, match="X has 5 channels, the weight reads 3"):
        TernaryConvNode.from_onnx(proto, consts, 2, x_channels=5)
    consts["tc.in_scale"] = consts["tc.in_scale"].astype(np.float16)
    with pytest.raises(tf.FormatError, match=r"in_scale must be float32 \[3\]"):
        TernaryConvNode.from_onnx(proto, consts, 2)
    conv = helper.make_node("Conv", ["X", "W"], ["Y"])
    assert not is_ternary_conv(conv)
    with pytest.raises(tf.FormatError, match="not a micronet::TernaryConv"):
        TernaryConvNode.from_onnx(conv, {}, 2)
    two_out = helper.make_node(tf.OP_TYPE, list(proto.input), ["Y", "Z"], domain=tf.DOMAIN)
    with pytest.raises(tf.FormatError, match="exactly one output"):
        TernaryConvNode.from_onnx(two_out, consts, 2)


def test_padding_bits_and_group_rules():
    node, proto, consts = _proto(0)
    mask = consts["tc.mask"].copy()
    numel = int(np.prod(node.attrs.weight_shape))
    if numel % 8:
        mask[-1] |= np.uint8(0x80)
        consts["tc.mask"] = mask
        with pytest.raises(tf.FormatError, match="padding bits"):
            TernaryConvNode.from_onnx(proto, consts, 2)
    grouped, _ = _node(2)  # group 3
    grouped.in_channels = np.arange(6, dtype=np.int32)
    with pytest.raises(tf.FormatError, match="in_channels requires group == 1"):
        grouped.validate()


def test_direct_construction_is_validated():
    node, _ = _node(0)
    node.codes = node.codes.astype(np.int8) * 2
    with pytest.raises(tf.FormatError, match="codes must be in"):
        node.to_onnx()
    node, _ = _node(0)
    node.codes = node.codes.astype(np.int32)
    with pytest.raises(tf.FormatError, match="codes must be int8"):
        node.validate()
    v1, _ = _node(5, version=2)
    v1.version = 1
    with pytest.raises(tf.FormatError, match="in_scale, in_bias, residual came with micronet opset 2"):
        v1.validate()


# -- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("i", range(len(CASES)))
def test_output_shape_agrees_with_the_reference_op(i):
    node, h = _node(i)
    x = np.random.default_rng(i).standard_normal((2, _x_channels(node), 9, 8)).astype(np.float32)
    y = evaluate(node, x, h.residual_for(x))
    assert list(y.shape) == node.output_shape(x.shape)
    assert node.output_shape([None, None, 9, None]) == [None, node.m_out, y.shape[2], None]


def test_output_shape_and_residual_rules():
    node, _ = _node(1)  # 3x3, stride 2, no padding
    with pytest.raises(tf.FormatError, match="kernel larger than padded input"):
        node.output_shape([1, 3, 2, 5])
    with pytest.raises(tf.FormatError, match="rank 4"):
        node.output_shape([1, 3, 5])
    node.check_residual_shape([2, 4, 3, 3], [2, 3, 7, 7], np.float32)
    node.check_residual_shape([None, 4, None, 3], [2, 3, None, 7])
    for shape, dtype in (([2, 4, 3, 4], None), ([1, 4, 3, 3], None), ([2, 4, 9], None), ([2, 4, 3, 3], np.float64)):
        with pytest.raises(tf.FormatError, match="residual must be float32"):
            node.check_residual_shape(shape, [2, 3, 7, 7], dtype)
    with pytest.raises(tf.FormatError, match="X must be float32"):
        node.check_x([2, 3, 7, 7], np.float16)
    with pytest.raises(tf.FormatError, match="X has 4 channels"):
        node.check_x([2, 4, 7, 7])
    mapped, _ = _node(3)  # in_channels into 7 channels
    with pytest.raises(tf.FormatError, match="in_channels has an index"):
        mapped.check_x([1, int(mapped.in_channels.max()), 5, 5])


# -- lowering ----------------------------------------------------------------------------------


@pytest.mark.parametrize("known_channels", [True, False])
@pytest.mark.parametrize("i", range(len(CASES)))
def test_lowering_agrees_with_the_reference_op(i, known_channels):
    node, h = _node(i)
    c = _x_channels(node)
    x = np.random.default_rng(7 + i).standard_normal((2, c, 9, 8)).astype(np.float32)
    feeds = h.feeds(x)
    if node.residual:
        feeds = {"X": x, "R": feeds[h.residual_name]}
    proto, inits = node.to_onnx()
    x_shape = ["B", c, 9, 8] if known_channels else ["B", "C", 9, 8]
    (want,) = reference_evaluator(_model([proto], inits, node, x_shape, ternary=True)).run(None, feeds)
    nodes, dense_inits = node.lower(c if known_channels else None)
    assert all(n.domain == "" for n in nodes)
    assert any(n.op_type == "Gather" for n in nodes) == (node.in_channels is not None and not known_channels
                                                         and not (node.attrs.group > 1))
    dense = _model(nodes, dense_inits, node, x_shape, ternary=False)
    onnx.checker.check_model(dense, full_check=True)
    (got,) = ReferenceEvaluator(dense).run(None, feeds)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * (1 + float(np.abs(want).max())))


# -- versions ----------------------------------------------------------------------------------


def test_micronet_version():
    node, _ = _node(0)
    proto, inits = node.to_onnx()
    for version in tf.SUPPORTED_OPSET_VERSIONS:
        node.version = version
        assert versions.micronet_version(_model([proto], inits, node, None, ternary=True)) == version
    dense = _model(*node.lower(), node, None, ternary=False)
    assert versions.micronet_version(dense) is None
    bad = _model([proto], inits, node, None, ternary=True)
    bad.opset_import[1].version = 4
    with pytest.raises(tf.FormatError, match="micronet opset 4"):
        versions.micronet_version(bad)
    del bad.opset_import[1]
    with pytest.raises(tf.FormatError, match="does not import it"):
        versions.micronet_version(bad)
    bad.opset_import.extend([helper.make_opsetid(tf.DOMAIN, 1), helper.make_opsetid(tf.DOMAIN, 2)])
    with pytest.raises(tf.FormatError, match="several opsets"):
        versions.micronet_version(bad)


def test_format_version_and_input_count_checks():
    assert versions.check_format_version(1) == 1
    for bad in (0, 4, True, "2", 2.0):
        with pytest.raises(tf.FormatError, match="format version must be one of 1, 2, 3"):
            versions.check_format_version(bad)
    assert versions.max_inputs(1) == tf.MAX_INPUTS_V1 and versions.max_inputs(2) == tf.MAX_INPUTS
    versions.check_input_count(8, 1)
    with pytest.raises(tf.FormatError, match=r"input 8 came with micronet opset 2"):
        versions.check_input_count(9, 1)
    imports = versions.opset_imports(ternary=True, format_version=1)
    assert [(o.domain, o.version) for o in imports] == [("", versions.ONNX_OPSET), (tf.DOMAIN, 1)]
    assert [(o.domain, o.version) for o in versions.opset_imports(ternary=False)] == [("", versions.ONNX_OPSET)]
