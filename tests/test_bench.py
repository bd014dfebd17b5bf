"""`micronet_onnx.bench`: the dense twin computes what the ternary file computes, and the benchmark
functions run and return their documented keys (no timing assertions: speed targets live in the
benchmark, see docs/runtime.md)."""

from __future__ import annotations

import json
import zlib
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from micronet_onnx import bench
from micronet_onnx.bench import harness
from micronet_onnx.cli.bench_view import render, render_layers
from micronet_onnx.export import export_model
from micronet_onnx.format import spec as tf
from micronet_onnx.format.reference_op import reference_evaluator
from micronet_onnx.runtime.session import create_session
from tests.helpers.models import save_checkpoint, tiny_model
from tests.helpers.nodes import random_node

TINY_PRESET = dict(preset="micronet", depth=0.15, width=0.5)  # widths 8/16/32, 2 blocks per stage


def _ort(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tiny_ternary(tmp_path_factory):
    """A tiny exported ternary MicroNet with dead channels (so its nodes carry channel maps)."""
    path = tmp_path_factory.mktemp("bench") / "tiny.onnx"
    model = tiny_model(ternary=True)
    export_model(model, path, ternary=True, check=False)
    return path, model


def test_dense_twin_of_exported_model_computes_the_same(ops_library, tiny_ternary):
    path, tiny_model_ = tiny_ternary
    model = onnx.load(path)
    assert any(n.domain == tf.DOMAIN for n in model.graph.node)
    assert any(len(n.input) > 6 for n in model.graph.node if n.op_type == tf.OP_TYPE)  # maps present
    twin = bench.dense_twin(model)
    onnx.checker.check_model(twin, full_check=True)
    assert not any(n.domain == tf.DOMAIN for n in twin.graph.node)
    assert all(o.domain != tf.DOMAIN for o in twin.opset_import)
    assert not any(n.op_type == "Gather" for n in twin.graph.node)  # X channel counts are recorded
    # the same kind of graph as the dense export of the model (bn1 and the skip connection as BatchNormalization
    # and Add), so stock onnxruntime optimizes both alike
    dense_path = path.parent / "tiny_dense.onnx"
    export_model(tiny_model_, dense_path, ternary=False, check=False)
    assert Counter(n.op_type for n in twin.graph.node) == Counter(n.op_type for n in onnx.load(dense_path).graph.node)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    (dense,) = _ort(twin).run(None, {"input": x})
    (ref,) = reference_evaluator(model).run(None, {"input": x})
    (ours,) = create_session(path, threads=2).run(None, {"input": x})
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(dense, ref, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(ours, dense, rtol=0, atol=1e-4 * scale)
    assert (dense.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("case", [
    "plain", "affine_relu", "maps_known_x", "maps_unknown_x", "group_identity", "group_with_maps", "stride_dilation",
    "v2_block_conv1", "v2_block_conv2", "v2_all_maps_known_x", "v2_all_maps_unknown_x", "v2_group_identity",
    "v2_group_with_maps", "v2_in_scale_only_stride", "v2_in_bias_only", "v2_residual_only",
])
def test_dense_twin_of_single_nodes(case):
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    x_channels = None
    if case == "v2_block_conv1":  # bn1 -> conv1 -> bn2 -> relu
        node = random_node(rng, 6, 4, (3, 3), pads=(1, 1, 1, 1), affine=True, relu=True, in_affine=True)
    elif case == "v2_block_conv2":  # conv2 -> bn3 -> + shortcut, dead output channels
        node = random_node(rng, 5, 4, (3, 3), pads=(1, 1, 1, 1), m_out=7, affine=True, residual=True)
    elif case in ("v2_all_maps_known_x", "v2_all_maps_unknown_x"):
        x_channels = 9
        node = random_node(rng, 5, 6, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), x_channels=9, m_out=8, affine=True,
                           relu=True, in_affine=True, residual=True)
    elif case == "v2_group_identity":
        node = random_node(rng, 6, 2, (3, 3), group=3, pads=(1, 1, 1, 1), scale=True, in_affine=True, residual=True,
                           relu=True)
    elif case == "v2_group_with_maps":
        node = random_node(rng, 4, 3, (3, 3), group=2, m_out=7, affine=True, relu=True, in_affine=True,
                           residual=True)
    elif case == "v2_in_scale_only_stride":
        node = random_node(rng, 4, 3, (3, 3), strides=(2, 1), pads=(0, 2, 1, 0), dilations=(1, 2), bias=True,
                           in_scale=True)
    elif case == "v2_in_bias_only":
        node = random_node(rng, 4, 3, (3, 3), pads=(1, 1, 1, 1), in_bias=True, relu=True)
    elif case == "v2_residual_only":
        node = random_node(rng, 5, 4, (3, 3), residual=True, relu=True)
    elif case == "plain":
        node = random_node(rng, 5, 4, (3, 3))
    elif case == "affine_relu":
        node = random_node(rng, 6, 4, (3, 3), pads=(1, 1, 1, 1), affine=True, relu=True)
    elif case in ("maps_known_x", "maps_unknown_x"):
        x_channels = 9
        node = random_node(rng, 5, 6, (3, 3), pads=(1, 1, 1, 1), x_channels=9, m_out=8, affine=True, relu=True)
    elif case == "group_identity":
        node = random_node(rng, 6, 2, (3, 3), group=3, pads=(1, 1, 1, 1), scale=True)
    elif case == "group_with_maps":
        node = random_node(rng, 4, 3, (3, 3), group=2, m_out=7, affine=True, relu=True)
    else:
        node = random_node(rng, 4, 3, (3, 3), strides=(2, 1), pads=(0, 2, 1, 0), dilations=(1, 2), bias=True)
    model = node.model()
    c = x_channels or node.attrs.weight_shape[1] * node.attrs.group
    if case in ("maps_known_x", "v2_all_maps_known_x"):
        model.graph.input[0].CopyFrom(onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT,
                                                                         ["B", c, "H", "W"]))
    twin = bench.dense_twin(model)
    onnx.checker.check_model(twin)
    assert all(o.domain != tf.DOMAIN for o in twin.opset_import)
    ops = [n.op_type for n in twin.graph.node]
    assert ("Gather" in ops) == (case in ("maps_unknown_x", "v2_all_maps_unknown_x"))
    assert ("Relu" in ops) == (node.attrs.activation == "Relu")
    in_affine = node.in_scale is not None or node.in_bias is not None
    residual = node.residual_seed is not None
    assert ops.count("BatchNormalization") == in_affine and ops.count("Add") == residual
    # the layout of the dense export: [BatchNormalization] -> Conv -> [Add] -> [Relu]
    assert [op for op in ops if op != "Gather"] == (
        ["BatchNormalization"] * in_affine + ["Conv"] + ["Add"] * residual + ["Relu"] * ops.count("Relu"))
    conv = next(n for n in twin.graph.node if n.op_type == "Conv")
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    assert group == (3 if case in ("group_identity", "v2_group_identity") else 1)
    x = rng.standard_normal((2, c, 11, 10)).astype(np.float32)
    (y,) = _ort(twin).run(None, node.feeds(x))
    ref = node.reference(x)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * (1 + float(np.abs(ref).max())))


def test_make_random_ternary_model(ops_library, tmp_path):
    path = bench.make_random_ternary_model(TINY_PRESET["preset"], 0.9, tmp_path / "m.onnx", seed=3,
                                           depth=TINY_PRESET["depth"], width=TINY_PRESET["width"])
    model = onnx.load(path)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["micronet.export_kind"] == "ternary"
    assert abs(float(meta["micronet.ec2t_sparsity"]) - 0.9) < 0.03
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    (y,) = create_session(path, threads=1).run(None, {"input": x})
    assert np.isfinite(y).all()
    with pytest.raises(ValueError):
        bench.make_random_ternary_model("micronet", 1.5, tmp_path / "bad.onnx")


MODEL_KEYS = {"model", "machine", "repeats", "kernel", "rows", "max_abs_diff", "max_abs_logit", "optimize_fusions"}
ROW_KEYS = {"batch", "threads", "runtime", "ms_per_batch", "images_per_s", "speedup_vs_dense", "samples"}


def test_bench_model_returns_documented_keys(ops_library, tiny_ternary, tmp_path):
    path, model = tiny_ternary
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(model, ckpt, ternary=True)
    report = bench.bench_model(path, batches=(1, 3), threads=(1, 2), repeats=1, checkpoint=ckpt,
                               min_seconds=0.001, warmup=1)
    assert set(report) == MODEL_KEYS
    assert set(report["machine"]) >= {"cpu", "logical_cpus", "onnxruntime", "busy_cpus_before"}
    assert report["max_abs_diff"] < 1e-3
    rows = report["rows"]
    assert {(r["batch"], r["threads"], r["runtime"]) for r in rows} == {
        (b, t, r) for b in (1, 3) for t in (1, 2) for r in ("ternary", "dense", "torch")}
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["ms_per_batch"] > 0 and r["images_per_s"] > 0 and len(r["samples"]) == 1
        if r["runtime"] == "dense":
            assert r["speedup_vs_dense"] == pytest.approx(1.0)
    json.dumps(report)  # plain data
    text = render(report)
    assert "ternary/dense" in text and "ternary/torch" in text and str(path) in text


def test_bench_model_rejects_bad_arguments(ops_library, tiny_ternary):
    path, _ = tiny_ternary
    with pytest.raises(ValueError):
        bench.bench_model(path, repeats=0)
    with pytest.raises(ValueError):
        bench.bench_model(path, batches=(0,))


def test_bench_layers_returns_documented_keys(ops_library):
    report = bench.bench_layers([(8, 16, 8, 1), (8, 8, 8, 2)], (0.0, 0.9), repeats=1, min_seconds=0.001)
    assert set(report) == {"machine", "batch", "threads", "repeats", "kernels", "rows"}
    assert len(report["rows"]) == 4
    for r in report["rows"]:
        assert {"layer", "cin", "cout", "size", "stride", "sparsity", "auto_kernel", "isa", "onnxruntime_ms",
                "ternary_auto_ms", "ternary_sparse_ms", "ternary_dense_ms", "speedup_auto", "speedup_sparse",
                "speedup_dense"} <= set(r)
        # docs/runtime.md, "Dispatch rule": dense from 55 % non-zero weights on an 8x8 plane (the unit-stride
        # row) and from 40 % on strided layers, so dense at 0 % zeros and sparse at 90 % on both rows
        assert r["auto_kernel"] == ("dense" if r["sparsity"] == 0.0 else "sparse")
    assert "onnxruntime" in render_layers(report)
    json.dumps(report)


def test_kernel_choice_reports_every_node(ops_library, tiny_ternary):
    path, _ = tiny_ternary
    model = onnx.load(path)
    choices = bench.kernel_choice(model)
    names = [n.name for n in model.graph.node if n.op_type == tf.OP_TYPE]
    assert sorted(c["node"] for c in choices) == sorted(names)
    assert {c["kernel"] for c in choices} <= {"sparse", "dense"}
    assert {c["kernel"] for c in bench.kernel_choice(model, "direct")} == {"direct"}


# ---------------------------------------------------------------------------------------------
# mnx bench


def _mnx(*args: str):
    from typer.testing import CliRunner

    from micronet_onnx.cli.app import app

    return CliRunner().invoke(app, list(args))


def test_cli_bench_json_and_table(ops_library, tiny_ternary):
    path, _ = tiny_ternary
    result = _mnx("bench", str(path), "--repeats", "1", "--batch", "2", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == MODEL_KEYS
    assert {(r["batch"], r["threads"]) for r in report["rows"]} == {(2, 1)}
    result = _mnx("bench", str(path), "--repeats", "1", "--batch", "1", "--threads", "1", "--kernel", "sparse")
    assert result.exit_code == 0, result.output
    assert "ternary/dense" in result.stdout and "kernel: sparse" in result.stdout


@pytest.mark.parametrize("args,message", [
    ([], "exactly one of MODEL"),
    (["missing.onnx"], "no such file"),
    (["--layers", "--repeats", "0"], "--repeats must be in [1, 10000]"),
    (["--layers", "--sparsity", "1.5"], "--sparsity must be in"),
    (["--layers", "--kernel", "fast"], "--kernel must be"),
])
def test_cli_bench_user_errors(args, message):
    result = _mnx("bench", *args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("mnx: error:")


def test_render_flags_a_busy_machine():
    """A report taken with other work on the machine says so (the numbers are then noisy)."""
    report = {"model": "m.onnx", "kernel": "auto", "repeats": 3, "rows": [], "max_abs_diff": 0.0,
              "max_abs_logit": 1.0,
              "machine": {"cpu": "cpu", "logical_cpus": 2, "onnxruntime": "1.0", "busy_cpus_before": 1.7}}
    assert "kept 1.7 CPUs busy" in render(report)
    report["machine"]["busy_cpus_before"] = 0.05
    assert "busy" not in render(report)


def test_busy_cpus_sees_other_work():
    """A process spinning beside the measurement shows up as about one busy CPU."""
    import subprocess
    import sys

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        busy = bench.busy_cpus(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    if busy is None:
        pytest.skip("no /proc/stat here")
    assert busy > 0.5


def test_interleaved_times_settles_before_each_measurement(monkeypatch):
    """Every timed measurement is preceded by the idle pause and one untimed call."""
    events: list[str] = []
    monkeypatch.setattr(harness.time, "sleep", lambda s: events.append(f"sleep {s}"))
    times = bench.interleaved_times({"a": lambda: events.append("a"), "b": lambda: events.append("b")}, 2,
                                    warmup=0, min_seconds=0.0, settle=0.01)
    assert [len(v) for v in times.values()] == [2, 2]
    # calibration calls each once, then per round and contestant: sleep, untimed call, timed call(s)
    rounds = events[2:]
    assert rounds[0] == "sleep 0.01" and rounds[1] == "a" and rounds[2] == "a" and rounds[3] == "sleep 0.01"
