"""Format version 3 in the C++ library: every encoding runs to the reference op and PyTorch; fuzzed
streams of rows and entropy are rejected at session creation with one line naming the node, or
decode to the same weights as the Python node model (never a crash: the fuzz loop runs in a child
process; `make test-sanitize`'s environment runs this file too)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from micronet_onnx.format import spec as tf
from micronet_onnx.format.node import TernaryConvNode
from micronet_onnx.format.reference_op import evaluate
from micronet_onnx.runtime.session import create_session
from tests.helpers.nodes import assert_close, random_node

X_SHAPE = [2, 5, 7, 6]


def _node(encoding: str, seed: int = 0, **kw) -> tuple[TernaryConvNode, object]:
    h = random_node(np.random.default_rng(seed), 6, 5, (3, 3), pads=(1, 1, 1, 1), sparsity=0.8, **kw)
    node = TernaryConvNode.from_tensors(h.attrs, *h.input_arrays(), name="tc", x="X", output="Y",
                                        residual="R" if h.residual_seed is not None else None)
    return node.choose_encoding(encoding), h


def _model(node: TernaryConvNode, stream: np.ndarray | None = None,
           version: int = tf.OPSET_VERSION) -> onnx.ModelProto:
    proto, inits = node.to_onnx()
    if stream is not None:
        inits = [numpy_helper.from_array(np.asarray(stream, np.uint8), t.name) if t.name == "tc.stream" else t
                 for t in inits]
    g_in = [helper.make_tensor_value_info("X", TensorProto.FLOAT, X_SHAPE)]
    if node.residual:
        g_in.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, None))
    out = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]
    graph = helper.make_graph([proto], "g", g_in, out, inits)
    imports = [helper.make_opsetid("", 17), helper.make_opsetid(tf.DOMAIN, version)]
    return helper.make_model(graph, opset_imports=imports, ir_version=8)


@pytest.mark.parametrize("encoding", tf.ENCODINGS)
def test_library_equals_reference_and_torch(ops_library, encoding):
    node, h = _node(encoding, seed=1, affine=True, relu=True, in_affine=True, residual=True)
    assert node.encoding == encoding
    x = np.random.default_rng(2).standard_normal(X_SHAPE).astype(np.float32)
    feeds = {"X": x, "R": h.feeds(x)[h.residual_name]}
    y = create_session(_model(node).SerializeToString()).run(None, feeds)[0]
    ref = evaluate(node, x, feeds["R"])
    assert_close(y, ref, f"library vs reference ({encoding})")
    assert_close(y, h.torch(x), f"library vs torch ({encoding})")
    assert_close(ref, h.reference(x), f"reference vs the helper's numpy ({encoding})")


def test_sign_with_a_stream_and_an_encoding_attribute_before_v3_are_refused(ops_library):
    node, h = _node("rows")
    model = _model(node)
    model.graph.node[0].input[2] = "tc.centroids"  # a sign input given with encoding rows
    with pytest.raises(Exception, match="TernaryConv node 'tc': input sign must be absent with encoding rows"):
        create_session(model.SerializeToString())
    masks, _ = _node("masks")
    v2 = _model(masks, version=2)
    v2.graph.node[0].attribute.append(helper.make_attribute(tf.ATTR_ENCODING, 0))
    with pytest.raises(tf.FormatError, match="attribute encoding, which came with micronet opset 3"):
        create_session(v2.SerializeToString())


_FUZZ_CHILD = textwrap.dedent("""
    import pickle, sys
    import numpy as np
    from micronet_onnx.runtime.session import create_session

    cases, x = pickle.load(open(sys.argv[1], "rb"))
    out = []
    for model in cases:
        try:
            y = create_session(model).run(None, {"X": x})[0]
            out.append((True, "", y))
        except Exception as e:  # every rejection; a crash ends the process instead
            out.append((False, str(e), None))
    pickle.dump(out, open(sys.argv[2], "wb"))
""")


def _mutate(rng: np.random.Generator, s: np.ndarray) -> np.ndarray:
    m = s.copy()
    kind = rng.integers(5)
    if kind == 0:
        return m[: rng.integers(m.size)]
    if kind == 1:
        return np.concatenate([m, rng.integers(0, 256, rng.integers(1, 4), dtype=np.uint8)])
    if kind == 2:
        for _ in range(rng.integers(1, 4)):
            i = rng.integers(m.size * 8)
            m[i // 8] ^= np.uint8(1 << (i % 8))
        return m
    if kind == 3:
        m[rng.integers(min(m.size, 8))] = rng.integers(256)  # the header and state
        return m
    m[rng.integers(m.size)] = rng.integers(256)
    return m


@pytest.mark.parametrize("encoding", ["rows", "entropy"])
def test_fuzzed_streams_library_and_node_model_agree(ops_library, tmp_path, encoding):
    node, _ = _node(encoding, seed=3, affine=True)
    stream = node.encoded()[0]
    rng = np.random.default_rng(11)
    streams = [_mutate(rng, stream) for _ in range(250)]
    x = np.random.default_rng(4).standard_normal(X_SHAPE).astype(np.float32)
    (tmp_path / "in.pkl").write_bytes(pickle.dumps(([_model(node, s).SerializeToString() for s in streams], x)))
    r = subprocess.run([sys.executable, "-c", _FUZZ_CHILD, str(tmp_path / "in.pkl"), str(tmp_path / "out.pkl")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"the library crashed (rc {r.returncode}): {r.stderr[-2000:]}"
    results = pickle.loads((tmp_path / "out.pkl").read_bytes())
    rejected = 0
    for s, (ok, err, y) in zip(streams, results, strict=True):
        try:
            decoded = TernaryConvNode.from_tensors(node.attrs, s, None, node.centroids, node.scale, node.bias,
                                                   encoding=encoding, name="tc", x="X", output="Y")
        except tf.FormatError as e:
            assert "\n" not in str(e)
            assert not ok, f"the library accepted a stream the node model rejects ({e})"
            assert "TernaryConv node 'tc'" in err and "\n" not in err.strip(), err
            rejected += 1
            continue
        assert ok, f"the library rejected a stream the node model accepts: {err}"
        assert_close(y, evaluate(decoded, x), "fuzzed stream")
    assert rejected > 200  # nearly every mutation is caught (a stream is checked to its last bit)

