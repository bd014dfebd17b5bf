"""The C++ library against inputs a careful user may give it (issue 18, the kernel part).

- small stacks: `session.run` from a thread with a 160 KiB stack (legal for embedders) on every
  kernel; each case runs in a child process, so a crash is a failed test, not a dead pytest;
- large magnitudes: inputs of 1e4 .. 1e30, also under zero weights only, match the float64
  reference op on every kernel and instruction set within the tolerance of tests/helpers/nodes.py;
- non-finite inputs: one rule on every kernel and instruction set (docs/runtime.md, "Numerics"):
  a zero weight is no term; a NaN or inf under a non-zero weight propagates as in IEEE arithmetic;
- strict readers: a mask or sign with padding bits set, or a damaged format-3 stream, fails session
  creation naming the node.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from micronet_onnx.format import spec as tf
from micronet_onnx.runtime.session import create_session
from tests.helpers.cpu import ISAS
from tests.helpers.nodes import assert_close, random_node

KERNEL_ENV = "MICRONET_TERNARY_KERNEL"
ISA_ENV = "MICRONET_TERNARY_ISA"


# every engine on every instruction set this CPU has (direct is scalar: one run)
PATHS = [(k, isa) for k in ("sparse", "dense") for isa in ISAS] + [("direct", "auto")]


# ---------------------------------------------------------------------------------------------
# small stacks

_STACK_SCRIPT = textwrap.dedent("""
    import sys, threading
    import numpy as np
    from micronet_onnx.runtime.session import create_session
    from tests.helpers.nodes import assert_close, random_node

    node = random_node(np.random.default_rng(1), 64, 64, (3, 3), pads=(1, 1, 1, 1), sparsity=0.5,
                       affine=True, relu=True, in_affine=True, residual=True)
    x = np.random.default_rng(2).standard_normal((2, 64, 32, 32)).astype(np.float32)
    model = node.model().SerializeToString()
    session = create_session(model, threads=int(sys.argv[1]))
    result = {}

    def run():
        result["y"] = session.run(None, node.feeds(x))[0]

    threading.stack_size(160 * 1024)
    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert_close(result["y"], node.reference(x), "small stack")
    print("ok")
""")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kernel", ["sparse", "dense", "direct"])
def test_run_from_a_thread_with_a_small_stack(ops_library, monkeypatch, kernel, threads):
    """The fast engines' band scratch (up to 192 KiB) comes from a heap pool, not the stack."""
    monkeypatch.setenv(KERNEL_ENV, kernel)
    proc = subprocess.run([sys.executable, "-c", _STACK_SCRIPT, str(threads)], capture_output=True, text=True,
                          timeout=300, cwd=str(_repo_root()))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])


def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# large magnitudes


def _zero_channels(node, channels: np.ndarray):
    """The node with every weight that reads one of `channels` set to zero (same centroids)."""
    p = node.packed
    codes = tf.unpack_codes(p.mask, p.sign, p.shape).copy()
    codes[:, channels] = 0
    neg, pos = (float(v) for v in p.centroids)
    return dataclasses.replace(node, packed=tf.pack_ternary(codes, neg, pos))


@pytest.mark.parametrize("kernel,isa", PATHS)
@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("magnitude", [1e4, 1e8, 1e16, 1e30])
def test_large_inputs_under_zero_weights_do_not_leak(ops_library, monkeypatch, kernel, isa, sparsity, magnitude):
    """Half of the input channels carry huge values and only zero weights read them: the output is
    the conv of the normal channels alone (a complement form S - Z - P got -0.996 for -1 at 1e5
    and 0 at 1e8; no kernel uses one now)."""
    monkeypatch.setenv(KERNEL_ENV, kernel)
    monkeypatch.setenv(ISA_ENV, isa)
    rng = np.random.default_rng(int(magnitude) % 1000 + int(sparsity * 10))
    node = random_node(rng, 24, 16, (3, 3), pads=(1, 1, 1, 1), sparsity=sparsity, affine=True)
    huge = np.arange(0, 16, 2)
    node = _zero_channels(node, huge)
    x = rng.standard_normal((1, 16, 12, 12)).astype(np.float32)
    x[:, huge] = (magnitude * rng.uniform(0.5, 1.0, x[:, huge].shape)).astype(np.float32)
    (y,) = create_session(node.model().SerializeToString(), threads=1).run(None, node.feeds(x))
    assert_close(y, node.reference(x), f"{kernel}/{isa} sparsity {sparsity} magnitude {magnitude:g}")


@pytest.mark.parametrize("kernel,isa", PATHS)
@pytest.mark.parametrize("magnitude", [1e4, 1e12, 1e30])
def test_large_inputs_everywhere(ops_library, monkeypatch, kernel, isa, magnitude):
    """Inputs of one large magnitude under every weight, at 0 % and 90 % zeros, and the issue's case
    (one weight of -1 per row over inputs near 1e5)."""
    monkeypatch.setenv(KERNEL_ENV, kernel)
    monkeypatch.setenv(ISA_ENV, isa)
    rng = np.random.default_rng(3)
    for sparsity in (0.0, 0.9):
        node = random_node(rng, 16, 12, (3, 3), pads=(1, 1, 1, 1), sparsity=sparsity, bias=True)
        x = (magnitude * rng.standard_normal((2, 12, 10, 10))).astype(np.float32)
        (y,) = create_session(node.model().SerializeToString(), threads=2).run(None, node.feeds(x))
        assert_close(y, node.reference(x), f"{kernel}/{isa} sparsity {sparsity} magnitude {magnitude:g}")
    codes = np.zeros((8, 12, 3, 3), np.int8)
    codes[:, :, 1, 1] = 0
    codes[np.arange(8), np.arange(8), 1, 1] = -1
    node = dataclasses.replace(random_node(rng, 8, 12, (3, 3), pads=(1, 1, 1, 1)),
                               packed=tf.pack_ternary(codes, -1.0, 1.0))
    x = (1e5 + rng.uniform(0, 1, (1, 12, 8, 8))).astype(np.float32)
    (y,) = create_session(node.model().SerializeToString(), threads=1).run(None, node.feeds(x))
    np.testing.assert_array_equal(y, -x[:, :8], err_msg=f"{kernel}/{isa}: -1 times x")


# ---------------------------------------------------------------------------------------------
# non-finite inputs


def _zero_skipping_reference(node, x: np.ndarray) -> np.ndarray:
    """float64 reference of the rule: sum of w * x over the non-zero weights only (IEEE arithmetic
    otherwise), then scale, bias and ReLU (NaN stays NaN). Stride 1, pads 1, no maps."""
    p = node.packed
    codes = tf.unpack_codes(p.mask, p.sign, p.shape)
    neg, pos = (float(v) for v in p.centroids)
    w = np.where(codes > 0, pos, np.where(codes < 0, neg, 0.0))
    m, c_in, kh_n, kw_n = codes.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, wd = x.shape[2], x.shape[3]
    y = np.zeros((x.shape[0], m, h, wd))
    with np.errstate(invalid="ignore", over="ignore"):
        for c in range(c_in):
            for kh in range(kh_n):
                for kw in range(kw_n):
                    patch = xp[:, c, kh:kh + h, kw:kw + wd][:, None]
                    wk = w[:, c, kh, kw][None, :, None, None]
                    y += np.where(wk != 0.0, wk * patch, 0.0)
        y = y * node.scale.astype(np.float64)[None, :, None, None] + node.bias.astype(np.float64)[None, :, None, None]
        return np.where(y < 0.0, 0.0, y)


@pytest.mark.parametrize("kernel,isa", PATHS + [("portable", "auto")])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_non_finite_inputs_follow_one_rule(ops_library, monkeypatch, kernel, isa, sparsity):
    """NaN, +inf and -inf at several places (under zero and non-zero weights, at the border, two
    infinities of opposite sign in one window): NaN / +inf / -inf patterns equal the rule's exactly,
    the finite outputs agree."""
    monkeypatch.setenv(KERNEL_ENV, kernel)
    monkeypatch.setenv(ISA_ENV, isa)
    rng = np.random.default_rng(11)
    node = random_node(rng, 12, 8, (3, 3), pads=(1, 1, 1, 1), sparsity=sparsity, affine=True, relu=True)
    x = rng.standard_normal((2, 8, 20, 20)).astype(np.float32)
    x[0, 1, 3, 4] = np.nan
    x[0, 2, 12, 0] = np.inf
    x[0, 5, 12, 1] = -np.inf
    x[1, 0, 0, 19] = np.inf
    x[1, 7, 10, 10] = -np.inf
    ref = _zero_skipping_reference(node, x)
    (y,) = create_session(node.model().SerializeToString(), threads=1).run(None, node.feeds(x))
    what = f"{kernel}/{isa} sparsity {sparsity}"
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(y), test(ref), err_msg=f"{what}: {test.__name__}")
    finite = np.isfinite(ref)
    assert finite.mean() > 0.5, what
    np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-4, atol=1e-4, err_msg=what)


# ---------------------------------------------------------------------------------------------
# strict readers


@pytest.mark.parametrize("which", ["mask", "sign"])
def test_padding_bits_are_rejected_naming_the_node(ops_library, which):
    rng = np.random.default_rng(4)
    node = random_node(rng, 3, 5, (3, 3), pads=(1, 1, 1, 1), sparsity=0.5)  # 135 mask bits
    p = node.packed
    nnz = int(np.count_nonzero(tf.unpack_codes(p.mask, p.sign, p.shape)))
    bits = {"mask": 135, "sign": nnz}[which]
    if bits % 8 == 0:
        pytest.skip("no padding bits in this draw")
    arr = getattr(p, which).copy()
    arr[-1] |= np.uint8(0x80)
    node = dataclasses.replace(node, packed=dataclasses.replace(p, **{which: arr}))
    with pytest.raises(Exception, match=rf"TernaryConv node 'tc': {which} has non-zero padding bits after bit {bits}"):
        create_session(node.model().SerializeToString(), threads=1)


@pytest.mark.parametrize(("encoding", "edit", "message"), [
    ("rows", lambda s: np.concatenate([s, [0]]), "rows stream has 1 bytes after its last field"),
    ("rows", lambda s: s[:-1], "rows stream is truncated"),
    ("rows", lambda s: np.concatenate([[57], s[1:]]), "rows stream header out of range"),
    ("entropy", lambda s: np.concatenate([s, [0]]), "entropy stream is corrupt"),
    ("entropy", lambda s: s[:6], "entropy stream is truncated"),
    ("entropy", lambda s: np.concatenate([[0xFF, 0xFF], s[2:]]), "entropy stream model frequencies 65535"),
])
def test_encoded_streams_are_read_strictly_naming_the_node(ops_library, encoding, edit, message):
    """Format version 3: a stream is checked to its last bit at session creation (the fuzz loop of
    tests/test_encodings_runtime.py covers random damage)."""
    import onnx
    from onnx import numpy_helper

    from micronet_onnx.format.node import TernaryConvNode

    h = random_node(np.random.default_rng(6), 3, 5, (3, 3), pads=(1, 1, 1, 1), sparsity=0.7)
    node = TernaryConvNode.from_tensors(h.attrs, *h.input_arrays(), name="tc", x="X", output="Y")
    proto, inits = node.choose_encoding(encoding).to_onnx()
    inits = [numpy_helper.from_array(edit(numpy_helper.to_array(t)).astype(np.uint8), t.name)
             if t.name == "tc.stream" else t for t in inits]
    graph = onnx.helper.make_graph([proto], "g", [onnx.helper.make_tensor_value_info("X", 1, [1, 5, 4, 4])],
                                   [onnx.helper.make_tensor_value_info("Y", 1, None)], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                         onnx.helper.make_opsetid(tf.DOMAIN, 3)], ir_version=8)
    with pytest.raises(Exception, match=rf"TernaryConv node 'tc': {message}"):
        create_session(model.SerializeToString(), threads=1)
