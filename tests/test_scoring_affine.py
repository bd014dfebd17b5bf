"""A BatchNormalization written as Mul + Add of per-channel vectors scores as that BatchNormalization."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from micronet_onnx.scoring import score_model

C = 8


def _model(*, as_affine: bool, extra_consumer: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((C, 3, 3, 3)).astype(np.float32), "w")
    inits = [w]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    if as_affine:
        inits += [numpy_helper.from_array(rng.standard_normal((C, 1, 1)).astype(np.float32), n) for n in "ab"]
        nodes += [helper.make_node("Mul", ["c", "a"], ["m"], name="bn.mul"),
                  helper.make_node("Add", ["m", "b"], ["y"], name="bn")]
    else:
        inits += [numpy_helper.from_array(v, n) for n, v in (
            ("s", rng.random(C).astype(np.float32) + 0.5), ("t", rng.standard_normal(C).astype(np.float32)),
            ("mu", rng.standard_normal(C).astype(np.float32)), ("var", rng.random(C).astype(np.float32) + 0.5))]
        nodes.append(helper.make_node("BatchNormalization", ["c", "s", "t", "mu", "var"], ["y"], name="bn"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 8, 8])]
    if extra_consumer:
        outputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, C, 8, 8]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _bn_params(report) -> float:
    return sum(layer.params_paper for layer in report.layers if layer.name.startswith("bn"))


def test_affine_pair_scores_as_the_batch_norm():
    bn = score_model(_model(as_affine=False))
    affine = score_model(_model(as_affine=True))
    assert _bn_params(bn) == C / 2
    assert _bn_params(affine) == C / 2
    assert affine.params_paper == bn.params_paper


def test_mul_with_a_second_consumer_is_two_dense_vectors():
    split = score_model(_model(as_affine=True, extra_consumer=True))
    assert _bn_params(split) == 2 * C  # both vectors, at 32 bits: not one BatchNormalization
