"""TernaryConv's output shape inference (OrtCustomOp::InferOutputShapeFn in
runtime_ops/ternary_conv/ternary_conv_shape.cc), seen through onnxruntime: a Y declared without a
shape gets [B, M_out, OH, OW] when X's H and W are numbers, and stays unknown otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from micronet_onnx.runtime.session import create_session
from tests.helpers.nodes import random_node


def _model(x_dims, *, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), m_out=None, seed=0):
    node = random_node(np.random.default_rng(seed), 6, 4, (3, 3), strides=strides, pads=pads, dilations=dilations,
                       m_out=m_out)
    model = node.model()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, x_dims):
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v
    model.graph.output[0].type.tensor_type.ClearField("shape")  # Y: float32, shape unknown
    return node, model


@pytest.mark.parametrize("x_dims,kwargs,expected", [
    (["B", 4, 16, 16], {}, ["B", 6, 16, 16]),
    ([2, 4, 16, 12], {"strides": (2, 3)}, [2, 6, 8, 4]),
    (["N", 4, 9, 9], {"pads": (0, 1, 2, 0), "dilations": (2, 1)}, ["N", 6, 7, 8]),
    (["B", 4, 8, 8], {"m_out": 10}, ["B", 10, 8, 8]),  # num_output_channels
])
def test_unknown_output_shape_is_inferred(ops_library, x_dims, kwargs, expected):
    node, model = _model(x_dims, **kwargs)
    session = create_session(model.SerializeToString(), threads=1)
    assert session.get_outputs()[0].shape == expected
    x = np.random.default_rng(1).standard_normal([2 if isinstance(d, str) else d for d in x_dims]).astype(np.float32)
    (y,) = session.run(None, {"X": x})
    assert list(y.shape[1:]) == expected[1:]


@pytest.mark.parametrize("x_dims", [["B", 4, "H", "W"], ["B", 4, 16, "W"]])
def test_shape_stays_unknown_without_the_spatial_size(ops_library, x_dims):
    _, model = _model(x_dims)
    session = create_session(model.SerializeToString(), threads=1)
    assert not session.get_outputs()[0].shape


def test_empty_output_is_left_to_the_kernel(ops_library):
    """A 2x2 X under an unpadded 3x3 kernel: no shape is inferred, and the run reports the error."""
    _, model = _model(["B", 4, 2, 2], pads=(0, 0, 0, 0))
    session = create_session(model.SerializeToString(), threads=1)
    assert not session.get_outputs()[0].shape
    with pytest.raises(Exception, match="output would be empty"):
        session.run(None, {"X": np.zeros((1, 4, 2, 2), np.float32)})
