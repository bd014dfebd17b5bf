"""TernaryConv nodes for tests: a one-node model builder and random valid nodes with their
numpy, reference-op and torch evaluations (shared by the runtime, kernel, bench and scorer tests)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from micronet_onnx.format import spec as tf
from micronet_onnx.format.node import decode_codes
from micronet_onnx.format.reference_op import ternary_conv

# ---------------------------------------------------------------------------------------------

ANY_NCHW = ["B", "C", "H", "W"]


def make_model(
    inputs: list[str],
    initializers: dict[str, np.ndarray],
    attrs: dict,
    *,
    node_name: str = "tc",
    x_elem_type: int = TensorProto.FLOAT,
    x_shape: list | None = ANY_NCHW,
    graph_inputs: dict[str, np.ndarray | tuple[np.dtype, list | None]] | None = None,
    opset: int = tf.OPSET_VERSION,
) -> onnx.ModelProto:
    """A one-node model ``Y = micronet::TernaryConv(inputs...)``; ``inputs[0]`` is the graph input X.

    ``attrs`` values may be ready-made ``onnx.AttributeProto``. ``x_shape`` None leaves X unranked.
    ``graph_inputs`` lists further non-constant inputs: name -> example array (declared with its dtype
    and shape) or ``(dtype, shape)`` (shape may hold symbolic names, or be None for unranked).
    ``opset`` is the imported ``micronet`` opset (the format version).
    """
    plain = {k: v for k, v in attrs.items() if not isinstance(v, onnx.AttributeProto)}
    node = helper.make_node(tf.OP_TYPE, inputs, ["Y"], domain=tf.DOMAIN, name=node_name, **plain)
    node.attribute.extend(v for v in attrs.values() if isinstance(v, onnx.AttributeProto))
    g_inputs = [helper.make_tensor_value_info(inputs[0], x_elem_type, x_shape)]
    for name, arr in (graph_inputs or {}).items():
        dtype, shape = arr if isinstance(arr, tuple) else (arr.dtype, list(arr.shape))
        g_inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape))
    graph = helper.make_graph(
        [node],
        "ternary_conv",
        g_inputs,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ANY_NCHW)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(tf.DOMAIN, opset)],
        ir_version=8,
    )


@dataclass
class Node:
    """A valid TernaryConv node with its numpy inputs.

    The constant inputs 1..9 are arrays; the residual (input 10) is a run-time graph input named
    ``<prefix>residual``, drawn for each X shape from ``residual_seed`` (None: no residual)."""

    packed: tf.PackedTernary
    attrs: tf.ConvAttrs
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    in_channels: np.ndarray | None = None
    out_channels: np.ndarray | None = None
    in_scale: np.ndarray | None = None
    in_bias: np.ndarray | None = None
    residual_seed: int | None = None
    prefix: str = ""

    def input_arrays(self) -> list[np.ndarray | None]:
        """The constant inputs 1..9 (None where absent)."""
        p = self.packed
        return [p.mask, p.sign, p.centroids, self.scale, self.bias, self.in_channels, self.out_channels,
                self.in_scale, self.in_bias]

    @property
    def residual_name(self) -> str:
        return "" if self.residual_seed is None else f"{self.prefix}{tf.INPUT_NAMES[tf.IN_RESIDUAL]}"

    def residual_for(self, x: np.ndarray) -> np.ndarray | None:
        """The residual fed with ``x``: float32 ``[B, M_out, OH, OW]``, a fixed draw per shape."""
        if self.residual_seed is None:
            return None
        oh, ow = self.attrs.output_hw(x.shape[2], x.shape[3])
        shape = (x.shape[0], self.attrs.m_out, max(oh, 0), max(ow, 0))
        return np.random.default_rng(self.residual_seed).standard_normal(shape).astype(np.float32)

    def wire(self, x_name: str) -> tuple[list[str], dict[str, np.ndarray]]:
        """Node input names (empty names for absent optional inputs) and the initializers; the
        residual, a run-time value, is named but not an initializer (see `graph_inputs`)."""
        names, inits = [x_name], {}
        for idx, arr in enumerate(self.input_arrays(), start=1):
            if arr is None:
                names.append("")
            else:
                name = f"{self.prefix}{tf.INPUT_NAMES[idx]}"
                names.append(name)
                inits[name] = arr
        names.append(self.residual_name)
        while names[-1] == "":
            names.pop()
        return names, inits

    def graph_inputs(self) -> dict[str, tuple[np.dtype, list]]:
        """The residual as a graph input of symbolic shape (its shape is checked by the op, not onnxruntime)."""
        if self.residual_seed is None:
            return {}
        return {self.residual_name: (np.dtype(np.float32), ["B", "M", "OH", "OW"])}

    def feeds(self, x: np.ndarray, x_name: str = "X") -> dict[str, np.ndarray]:
        """What `session.run` needs: X, and the residual when the node has one."""
        out = {x_name: x}
        if self.residual_seed is not None:
            out[self.residual_name] = self.residual_for(x)
        return out

    def model(self, node_name: str = "tc", opset: int = tf.OPSET_VERSION) -> onnx.ModelProto:
        names, inits = self.wire("X")
        return make_model(names, inits, self.attrs.to_onnx(), node_name=node_name, graph_inputs=self.graph_inputs(),
                          opset=opset)

    def reference(self, x: np.ndarray) -> np.ndarray:
        return ternary_conv(x, *self.input_arrays(), residual=self.residual_for(x), attrs=self.attrs)

    def torch(self, x: np.ndarray) -> np.ndarray:
        """The same function from torch.nn.functional.conv2d on the decoded weight."""
        a = self.attrs
        p = self.packed
        w = torch.from_numpy(decode_codes(tf.unpack_codes(p.mask, p.sign, a.weight_shape), p.centroids))
        xt = torch.from_numpy(x)
        if self.in_channels is not None:
            xt = xt[:, torch.from_numpy(self.in_channels.astype(np.int64))]
        if self.in_scale is not None:  # the input affine acts before the zero padding
            xt = xt * torch.from_numpy(self.in_scale).view(1, -1, 1, 1)
        if self.in_bias is not None:
            xt = xt + torch.from_numpy(self.in_bias).view(1, -1, 1, 1)
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
        if self.residual_seed is not None:
            full = full + torch.from_numpy(self.residual_for(x))
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
    in_affine: bool = False,
    in_scale: bool | None = None,
    in_bias: bool | None = None,
    residual: bool = False,
    prefix: str = "",
) -> Node:
    """A random valid node. ``affine``: scale and bias (or each alone); ``in_affine``: in_scale and
    in_bias (or each alone; format version 2); ``residual``: a residual graph input (version 2)."""
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
    if in_scale if in_scale is not None else in_affine:  # BN scales of either sign
        node.in_scale = (rng.uniform(0.5, 2.0, n_stored) * rng.choice([-1.0, 1.0], n_stored)).astype(np.float32)
    if in_bias if in_bias is not None else in_affine:  # clearly non-zero: the zero padding must stay 0
        node.in_bias = (rng.uniform(0.5, 2.0, n_stored) * rng.choice([-1.0, 1.0], n_stored)).astype(np.float32)
    if residual:
        node.residual_seed = int(rng.integers(2**31))
    return node


def assert_close(y: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert y.shape == ref.shape, f"{what}: shape {y.shape} != {ref.shape}"
    atol = 1e-5 * (1.0 + float(np.nanmax(np.abs(ref))) if ref.size else 1.0)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=atol, err_msg=what)


