"""The compiled TernaryConv (runtime_ops/, run by onnxruntime) against the numpy reference op and torch.

Every test runs the real library in the real onnxruntime; the `ops_library` fixture fails (it never
skips) when the library has not been built (`make lib`).
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from micronet_onnx.format import spec as tf
from micronet_onnx.format.reference_op import reference_evaluator, ternary_conv
from micronet_onnx.runtime.session import create_session
from tests.helpers.nodes import Node, assert_close, random_node

# ---------------------------------------------------------------------------------------------
# parity cases: name -> (node factory, x shape)

CASES = {
    "basic_3x3_odd_channels": (lambda r: random_node(r, 7, 5, (3, 3), pads=(1, 1, 1, 1)), (1, 5, 9, 9)),
    "stride2_batch3": (
        lambda r: random_node(r, 8, 6, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
        (3, 6, 12, 10),
    ),
    "asym_pads_dilation_strides": (
        lambda r: random_node(r, 5, 3, (3, 3), strides=(1, 2), pads=(0, 2, 1, 0), dilations=(2, 1)),
        (2, 3, 11, 11),
    ),
    "kernel_1x1": (lambda r: random_node(r, 9, 13, (1, 1)), (2, 13, 7, 7)),
    "rect_kernel_no_pad": (lambda r: random_node(r, 4, 3, (3, 1), strides=(2, 1)), (1, 3, 8, 5)),
    "kernel_equals_input": (lambda r: random_node(r, 3, 2, (5, 5)), (2, 2, 5, 5)),
    "sparsity_0": (lambda r: random_node(r, 6, 4, (3, 3), sparsity=0.0, pads=(1, 1, 1, 1)), (2, 4, 6, 6)),
    "sparsity_100_with_bias": (
        lambda r: random_node(r, 6, 4, (3, 3), sparsity=1.0, pads=(1, 1, 1, 1), bias=True),
        (2, 4, 6, 6),
    ),
    "dead_channels_affine_relu": (
        lambda r: random_node(r, 6, 5, (3, 3), pads=(1, 1, 1, 1), m_out=11, affine=True, relu=True),
        (2, 5, 8, 8),
    ),
    "in_channels_map": (
        lambda r: random_node(r, 7, 6, (3, 3), pads=(1, 1, 1, 1), x_channels=9, affine=True),
        (2, 9, 7, 7),
    ),
    "in_and_out_maps_bias_only": (
        lambda r: random_node(r, 5, 4, (3, 3), strides=(2, 2), x_channels=7, m_out=8, bias=True, relu=True),
        (1, 7, 9, 9),
    ),
    "scale_only": (lambda r: random_node(r, 5, 3, (3, 3), scale=True), (1, 3, 6, 6)),
    "group_2": (lambda r: random_node(r, 6, 2, (3, 3), group=2, pads=(1, 1, 1, 1)), (2, 4, 7, 7)),
    "depthwise": (
        lambda r: random_node(r, 5, 1, (3, 3), group=5, pads=(1, 1, 1, 1), strides=(2, 2)),
        (2, 5, 9, 9),
    ),
    "group_dead_channels": (
        lambda r: random_node(r, 4, 3, (3, 3), group=2, m_out=7, affine=True, relu=True),
        (1, 6, 6, 6),
    ),
    "fp16_edge_centroids": (
        lambda r: random_node(r, 4, 3, (3, 3), pads=(1, 1, 1, 1), centroids=(-6.0e-8, 65504.0)),
        (1, 3, 5, 5),
    ),
    "tiled_plane_tall": (lambda r: random_node(r, 3, 2, (3, 3), pads=(1, 1, 1, 1)), (1, 2, 100, 30)),
    "tiled_plane_wide": (lambda r: random_node(r, 3, 2, (3, 3), pads=(1, 1, 1, 1)), (1, 2, 3, 2500)),
    "parallel_large": (
        lambda r: random_node(
            r, 48, 32, (3, 3), pads=(1, 1, 1, 1), sparsity=0.7, m_out=52, affine=True, relu=True
        ),
        (2, 32, 20, 20),
    ),
    # format version 2: in_scale / in_bias (before the zero padding) and residual (before the activation)
    "v2_in_affine_pads": (
        lambda r: random_node(r, 7, 5, (3, 3), pads=(1, 1, 1, 1), in_affine=True), (1, 5, 9, 9)
    ),
    "v2_in_affine_stride2_batch3_relu": (
        lambda r: random_node(r, 8, 6, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), affine=True, relu=True,
                              in_affine=True),
        (3, 6, 12, 10),
    ),
    "v2_in_scale_only_asym_pads_dilation": (
        lambda r: random_node(r, 5, 3, (3, 3), strides=(1, 2), pads=(0, 2, 1, 0), dilations=(2, 1), in_scale=True),
        (2, 3, 11, 11),
    ),
    "v2_in_bias_only_kernel_1x1": (lambda r: random_node(r, 9, 13, (1, 1), in_bias=True), (2, 13, 7, 7)),
    "v2_in_affine_in_channels_map": (
        lambda r: random_node(r, 7, 6, (3, 3), pads=(1, 1, 1, 1), x_channels=9, affine=True, in_affine=True),
        (2, 9, 7, 7),
    ),
    "v2_residual_only": (
        lambda r: random_node(r, 6, 4, (3, 3), pads=(1, 1, 1, 1), residual=True), (2, 4, 6, 6)
    ),
    "v2_residual_relu_stride2_batch3": (
        lambda r: random_node(r, 8, 6, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), affine=True, relu=True,
                              residual=True),
        (3, 6, 12, 10),
    ),
    "v2_residual_dead_channels_relu": (
        lambda r: random_node(r, 6, 5, (3, 3), pads=(1, 1, 1, 1), m_out=11, affine=True, relu=True, residual=True),
        (2, 5, 8, 8),
    ),
    "v2_residual_sparsity_100_bias_relu": (
        lambda r: random_node(r, 6, 4, (3, 3), sparsity=1.0, pads=(1, 1, 1, 1), bias=True, relu=True,
                              residual=True),
        (2, 4, 6, 6),
    ),
    "v2_all_inputs_maps_stride2": (
        lambda r: random_node(r, 5, 4, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), x_channels=7, m_out=8,
                              affine=True, relu=True, in_affine=True, residual=True),
        (3, 7, 9, 9),
    ),
    "v2_all_inputs_group_2": (
        lambda r: random_node(r, 6, 2, (3, 3), group=2, pads=(1, 1, 1, 1), affine=True, relu=True, in_affine=True,
                              residual=True),
        (2, 4, 7, 7),
    ),
    "v2_all_inputs_depthwise_dead_channels": (
        lambda r: random_node(r, 4, 1, (3, 3), group=4, strides=(2, 2), pads=(1, 1, 1, 1), m_out=7, affine=True,
                              in_affine=True, residual=True),
        (2, 4, 9, 9),
    ),
    "v2_all_inputs_tiled_plane_wide": (
        lambda r: random_node(r, 3, 2, (3, 3), pads=(1, 1, 1, 1), in_affine=True, residual=True, relu=True),
        (1, 2, 3, 2500),
    ),
    "v2_parallel_large": (
        lambda r: random_node(
            r, 48, 32, (3, 3), pads=(1, 1, 1, 1), sparsity=0.7, x_channels=40, m_out=52, affine=True, relu=True,
            in_affine=True, residual=True,
        ),
        (2, 40, 20, 20),
    ),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference_and_torch(ops_library, case, threads):
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    factory, x_shape = CASES[case]
    node = factory(rng)
    x = rng.standard_normal(x_shape).astype(np.float32)
    session = create_session(node.model().SerializeToString(), threads=threads)
    (y,) = session.run(None, node.feeds(x))
    assert y.dtype == np.float32
    assert_close(y, node.reference(x), f"{case}: library vs numpy reference")
    assert_close(y, node.torch(x), f"{case}: library vs torch conv2d")
    (y2,) = session.run(None, node.feeds(x))  # a session runs repeatedly, same result
    np.testing.assert_array_equal(y, y2)


@pytest.mark.parametrize(
    "case", ["parallel_large", "stride2_batch3", "depthwise", "v2_parallel_large", "v2_all_inputs_maps_stride2"]
)
def test_thread_count_does_not_change_result(ops_library, case):
    rng = np.random.default_rng(7)
    factory, x_shape = CASES[case]
    node = factory(rng)
    x = rng.standard_normal(x_shape).astype(np.float32)
    model = node.model().SerializeToString()
    outs = [create_session(model, threads=t).run(None, node.feeds(x))[0] for t in (1, 2, 3)]
    np.testing.assert_array_equal(outs[0], outs[1])  # each output element is computed by one thread
    np.testing.assert_array_equal(outs[0], outs[2])


@pytest.mark.parametrize("case", ["parallel_large", "v2_parallel_large"])
def test_concurrent_runs_on_one_session(ops_library, case):
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    factory, x_shape = CASES[case]
    node = factory(rng)
    session = create_session(node.model().SerializeToString(), threads=2)
    xs = [rng.standard_normal(x_shape).astype(np.float32) for _ in range(6)]
    if node.residual_seed is not None:  # a different residual with every X
        feeds = [{**node.feeds(x), node.residual_name: rng.standard_normal(node.residual_for(x).shape)
                  .astype(np.float32)} for x in xs]
    else:
        feeds = [node.feeds(x) for x in xs]
    expected = [session.run(None, f)[0] for f in feeds]
    for f, y in zip(feeds, expected, strict=True):
        r = f.get(node.residual_name)
        ref = ternary_conv(f["X"], *node.input_arrays(), residual=r, attrs=node.attrs)
        assert_close(y, ref, f"{case}: library vs reference")
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda f: session.run(None, f)[0], feeds * 2))
    for i, y in enumerate(got):
        np.testing.assert_array_equal(y, expected[i % len(xs)])


def test_every_float16_value_decodes_like_numpy(ops_library):
    """bias holds every float16 bit pattern; dead output channels are exactly act(bias) = bias."""
    all_halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    node = Node(
        tf.pack_ternary(np.ones((1, 1, 1, 1), dtype=np.int8), -1.0, 1.0),
        tf.ConvAttrs(weight_shape=(1, 1, 1, 1), num_output_channels=2**16).validate(),
        bias=all_halves,
        out_channels=np.array([0], dtype=np.int32),
    )
    x = np.full((1, 1, 1, 1), 3.0, dtype=np.float32)
    (y,) = create_session(node.model().SerializeToString(), threads=1).run(None, {"X": x})
    expected = all_halves.astype(np.float32)
    expected[0] += 3.0
    np.testing.assert_array_equal(y.reshape(-1), expected)  # NaNs compare equal here


@pytest.mark.parametrize("v2", [False, True])
def test_empty_batch(ops_library, v2):
    node = random_node(np.random.default_rng(1), 4, 3, (3, 3), pads=(1, 1, 1, 1), in_affine=v2, residual=v2)
    x = np.zeros((0, 3, 5, 5), np.float32)
    (y,) = create_session(node.model().SerializeToString()).run(None, node.feeds(x))
    assert y.shape == (0, 4, 5, 5)


@pytest.mark.parametrize("v2", [False, True])
def test_constant_node_inputs(ops_library, v2):
    """Inputs 1..9 may come from Constant nodes: onnxruntime turns them into initializers."""
    import onnxruntime as ort

    node = random_node(np.random.default_rng(5), 4, 3, (3, 3), pads=(1, 1, 1, 1), bias=True, in_affine=v2)
    model = node.model()
    for name in ("mask", "bias", *(("in_scale", "in_bias") if v2 else ())):
        (init,) = [i for i in model.graph.initializer if i.name == name]
        model.graph.initializer.remove(init)
        model.graph.node.insert(0, helper.make_node("Constant", [], [name], value=init))
    x = np.random.default_rng(6).standard_normal((1, 3, 5, 5)).astype(np.float32)
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        session = create_session(model.SerializeToString(), graph_optimization_level=level)
        assert_close(session.run(None, {"X": x})[0], node.reference(x), f"Constant inputs, {level}")


def test_version_1_model_runs_as_before(ops_library):
    """A node with inputs 0..7 computes the same in a model importing micronet opset 1 and opset 2."""
    rng = np.random.default_rng(21)
    node = random_node(rng, 6, 5, (3, 3), pads=(1, 1, 1, 1), x_channels=7, m_out=9, affine=True, relu=True)
    x = rng.standard_normal((2, 7, 8, 8)).astype(np.float32)
    y1 = create_session(node.model(opset=1).SerializeToString(), threads=1).run(None, {"X": x})[0]
    y2 = create_session(node.model(opset=2).SerializeToString(), threads=1).run(None, {"X": x})[0]
    assert_close(y1, node.reference(x), "opset 1 vs reference")
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("relu", [False, True])
def test_dead_channels_with_residual_follow_the_residual(ops_library, relu):
    """An output channel with no stored row is act(bias + residual): no longer a constant plane, and in
    float32 exactly the one rounding of bias + residual (then the activation)."""
    rng = np.random.default_rng(31 + relu)
    node = random_node(rng, 4, 3, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), m_out=9, affine=True, relu=relu,
                       in_affine=True, residual=True)
    x = rng.standard_normal((3, 3, 10, 10)).astype(np.float32)
    (y,) = create_session(node.model().SerializeToString(), threads=2).run(None, node.feeds(x))
    assert_close(y, node.reference(x), "library vs reference")
    dead = np.setdiff1d(np.arange(9), node.out_channels)
    r = node.residual_for(x)
    expected = node.bias.astype(np.float32)[dead].reshape(1, -1, 1, 1) + r[:, dead]
    if relu:
        expected = np.maximum(expected, 0)
    np.testing.assert_array_equal(y[:, dead], expected)
    assert np.ptp(y[:, dead], axis=(2, 3)).max() > 0  # not a constant plane


def test_residual_from_the_graph(ops_library):
    """A MicroNet-like block: the residual is another node's output (here X itself and a 1x1 Conv)."""
    rng = np.random.default_rng(41)
    c1 = random_node(rng, 8, 6, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), m_out=10, affine=True, relu=True,
                     in_affine=True, prefix="c1_")
    c2 = random_node(rng, 9, 8, (3, 3), pads=(1, 1, 1, 1), x_channels=10, affine=True, prefix="c2_")
    c3 = random_node(rng, 9, 9, (3, 3), pads=(1, 1, 1, 1), affine=True, relu=True, in_affine=True, prefix="c3_")
    n1, i1 = c1.wire("X")
    n2, i2 = c2.wire("h")
    n3, i3 = c3.wire("b1")
    n2 += [""] * (tf.IN_RESIDUAL - len(n2)) + ["sc"]  # block 1: residual = the shortcut conv's output
    n3 += [""] * (tf.IN_RESIDUAL - len(n3)) + ["b1"]  # block 2: residual = its own X
    w_sc = rng.standard_normal((9, 6, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node(tf.OP_TYPE, n1, ["h"], domain=tf.DOMAIN, name="c1", **c1.attrs.to_onnx()),
        helper.make_node("Conv", ["X", "w_sc"], ["sc"], name="shortcut", strides=[2, 2]),
        helper.make_node(tf.OP_TYPE, n2, ["b1"], domain=tf.DOMAIN, name="c2", **c2.attrs.to_onnx()),
        helper.make_node(tf.OP_TYPE, n3, ["Y"], domain=tf.DOMAIN, name="c3", **c3.attrs.to_onnx()),
    ]
    inits = {**i1, **i2, **i3, "w_sc": w_sc}
    graph = helper.make_graph(
        nodes,
        "blocks",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", 6, "H", "W"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(tf.DOMAIN, 2)], ir_version=8
    )
    x = rng.standard_normal((2, 6, 12, 12)).astype(np.float32)
    (ref,) = reference_evaluator(model).run(None, {"X": x})
    sc = F.conv2d(torch.from_numpy(x), torch.from_numpy(w_sc), stride=2).numpy()
    b1 = ternary_conv(c1.reference(x), *c2.input_arrays(), residual=sc, attrs=c2.attrs)
    manual = ternary_conv(b1, *c3.input_arrays(), residual=b1, attrs=c3.attrs)
    assert_close(ref, manual, "onnx.reference vs chained numpy reference")
    for threads in (1, 2):
        (y,) = create_session(model.SerializeToString(), threads=threads).run(None, {"X": x})
        assert_close(y, manual, f"blocks, {threads} threads")


def test_chained_with_standard_ops(ops_library, tmp_path):
    """TernaryConv -> Add -> Relu -> TernaryConv -> Mul in one graph, from a file, vs onnx.reference."""
    rng = np.random.default_rng(3)
    first = random_node(rng, 6, 3, (3, 3), pads=(1, 1, 1, 1), m_out=8, affine=True, relu=True, prefix="a_")
    second = random_node(
        rng, 5, 7, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), x_channels=8, affine=True, prefix="b_"
    )
    names_a, inits_a = first.wire("X")
    names_b, inits_b = second.wire("r")
    offset = rng.standard_normal((1, 8, 1, 1)).astype(np.float32)
    factor = np.float32(0.5).reshape(())
    nodes = [
        helper.make_node(tf.OP_TYPE, names_a, ["t"], domain=tf.DOMAIN, name="tc_a", **first.attrs.to_onnx()),
        helper.make_node("Add", ["t", "offset"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
        helper.make_node(tf.OP_TYPE, names_b, ["u"], domain=tf.DOMAIN, name="tc_b", **second.attrs.to_onnx()),
        helper.make_node("Mul", ["u", "factor"], ["Y"], name="mul"),
    ]
    inits = {**inits_a, **inits_b, "offset": offset, "factor": factor}
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", 3, "H", "W"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(tf.DOMAIN, 1)], ir_version=8
    )
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    x = rng.standard_normal((2, 3, 10, 10)).astype(np.float32)
    (ref,) = reference_evaluator(model).run(None, {"X": x})
    manual = second.reference(np.maximum(first.reference(x) + offset, 0)) * factor
    for threads in (1, 2):
        (y,) = create_session(path, threads=threads).run(None, {"X": x})
        assert_close(y, ref, f"chain, {threads} threads, vs onnx.reference")
        assert_close(y, manual, f"chain, {threads} threads, vs chained numpy reference")
