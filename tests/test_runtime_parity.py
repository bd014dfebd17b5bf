"""The compiled TernaryConv (runtime_ops/, run by onnxruntime) against the numpy reference op and torch.

Every test runs the real library in the real onnxruntime; the `ops_library` fixture fails (it never
skips) when the library has not been built (`make lib`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from micronet_onnx import ternary_format as tf
from micronet_onnx.reference_op import reference_evaluator, ternary_conv
from micronet_onnx.runtime import create_session

# ---------------------------------------------------------------------------------------------
# model building (also used by test_runtime_validation.py)

ANY_NCHW = ["B", "C", "H", "W"]


def make_model(
    inputs: list[str],
    initializers: dict[str, np.ndarray],
    attrs: dict,
    *,
    node_name: str = "tc",
    x_elem_type: int = TensorProto.FLOAT,
    x_shape: list | None = ANY_NCHW,
    graph_inputs: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """A one-node model ``Y = micronet::TernaryConv(inputs...)``; ``inputs[0]`` is the graph input X.

    ``attrs`` values may be ready-made ``onnx.AttributeProto``. ``x_shape`` None leaves X unranked.
    ``graph_inputs`` lists further non-constant inputs (name -> example array, for dtype and shape).
    """
    plain = {k: v for k, v in attrs.items() if not isinstance(v, onnx.AttributeProto)}
    node = helper.make_node(tf.OP_TYPE, inputs, ["Y"], domain=tf.DOMAIN, name=node_name, **plain)
    node.attribute.extend(v for v in attrs.values() if isinstance(v, onnx.AttributeProto))
    g_inputs = [helper.make_tensor_value_info(inputs[0], x_elem_type, x_shape)]
    for name, arr in (graph_inputs or {}).items():
        g_inputs.append(
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape))
        )
    graph = helper.make_graph(
        [node],
        "ternary_conv",
        g_inputs,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ANY_NCHW)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(tf.DOMAIN, tf.OPSET_VERSION)],
        ir_version=8,
    )


@dataclass
class Node:
    """A valid TernaryConv node with its numpy inputs."""

    packed: tf.PackedTernary
    attrs: tf.ConvAttrs
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    in_channels: np.ndarray | None = None
    out_channels: np.ndarray | None = None
    prefix: str = ""

    def input_arrays(self) -> list[np.ndarray | None]:
        p = self.packed
        return [p.mask, p.sign, p.centroids, self.scale, self.bias, self.in_channels, self.out_channels]

    def wire(self, x_name: str) -> tuple[list[str], dict[str, np.ndarray]]:
        """Node input names (empty names for absent optional inputs) and the initializers."""
        names, inits = [x_name], {}
        for idx, arr in enumerate(self.input_arrays(), start=1):
            if arr is None:
                names.append("")
            else:
                name = f"{self.prefix}{tf.INPUT_NAMES[idx]}"
                names.append(name)
                inits[name] = arr
        while names[-1] == "":
            names.pop()
        return names, inits

    def model(self, node_name: str = "tc") -> onnx.ModelProto:
        names, inits = self.wire("X")
        return make_model(names, inits, self.attrs.to_onnx(), node_name=node_name)

    def reference(self, x: np.ndarray) -> np.ndarray:
        return ternary_conv(x, *self.input_arrays(), attrs=self.attrs)

    def torch(self, x: np.ndarray) -> np.ndarray:
        """The same function from torch.nn.functional.conv2d on the decoded weight."""
        a = self.attrs
        p = self.packed
        w = torch.from_numpy(tf.decode_weight(p.mask, p.sign, p.centroids, a.weight_shape))
        xt = torch.from_numpy(x)
        if self.in_channels is not None:
            xt = xt[:, torch.from_numpy(self.in_channels.astype(np.int64))]
        top, left, bottom, right = a.pads
        xt = F.pad(xt, (left, right, top, bottom))
        z = F.conv2d(xt, w, stride=a.strides, dilation=a.dilations, groups=a.group)
        full = torch.zeros((x.shape[0], a.m_out, *z.shape[2:]), dtype=z.dtype)
        rows = np.arange(a.m_stored) if self.out_channels is None else self.out_channels.astype(np.int64)
        full[:, torch.from_numpy(rows)] = z
        if self.scale is not None:
            full = full * torch.from_numpy(self.scale.astype(np.float32)).view(1, -1, 1, 1)
        if self.bias is not None:
            full = full + torch.from_numpy(self.bias.astype(np.float32)).view(1, -1, 1, 1)
        if a.activation == "Relu":
            full = torch.relu(full)
        return full.numpy()


def random_node(
    rng: np.random.Generator,
    m_stored: int,
    cin_per_group: int,
    k: tuple[int, int],
    *,
    sparsity: float = 0.5,
    group: int = 1,
    strides=(1, 1),
    pads=(0, 0, 0, 0),
    dilations=(1, 1),
    m_out: int | None = None,
    affine: bool = False,
    scale: bool | None = None,
    bias: bool | None = None,
    relu: bool = False,
    x_channels: int | None = None,
    centroids: tuple[float, float] | None = None,
    prefix: str = "",
) -> Node:
    shape = (m_stored, cin_per_group, *k)
    nz = rng.random(shape) >= sparsity
    codes = np.where(nz, rng.choice([-1, 1], size=shape), 0)
    w_neg, w_pos = centroids or (-rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0))
    packed = tf.pack_ternary(codes, w_neg, w_pos)
    m_out_v = m_out or m_stored
    attrs = tf.ConvAttrs(
        weight_shape=shape,
        strides=tuple(strides),
        pads=tuple(pads),
        dilations=tuple(dilations),
        group=group,
        num_output_channels=m_out if m_out and m_out != m_stored else 0,
        activation="Relu" if relu else "",
    ).validate()
    node = Node(packed, attrs, prefix=prefix)
    if scale if scale is not None else affine:
        node.scale = rng.uniform(0.5, 2.0, m_out_v).astype(np.float16)
    if bias if bias is not None else affine:
        node.bias = rng.standard_normal(m_out_v).astype(np.float16)
    n_stored = cin_per_group * group
    if x_channels is not None:
        node.in_channels = rng.permutation(x_channels)[:n_stored].astype(np.int32)
    if m_out_v != m_stored:
        node.out_channels = rng.permutation(m_out_v)[:m_stored].astype(np.int32)
    return node


def assert_close(y: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert y.shape == ref.shape, f"{what}: shape {y.shape} != {ref.shape}"
    atol = 1e-5 * (1.0 + float(np.nanmax(np.abs(ref))) if ref.size else 1.0)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=atol, err_msg=what)


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
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference_and_torch(ops_library, case, threads):
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    factory, x_shape = CASES[case]
    node = factory(rng)
    x = rng.standard_normal(x_shape).astype(np.float32)
    session = create_session(node.model().SerializeToString(), threads=threads)
    (y,) = session.run(None, {"X": x})
    assert y.dtype == np.float32
    assert_close(y, node.reference(x), f"{case}: library vs numpy reference")
    assert_close(y, node.torch(x), f"{case}: library vs torch conv2d")
    (y2,) = session.run(None, {"X": x})  # a session runs repeatedly, same result
    np.testing.assert_array_equal(y, y2)


@pytest.mark.parametrize("case", ["parallel_large", "stride2_batch3", "depthwise"])
def test_thread_count_does_not_change_result(ops_library, case):
    rng = np.random.default_rng(7)
    factory, x_shape = CASES[case]
    node = factory(rng)
    x = rng.standard_normal(x_shape).astype(np.float32)
    model = node.model().SerializeToString()
    outs = [create_session(model, threads=t).run(None, {"X": x})[0] for t in (1, 2, 3)]
    np.testing.assert_array_equal(outs[0], outs[1])  # each output element is computed by one thread
    np.testing.assert_array_equal(outs[0], outs[2])


def test_concurrent_runs_on_one_session(ops_library):
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    factory, x_shape = CASES["parallel_large"]
    node = factory(rng)
    session = create_session(node.model().SerializeToString(), threads=2)
    xs = [rng.standard_normal(x_shape).astype(np.float32) for _ in range(6)]
    expected = [session.run(None, {"X": x})[0] for x in xs]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda x: session.run(None, {"X": x})[0], xs * 2))
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


def test_empty_batch(ops_library):
    node = random_node(np.random.default_rng(1), 4, 3, (3, 3), pads=(1, 1, 1, 1))
    (y,) = create_session(node.model().SerializeToString()).run(
        None, {"X": np.zeros((0, 3, 5, 5), np.float32)}
    )
    assert y.shape == (0, 4, 5, 5)


def test_constant_node_inputs(ops_library):
    """Inputs 1..7 may come from Constant nodes: onnxruntime turns them into initializers."""
    import onnxruntime as ort

    node = random_node(np.random.default_rng(5), 4, 3, (3, 3), pads=(1, 1, 1, 1), bias=True)
    model = node.model()
    for name in ("mask", "bias"):
        (init,) = [i for i in model.graph.initializer if i.name == name]
        model.graph.initializer.remove(init)
        model.graph.node.insert(0, helper.make_node("Constant", [], [name], value=init))
    x = np.random.default_rng(6).standard_normal((1, 3, 5, 5)).astype(np.float32)
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        session = create_session(model.SerializeToString(), graph_optimization_level=level)
        assert_close(session.run(None, {"X": x})[0], node.reference(x), f"Constant inputs, {level}")


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
