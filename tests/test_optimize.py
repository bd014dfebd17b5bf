"""`mnx optimize` (micronet_onnx.optimize): every fusion and every refusal on graphs written the way
other exporters write them (TernaryConv with inputs 0-3 only, standard BatchNormalization, Mul/Add,
Add and Relu beside it), a format-v1 export of the tiny MicroNet, idempotence, parity in the
reference op and in our library, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from micronet_onnx.format import spec, versions
from micronet_onnx.format.reference_op import reference_evaluator
from micronet_onnx.optimize import OptimizeError, optimize_model, would_optimize
from micronet_onnx.optimize import report as rep
from micronet_onnx.runtime.session import create_session

B, C, H, W = "batch", 8, 6, 6


# -- graph builders ------------------------------------------------------------------------------
def plain_tc(name: str, x: str, y: str, m: int = C, c: int = C, *, seed: int = 0, pads: int = 1,
             relu: bool = False, extra: dict[str, np.ndarray] | None = None, residual: str = ""):
    """A TernaryConv with only inputs 0-3 (or given optional inputs): node and initializers."""
    rng = np.random.default_rng(seed)
    codes = rng.choice([-1, 0, 0, 1], size=(m, c, 3, 3)).astype(np.int8)
    p = spec.pack_ternary(codes, -0.3, 0.25)
    inits = {f"{name}.mask": p.mask, f"{name}.sign": p.sign, f"{name}.centroids": p.centroids}
    names = [x, *inits]
    for idx in range(spec.IN_SCALE, spec.IN_RESIDUAL):
        key = spec.INPUT_NAMES[idx]
        if extra and key in extra:
            names += [""] * (idx - len(names)) + [f"{name}.{key}"]
            inits[f"{name}.{key}"] = extra[key]
    if residual:
        names += [""] * (spec.IN_RESIDUAL - len(names)) + [residual]
    attrs = dict(weight_shape=[m, c, 3, 3], pads=[pads] * 4)
    if relu:
        attrs["activation"] = "Relu"
    node = helper.make_node(spec.OP_TYPE, names, [y], name=name, domain=spec.DOMAIN, **attrs)
    return [node], inits


def bn(name: str, x: str, y: str, c: int = C, *, seed: int = 1, exact: bool = False):
    """BatchNormalization with random statistics, or (``exact``) float16-exact scale and shift."""
    rng = np.random.default_rng(seed)
    if exact:  # var 4, epsilon 0: scale gamma / 2 with gamma in {1, 2, 3}, shift beta - mean * scale
        gamma, var = rng.integers(1, 4, c).astype(np.float32), np.full(c, 4.0, np.float32)
        mean, beta = (rng.integers(-4, 4, c) / 4).astype(np.float32), (rng.integers(-4, 4, c) / 8).astype(np.float32)
        eps = 0.0
    else:
        gamma, beta = (rng.random(c) + 0.5).astype(np.float32), rng.standard_normal(c).astype(np.float32)
        mean, var = rng.standard_normal(c).astype(np.float32), (rng.random(c) + 0.5).astype(np.float32)
        eps = 1e-5
    inits = {f"{name}.{k}": v for k, v in zip(("scale", "B", "mean", "var"), (gamma, beta, mean, var), strict=True)}
    node = helper.make_node("BatchNormalization", [x, *inits], [y], name=name, epsilon=eps)
    return [node], inits


def const_op(op: str, name: str, x: str, y: str, value: np.ndarray, *, const_first: bool = False):
    inputs = [f"{name}.c", x] if const_first else [x, f"{name}.c"]
    return [helper.make_node(op, inputs, [y], name=name)], {f"{name}.c": np.asarray(value, np.float32)}


def model_of(*parts, inputs: dict[str, list] | None = None, outputs=("Y",), version: int = spec.OPSET_VERSION):
    nodes, inits = [], {}
    for n, i in parts:
        nodes += n
        inits.update(i)
    inputs = inputs or {"X": [B, C, H, W]}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["n", "c", "h", "w"]) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=versions.opset_imports(ternary=True, format_version=version),
                             ir_version=versions.IR_VERSION)


def feeds_for(model: onnx.ModelProto, batch: int = 3, seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        dims = [d.dim_value or batch for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return out


def assert_parity(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """The result against the input: in the reference op, and in our library through create_session."""
    feeds = feeds_for(before)
    want = reference_evaluator(before).run(None, feeds)
    got = reference_evaluator(after).run(None, feeds)
    ort_want = create_session(before).run(None, feeds)
    ort_got = create_session(after).run(None, feeds)
    for a, b, c, d in zip(want, got, ort_want, ort_got, strict=True):
        tol = 1e-5 * max(1.0, float(np.abs(a).max()))
        np.testing.assert_allclose(b, a, rtol=0, atol=tol)
        np.testing.assert_allclose(d, c, rtol=0, atol=tol)
        np.testing.assert_allclose(d, a, rtol=0, atol=10 * tol)


def run(model: onnx.ModelProto):
    out, report = optimize_model(model)
    assert report.parity is None or report.parity.passed
    again, second = optimize_model(out)
    assert again.SerializeToString() == out.SerializeToString(), "not idempotent"
    assert not second.fused and would_optimize(out) == 0
    onnx.checker.check_model(out)
    return out, report


def ternary_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == spec.DOMAIN]


def node_inputs(model: onnx.ModelProto, node: onnx.NodeProto) -> dict[str, np.ndarray | str]:
    """The node's inputs by format name: constant arrays, or the tensor name for X and residual."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {spec.INPUT_NAMES[i]: inits.get(n, n) for i, n in enumerate(node.input) if n}


def activation(node: onnx.NodeProto) -> str:
    return next((helper.get_attribute_value(a).decode() for a in node.attribute if a.name == "activation"), "")


def kinds(report: rep.OptimizeReport) -> list[str]:
    return [f.kind for f in report.fused]


def refusal(report: rep.OptimizeReport, kind: str) -> rep.Refusal:
    found = [r for r in report.left if r.kind == kind]
    assert found, f"no {kind} refusal in {report.left}"
    return found[0]


# -- fusions -------------------------------------------------------------------------------------
def test_batchnorm_before_becomes_the_input_affine():
    m = model_of(bn("bn", "X", "a"), plain_tc("tc", "a", "Y"))
    out, report = run(m)
    assert kinds(report) == [rep.INPUT_AFFINE] and [n.op_type for n in out.graph.node] == ["TernaryConv"]
    ins = node_inputs(out, out.graph.node[0])
    assert ins["X"] == "X" and ins["in_scale"].dtype == np.float32 and ins["in_bias"].shape == (C,)
    assert not any(t.name.startswith("bn.") for t in out.graph.initializer)  # the BN's constants went with it
    assert_parity(m, out)


def test_mul_then_add_before_compose_through_in_channels_and_an_existing_input_affine():
    """The affine is indexed by X's channel: stored channel k reads X channel in_channels[k]; it is
    applied first, then the node's own in_scale/in_bias (s * (a x + b) + t)."""
    cols = np.array([5, 0, 2, 7], np.int32)
    s_old, t_old = np.linspace(0.5, 2, 4).astype(np.float32), np.linspace(-1, 1, 4).astype(np.float32)
    a, b = np.arange(1, C + 1, dtype=np.float32) / 4, np.arange(C, dtype=np.float32) - 3
    m = model_of(const_op("Mul", "mul", "X", "m1", a.reshape(1, C, 1, 1), const_first=True),
                 const_op("Add", "add", "m1", "a1", b.reshape(C, 1, 1)),
                 plain_tc("tc", "a1", "Y", c=4, extra=dict(in_channels=cols, in_scale=s_old, in_bias=t_old)))
    out, report = run(m)
    assert kinds(report) == [rep.INPUT_AFFINE] * 2 and len(out.graph.node) == 1
    ins = node_inputs(out, out.graph.node[0])
    np.testing.assert_array_equal(ins["in_channels"], cols)
    np.testing.assert_allclose(ins["in_scale"], s_old * a[cols], rtol=1e-7)
    np.testing.assert_allclose(ins["in_bias"], s_old * b[cols] + t_old, rtol=1e-6, atol=1e-7)
    assert_parity(m, out)


def test_affine_after_folds_into_scale_and_bias_when_float16_exact():
    scale = np.array([0.5, 2, 1, 4, 0.25, 1, 3, 0.75], np.float32)
    shift = np.array([0.25, -1, 0, 0.5, 2, -0.125, 1, 0], np.float32)
    m = model_of(plain_tc("tc", "X", "t"), const_op("Mul", "mul", "t", "m1", scale.reshape(1, C, 1, 1)),
                 const_op("Add", "add", "m1", "Y", shift.reshape(1, C, 1, 1)))
    out, report = run(m)
    assert kinds(report) == [rep.OUTPUT_AFFINE] * 2 and len(out.graph.node) == 1
    ins = node_inputs(out, out.graph.node[0])
    assert ins["scale"].dtype == np.float16 and ins["bias"].dtype == np.float16
    np.testing.assert_array_equal(ins["scale"], scale.astype(np.float16))
    np.testing.assert_array_equal(ins["bias"], shift.astype(np.float16))
    assert out.graph.node[0].output[0] == "Y"
    assert_parity(m, out)


def test_exact_batchnorm_after_composes_with_an_existing_scale_and_bias():
    s0, b0 = np.full(C, 0.5, np.float16), (np.arange(C) / 8 - 0.5).astype(np.float16)
    m = model_of(plain_tc("tc", "X", "t", extra=dict(scale=s0, bias=b0)), bn("bn", "t", "Y", exact=True))
    out, report = run(m)
    assert kinds(report) == [rep.OUTPUT_AFFINE]
    assert_parity(m, out)


def test_add_of_a_skip_then_relu_become_residual_and_activation():
    m = model_of(plain_tc("tc", "X", "t"), ([helper.make_node("Add", ["X", "t"], ["s"], name="add")], {}),
                 ([helper.make_node("Relu", ["s"], ["Y"], name="relu")], {}))
    out, report = run(m)
    assert kinds(report) == [rep.RESIDUAL, rep.RELU]
    (node,) = out.graph.node
    assert node_inputs(out, node)["residual"] == "X" and activation(node) == "Relu" and node.output[0] == "Y"
    assert_parity(m, out)


def test_paper_like_chain_of_blocks_becomes_two_nodes_per_block():
    """BN1 -> TC -> BN2 (exact) -> Relu -> TC -> Add(skip) per block, three blocks, format version 1."""
    parts, x = [], "X"
    for k in range(3):
        p = f"b{k}"
        parts += [bn(f"{p}.bn1", x, f"{p}.n", seed=10 + k), plain_tc(f"{p}.conv1", f"{p}.n", f"{p}.c1", seed=k),
                  bn(f"{p}.bn2", f"{p}.c1", f"{p}.n2", seed=20 + k, exact=True),
                  ([helper.make_node("Relu", [f"{p}.n2"], [f"{p}.r"], name=f"{p}.relu")], {}),
                  plain_tc(f"{p}.conv2", f"{p}.r", f"{p}.c2", seed=30 + k),
                  ([helper.make_node("Add", [f"{p}.c2", x], [f"{p}.out"], name=f"{p}.add")], {})]
        x = f"{p}.out"
    parts.append(([helper.make_node("Relu", [x], ["Y"], name="head.relu")], {}))
    m = model_of(*parts, version=1)
    out, report = run(m)
    assert len(m.graph.node) == 19 and len(out.graph.node) == 6
    assert report.counts() == {rep.INPUT_AFFINE: 3, rep.OUTPUT_AFFINE: 3, rep.RELU: 4, rep.RESIDUAL: 3}
    assert versions.micronet_version(out) == 3 and report.format_version_in == 1
    assert_parity(m, out)


def test_constant_nodes_feed_an_affine_and_go_with_it():
    c = helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.full((1, C, 1, 1), 2, np.float32)))
    m = model_of(([c, helper.make_node("Mul", ["X", "k"], ["a"], name="mul")], {}), plain_tc("tc", "a", "Y"))
    out, report = run(m)
    assert kinds(report) == [rep.INPUT_AFFINE] and [n.op_type for n in out.graph.node] == ["TernaryConv"]
    assert_parity(m, out)


# -- refusals ------------------------------------------------------------------------------------
def test_batchnorm_with_a_second_reader_is_left():
    m = model_of(bn("bn", "X", "a"), plain_tc("tc", "a", "Y"), outputs=("Y", "a"))
    out, report = run(m)
    assert not report.fused and "graph output" in refusal(report, rep.INPUT_AFFINE).reason
    m = model_of(bn("bn", "X", "a"), plain_tc("tc", "a", "t"),
                 ([helper.make_node("Add", ["t", "a"], ["Y"], name="add")], {}))
    out, report = run(m)
    assert "2 readers" in refusal(report, rep.INPUT_AFFINE).reason
    assert kinds(report) == [rep.RESIDUAL]  # the Add of the BN's output is still a residual
    assert_parity(m, out)


@pytest.mark.parametrize("shape", [(1, C, H, W), (W,), (1, 1, H, 1)], ids=["full", "vector", "height"])
def test_mul_with_a_non_per_channel_constant_is_left(shape):
    value = np.random.default_rng(0).random(shape).astype(np.float32) + 0.5
    m = model_of(const_op("Mul", "mul", "X", "a", value), plain_tc("tc", "a", "Y"))
    out, report = run(m)
    assert not report.fused and "per-channel" in refusal(report, rep.INPUT_AFFINE).reason
    assert [n.op_type for n in out.graph.node] == ["Mul", "TernaryConv"]
    assert_parity(m, out)


@pytest.mark.parametrize("shape", [[B, C, 1, 1], [1, C, H, W], [B, 1, H, W]], ids=["channel", "batch", "one"])
def test_a_broadcasting_add_is_not_a_residual(shape):
    m = model_of(plain_tc("tc", "X", "t"), ([helper.make_node("Add", ["t", "R"], ["Y"], name="add")], {}),
                 inputs={"X": [B, C, H, W], "R": shape})
    out, report = run(m)
    assert not report.fused and "broadcasting" in refusal(report, rep.RESIDUAL).reason
    assert_parity(m, out)


def test_an_affine_after_the_relu_is_left():
    scale = np.full((1, C, 1, 1), 2.0, np.float32)
    for tc in (plain_tc("tc", "X", "t", relu=True),):
        m = model_of(tc, const_op("Mul", "mul", "t", "Y", scale))
        out, report = run(m)
        assert not report.fused and "Relu" in refusal(report, rep.OUTPUT_AFFINE).reason
    m = model_of(plain_tc("tc", "X", "t"), ([helper.make_node("Relu", ["t"], ["r"], name="relu")], {}),
                 const_op("Mul", "mul", "r", "Y", scale))
    out, report = run(m)  # the Relu fuses, then the Mul sits after the activation
    assert kinds(report) == [rep.RELU] and "Relu" in refusal(report, rep.OUTPUT_AFFINE).reason
    assert_parity(m, out)


def test_an_inexact_affine_after_is_left_and_says_why():
    m = model_of(plain_tc("tc", "X", "t"), bn("bn", "t", "Y"))
    out, report = run(m)
    assert not report.fused and "float16" in refusal(report, rep.OUTPUT_AFFINE).reason
    assert [n.op_type for n in out.graph.node] == ["TernaryConv", "BatchNormalization"]


def test_a_scale_after_a_residual_is_left_but_a_shift_folds():
    skip = ([helper.make_node("Add", ["t", "X"], ["s"], name="add")], {})
    two, half = np.full((1, C, 1, 1), 2, np.float32), np.full((1, C, 1, 1), 0.5, np.float32)
    m = model_of(plain_tc("tc", "X", "t"), skip, const_op("Mul", "mul", "s", "Y", two))
    out, report = run(m)
    assert kinds(report) == [rep.RESIDUAL] and "residual" in refusal(report, rep.OUTPUT_AFFINE).reason
    m = model_of(plain_tc("tc", "X", "t"), skip, const_op("Add", "sh", "s", "Y", half))
    out, report = run(m)
    assert kinds(report) == [rep.RESIDUAL, rep.OUTPUT_AFFINE]
    assert_parity(m, out)


def test_the_output_of_a_node_that_is_a_graph_output_is_not_fused():
    m = model_of(plain_tc("tc", "X", "t"), ([helper.make_node("Relu", ["t"], ["Y"], name="relu")], {}),
                 outputs=("Y", "t"))
    out, report = run(m)
    assert not report.fused and "graph output" in refusal(report, rep.RELU).reason


def test_a_model_without_ternary_nodes_comes_back_unchanged():
    m = model_of(([helper.make_node("Relu", ["X"], ["Y"])], {}))
    out, report = optimize_model(m)
    assert out.SerializeToString() == m.SerializeToString() and report.ternary_nodes == 0 and not report.changed


def test_a_parity_mismatch_is_an_error(monkeypatch):
    from micronet_onnx.optimize import affine

    real = affine._batchnorm

    def wrong(*args, **kwargs):
        a = real(*args, **kwargs)
        return affine.Affine(a.x, a.scale, a.shift + 1.0)

    monkeypatch.setattr(affine, "_batchnorm", wrong)
    with pytest.raises(OptimizeError, match="parity"):
        optimize_model(model_of(bn("bn", "X", "a"), plain_tc("tc", "a", "Y")))


# -- the tiny MicroNet, exported in format version 1 ---------------------------------------------
@pytest.fixture(scope="module")
def tiny_v1(tmp_path_factory):
    from micronet_onnx.export import export_model
    from tests.helpers.models import tiny_model

    path = tmp_path_factory.mktemp("opt") / "tiny_v1.onnx"
    export_model(tiny_model(ternary=True), path, ternary=True, format_version=1)
    return path


def test_v1_export_of_the_tiny_model_fuses_like_our_v2_export(tiny_v1):
    m = onnx.load(tiny_v1)
    assert would_optimize(m) == 13
    out, report = run(m)
    assert (report.nodes_before, report.nodes_after) == (32, 19)
    assert report.counts() == {rep.INPUT_AFFINE: 6, rep.OUTPUT_AFFINE: 0, rep.RELU: 1, rep.RESIDUAL: 6}
    ops = [n.op_type for n in out.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Add") == 0 and ops.count("TernaryConv") == 12
    assert_parity(m, out)


def unfuse(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every TernaryConv as other exporters write it: no scale/bias/activation on the node, its folded
    BatchNorm as a standalone BatchNormalization (mean 0, var 1, epsilon 0: float16-exact) and its
    activation as a Relu."""
    from dataclasses import replace

    from micronet_onnx.format.node import TernaryConvNode, is_ternary_conv

    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    nodes, inits = [], {t.name: t for t in g.initializer}
    for n in g.node:
        if not is_ternary_conv(n):
            nodes.append(n)
            continue
        t = TernaryConvNode.from_onnx(n, consts, versions.micronet_version(model))
        out, act, scale, bias, m = t.output, t.attrs.activation, t.scale, t.bias, t.m_out
        t.scale = t.bias = None
        t.attrs, t.output = replace(t.attrs, activation=""), f"{t.name}.raw"
        node, new = t.to_onnx()
        nodes.append(node)
        inits.update((i.name, i) for i in new)
        names = [f"{t.name}.bn.{k}" for k in ("scale", "B", "mean", "var")]
        values = (scale.astype(np.float32), bias.astype(np.float32), np.zeros(m, np.float32), np.ones(m, np.float32))
        inits.update((k, numpy_helper.from_array(v, k)) for k, v in zip(names, values, strict=True))
        bn_out = f"{t.name}.bn.out" if act else out
        nodes.append(helper.make_node("BatchNormalization", [t.output, *names], [bn_out], name=f"{t.name}.bn",
                                      epsilon=0.0))
        if act:
            nodes.append(helper.make_node("Relu", [bn_out], [out], name=f"{t.name}.relu"))
    used = {i for n in nodes for i in n.input}
    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    del plain.graph.node[:], plain.graph.initializer[:]
    plain.graph.node.extend(nodes)
    plain.graph.initializer.extend(t for name, t in inits.items() if name in used)
    return plain


def test_tiny_model_written_by_another_exporter_gets_every_fusion_back(tiny_v1, tmp_path):
    """Plain TernaryConv nodes with BatchNormalization, Relu and Add beside them: back to the 19 nodes
    (our v2 export's 20, with the head's Relu fused too), and the same function in our library."""
    m = unfuse(onnx.load(tiny_v1))
    assert len(m.graph.node) == 32 + 12 + 6
    out, report = run(m)
    assert report.nodes_after == 19 and not report.left
    assert report.counts() == {rep.INPUT_AFFINE: 6, rep.OUTPUT_AFFINE: 12, rep.RELU: 7, rep.RESIDUAL: 6}
    assert_parity(m, out)


# -- the command line ----------------------------------------------------------------------------
def mnx(*args):
    return subprocess.run([sys.executable, "-m", "micronet_onnx", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_cli_writes_reports_and_refuses_overwrite(tiny_v1, tmp_path):
    out = tmp_path / "opt.onnx"
    r = mnx("optimize", tiny_v1, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "nodes 32 -> 19" in r.stdout and "parity" in r.stdout and out.is_file()
    r = mnx("optimize", tiny_v1, "-o", out)
    assert r.returncode == 2 and "exists" in r.stderr
    r = mnx("optimize", tiny_v1, "-o", out, "--force", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["nodes_after"] == 19 and data["parity"]["passed"] and data["counts"]["residual"] == 6
    r = mnx("optimize", out, "-o", out, "--force")
    assert r.returncode == 2 and "input" in r.stderr
    second = tmp_path / "again.onnx"
    assert mnx("optimize", out, "-o", second).returncode == 0
    assert second.read_bytes() == out.read_bytes()


def test_cli_input_errors(tmp_path):
    dense = tmp_path / "dense.onnx"
    onnx.save(model_of(([helper.make_node("Relu", ["X"], ["Y"])], {})), dense)
    r = mnx("optimize", dense, "-o", tmp_path / "o.onnx")
    assert r.returncode == 2 and "no micronet::TernaryConv" in r.stderr and not (tmp_path / "o.onnx").exists()
    r = mnx("optimize", tmp_path / "none.onnx", "-o", tmp_path / "o.onnx")
    assert r.returncode == 2 and "no such file" in r.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    r = mnx("optimize", junk, "-o", tmp_path / "o.onnx")
    assert r.returncode == 2 and r.stderr.startswith("mnx: error:")


def test_cli_parity_failure_writes_nothing(tmp_path, monkeypatch):
    """A mismatch is exit status 1 and no file (in process, so the pass can be broken for the test)."""
    from typer.testing import CliRunner

    from micronet_onnx.cli.app import app
    from micronet_onnx.optimize import affine

    real = affine._batchnorm
    monkeypatch.setattr(affine, "_batchnorm",
                        lambda *a, **k: affine.Affine(real(*a, **k).x, real(*a, **k).scale, real(*a, **k).shift + 1))
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model_of(bn("bn", "X", "a"), plain_tc("tc", "a", "Y")), src)
    result = CliRunner().invoke(app, ["optimize", str(src), "-o", str(dst)])
    assert result.exit_code == 1 and "parity" in result.output and not dst.exists()
    assert not list(tmp_path.glob(".out.onnx*"))
