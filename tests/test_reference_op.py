"""The numpy reference TernaryConv (micronet_onnx/reference_op.py) against explicit loops written from
docs/ternary-conv.md, "Semantics" - above all the format-version-2 inputs: in_scale / in_bias act
before the zero padding, the residual is added after the bias and before the activation."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from micronet_onnx.format import spec as tf
from micronet_onnx.format import versions
from micronet_onnx.format.node import decode_codes
from micronet_onnx.format.reference_op import reference_evaluator, ternary_conv


def explicit(x, w, attrs: tf.ConvAttrs, *, scale=None, bias=None, in_channels=None, out_channels=None,
             in_scale=None, in_bias=None, residual=None) -> np.ndarray:
    """The spec's pseudo-code, one output element at a time (group 1), in float64."""
    x = x.astype(np.float64)
    if in_channels is not None:
        x = x[:, in_channels]
    n = x.shape[1]
    xa = x * (np.ones(n) if in_scale is None else in_scale.astype(np.float64))[None, :, None, None]
    xa = xa + (np.zeros(n) if in_bias is None else in_bias.astype(np.float64))[None, :, None, None]
    top, left, bottom, right = attrs.pads
    b, _, h, wd = xa.shape
    padded = np.zeros((b, n, h + top + bottom, wd + left + right))
    padded[:, :, top:top + h, left:left + wd] = xa  # zeros around the normalised input
    m_stored, _, kh, kw = w.shape
    oh, ow = attrs.output_hw(h, wd)
    (sh, sw), (dh, dw) = attrs.strides, attrs.dilations
    z = np.zeros((b, m_stored, oh, ow))
    for i in range(oh):
        for j in range(ow):
            for u in range(kh):
                for v in range(kw):
                    z[:, :, i, j] += padded[:, :, i * sh + u * dh, j * sw + v * dw] @ w[:, :, u, v].T
    rows = np.arange(m_stored) if out_channels is None else out_channels
    c = np.zeros((b, attrs.m_out, oh, ow))
    c[:, rows] = z
    s = np.ones(attrs.m_out) if scale is None else scale.astype(np.float64)
    t = np.zeros(attrs.m_out) if bias is None else bias.astype(np.float64)
    y = s[None, :, None, None] * c + t[None, :, None, None]
    if residual is not None:
        y = y + residual
    return np.maximum(y, 0) if attrs.activation == "Relu" else y


def _node(rng, m, n, k=3, *, pads=(1, 1, 1, 1), strides=(1, 1), m_out=0, relu=False):
    codes = rng.choice(np.array([-1, 0, 0, 1], np.int8), size=(m, n, k, k))
    packed = tf.pack_ternary(codes, -0.4, 0.7)
    attrs = tf.ConvAttrs(weight_shape=(m, n, k, k), pads=pads, strides=strides, num_output_channels=m_out,
                         activation="Relu" if relu else "").validate()
    w = decode_codes(tf.unpack_codes(packed.mask, packed.sign, attrs.weight_shape), packed.centroids)
    w = w.astype(np.float64)
    return packed, attrs, w


def test_input_affine_acts_before_the_zero_padding():
    rng = np.random.default_rng(0)
    packed, attrs, w = _node(rng, 4, 3)
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    in_scale = np.array([1.5, -0.5, 2.0], np.float32)
    in_bias = np.array([3.0, -2.0, 1.0], np.float32)  # large: a padded border shows it
    y = ternary_conv(x, packed.mask, packed.sign, packed.centroids, in_scale=in_scale, in_bias=in_bias,
                     attrs=attrs)
    ref = explicit(x, w, attrs, in_scale=in_scale, in_bias=in_bias)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-5)
    # Normalising after the padding (the padded zeros becoming in_bias) gives other border values,
    # and the same interior: this test can tell the two apart.
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    wrong_x = xp * in_scale[None, :, None, None] + in_bias[None, :, None, None]
    wrong = explicit(wrong_x, w, tf.ConvAttrs(weight_shape=attrs.weight_shape).validate())
    assert np.abs(wrong - ref).max() > 0.1
    np.testing.assert_allclose(wrong[:, :, 1:-1, 1:-1], ref[:, :, 1:-1, 1:-1], atol=1e-9)


@pytest.mark.parametrize("which", ["in_scale", "in_bias"])
def test_each_input_affine_part_alone(which):
    rng = np.random.default_rng(1)
    packed, attrs, w = _node(rng, 3, 2, strides=(2, 2))
    x = rng.standard_normal((1, 2, 7, 7)).astype(np.float32)
    v = {which: np.array([0.75, -1.25], np.float32)}
    y = ternary_conv(x, packed.mask, packed.sign, packed.centroids, attrs=attrs, **v)
    np.testing.assert_allclose(y, explicit(x, w, attrs, **v), rtol=1e-6, atol=1e-5)


def test_input_affine_indexes_the_stored_channels_through_in_channels():
    rng = np.random.default_rng(2)
    packed, attrs, w = _node(rng, 3, 3)
    in_channels = np.array([4, 0, 2], np.int32)  # stored channel c reads X channel in_channels[c]
    in_scale = np.array([2.0, 0.5, -1.0], np.float32)
    in_bias = np.array([0.5, 1.0, -0.25], np.float32)
    x = rng.standard_normal((2, 5, 5, 5)).astype(np.float32)
    kw = dict(in_channels=in_channels, in_scale=in_scale, in_bias=in_bias)
    y = ternary_conv(x, packed.mask, packed.sign, packed.centroids, attrs=attrs, **kw)
    np.testing.assert_allclose(y, explicit(x, w, attrs, **kw), rtol=1e-6, atol=1e-5)


def test_residual_is_added_after_the_bias_and_before_the_activation():
    rng = np.random.default_rng(3)
    packed, attrs, w = _node(rng, 4, 3, m_out=6, relu=True, strides=(2, 2))
    out_channels = np.array([5, 0, 3, 2], np.int32)  # channels 1 and 4 are dead
    scale = np.array([1.0, 2.0, 0.5, 1.5, 1.0, 0.75], np.float16)
    bias = np.array([0.5, -0.5, 0.25, -1.0, 1.0, 0.0], np.float16)
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    residual = rng.standard_normal((3, 6, 4, 4)).astype(np.float32)
    kw = dict(scale=scale, bias=bias, out_channels=out_channels)
    y = ternary_conv(x, packed.mask, packed.sign, packed.centroids, residual=residual, attrs=attrs, **kw)
    ref = explicit(x, w, attrs, residual=residual, **kw)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-5)
    # dead channels: relu(bias + residual), a plane that follows the residual
    np.testing.assert_array_equal(y[:, [1, 4]], np.maximum(bias[[1, 4]].astype(np.float32)[None, :, None, None]
                                                           + residual[:, [1, 4]], 0))
    # added before the relu, not after it
    no_res = ternary_conv(x, packed.mask, packed.sign, packed.centroids, attrs=attrs, **kw)
    assert np.abs((no_res + residual) - y).max() > 0.1


def test_everything_together_batch_and_stride():
    rng = np.random.default_rng(4)
    packed, attrs, w = _node(rng, 5, 4, pads=(0, 2, 1, 1), strides=(2, 1), m_out=7, relu=True)
    kw = dict(
        scale=rng.uniform(0.5, 2, 7).astype(np.float16),
        bias=rng.standard_normal(7).astype(np.float16),
        in_channels=np.array([1, 5, 3, 0], np.int32),
        out_channels=np.array([6, 1, 2, 4, 0], np.int32),
        in_scale=rng.uniform(-2, 2, 4).astype(np.float32),
        in_bias=rng.uniform(-2, 2, 4).astype(np.float32),
    )
    x = rng.standard_normal((4, 6, 9, 7)).astype(np.float32)
    oh, ow = attrs.output_hw(9, 7)
    residual = rng.standard_normal((4, 7, oh, ow)).astype(np.float32)
    y = ternary_conv(x, packed.mask, packed.sign, packed.centroids, residual=residual, attrs=attrs, **kw)
    np.testing.assert_allclose(y, explicit(x, w, attrs, residual=residual, **kw), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("bad", ["shape", "batch", "rank", "dtype"])
def test_residual_shape_and_dtype_are_checked(bad):
    rng = np.random.default_rng(5)
    packed, attrs, _ = _node(rng, 4, 3)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    residual = {
        "shape": np.zeros((2, 4, 5, 4), np.float32),
        "batch": np.zeros((1, 4, 5, 5), np.float32),
        "rank": np.zeros((2, 4, 25), np.float32),
        "dtype": np.zeros((2, 4, 5, 5), np.float64),
    }[bad]
    with pytest.raises(tf.FormatError, match="residual"):
        ternary_conv(x, packed.mask, packed.sign, packed.centroids, residual=residual, attrs=attrs)


@pytest.mark.parametrize("name,value", [
    ("in_scale", np.ones(3, np.float16)),
    ("in_scale", np.ones(4, np.float32)),
    ("in_bias", np.zeros(2, np.float32)),
    ("in_bias", np.zeros(3, np.float64)),
])
def test_input_affine_dtype_and_length_are_checked(name, value):
    rng = np.random.default_rng(6)
    packed, attrs, _ = _node(rng, 4, 3)
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    with pytest.raises(tf.FormatError, match=name):
        ternary_conv(x, packed.mask, packed.sign, packed.centroids, attrs=attrs, **{name: value})


def test_reference_evaluator_reads_inputs_8_to_10():
    """Through onnx.reference: in_scale / in_bias as initializers, the residual as a graph input, and
    empty names for absent optional inputs."""
    rng = np.random.default_rng(7)
    packed, attrs, w = _node(rng, 4, 3, relu=True)
    in_scale = rng.uniform(0.5, 2, 3).astype(np.float32)
    in_bias = rng.uniform(-1, 1, 3).astype(np.float32)
    inits = {"mask": packed.mask, "sign": packed.sign, "centroids": packed.centroids, "in_scale": in_scale,
             "in_bias": in_bias}
    names = ["X", "mask", "sign", "centroids", "", "", "", "", "in_scale", "in_bias", "R"]
    node = helper.make_node(tf.OP_TYPE, names, ["Y"], domain=tf.DOMAIN, **attrs.to_onnx())
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", 3, 6, 6]),
         helper.make_tensor_value_info("R", TensorProto.FLOAT, ["B", 4, 6, 6])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=versions.opset_imports(ternary=True, format_version=2),
                              ir_version=versions.IR_VERSION)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    r = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    (y,) = reference_evaluator(model).run(None, {"X": x, "R": r})
    ref = explicit(x, w, attrs, in_scale=in_scale, in_bias=in_bias, residual=r)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-5)
