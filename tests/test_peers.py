"""`mnx bench --peers` (docs/runtime.md, "Peers"): every contestant computes the float32 model's function in
its real runtime (our library, stock onnxruntime, OpenVINO), the int8 file is a real per-channel QDQ
file, the report has its fields, a missing peer is one skip line. Correctness only, never speed: tiny
models, one round, no pause.

Tolerances. Float32 contestants: max |logit - fp32 logit| <= 1e-4 x max(1, largest |logit|) (float32
rounding in different summation orders). Static int8 (onnxruntime and OpenVINO, the same QDQ file):
max difference <= 0.15 x the largest |logit|, argmax agreement >= 85 % and top-1 within 5 points of the
float32 model's on the digits test split; measured on this module's trained tiny model: 0.33 of 7.9
(4 %), 95-96 % agreement, 57.9-58.5 % against 58.8 %. OpenVINO's default precision is float32 on a CPU
without bf16/fp16 arithmetic and is held to the float32 bound there, to the int8 bound elsewhere.
"""

from __future__ import annotations

import builtins
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import pytest

from micronet_onnx import bench
from micronet_onnx.bench import peer_bench, peers
from micronet_onnx.bench.peer_data import load_peer_data
from micronet_onnx.bench.peer_files import build_peer_files
from micronet_onnx.bench.quantize import needs_reduce_range, qdq_info
from micronet_onnx.cli.peers_view import render_peers
from micronet_onnx.export import export_checkpoint, export_model
from micronet_onnx.training.checkpoint import Checkpoint
from micronet_onnx.training.loop import TrainConfig, train
from tests.helpers.models import tiny_model

from .conftest import TINY

FAST = dict(repeats=1, warmup=0, min_seconds=0.0005, settle=0.0)  # one round, no pause: correctness only
FP32_RTOL = 1e-4
INT8_RTOL, INT8_AGREEMENT, INT8_TOP1_POINTS = 0.15, 0.85, 0.05
CONTESTANTS = [c.name for c in peers.contestants()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MicroNet trained on the digits (fp + EC2T, as tests/test_pipeline.py) and its TernaryConv file."""
    root = tmp_path_factory.mktemp("peers")
    ckpt = root / "model.pt"
    cfg = TrainConfig(**TINY, epochs=3, batch_size=64, lr=0.05, ternary=True, ternary_epochs=2, freeze_epochs=1,
                      ec2t=dict(lambda_gain=0.5, lr_weights=1e-3, lr_centroids=1e-4, lr_other=1e-3))
    train(cfg, ckpt, log=lambda s: None)
    ternary = root / "ternary.onnx"
    export_checkpoint(ckpt, ternary, ternary=True)
    return {"root": root, "ckpt": ckpt, "ternary": ternary}


@pytest.fixture(scope="module")
def built(trained):
    data = load_peer_data((3, 32, 32), trained_dataset="digits", eval_images=200, calibration_images=64)
    folder = trained["root"] / "files"
    folder.mkdir()
    model = Checkpoint.load(trained["ckpt"]).build_model()
    return data, build_peer_files(trained["ternary"], folder, data, torch_model=model)


def _logits(contestant, files, data, batch=None) -> np.ndarray:
    runner = contestant.prepare(files.paths[contestant.file], 1, batch)
    x = data.images if batch is None else data.images[:batch]
    return np.array(runner.run(np.ascontiguousarray(x)), copy=True), runner.properties


def test_openvino_is_installed_for_the_tests():
    """The dev extra installs OpenVINO, so the OpenVINO contestants are tested for real, never skipped."""
    _, reason = peers.openvino_status()
    assert reason is None, f"{reason} (make setup installs .[dev], which includes it)"


def test_qdq_file_is_static_int8_with_per_channel_weights(built):
    _, files = built
    m = onnx.load(files.paths["qdq"])
    onnx.checker.check_model(m, full_check=True)
    ops = Counter(n.op_type for n in m.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    assert ops["BatchNormalization"] > 0  # left in float32 (quantize.NOT_QUANTIZED)
    # only the domains it uses: not the `micronet` one our library registered in this process (the export
    # of the fixture ran a session with it), which a stock session would refuse
    assert {o.domain for o in m.opset_import} <= {"", "ai.onnx"} | {n.domain for n in m.graph.node}
    producers = {o: n for n in m.graph.node for o in n.output}
    inits = {t.name: t for t in m.graph.initializer}
    convs = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(convs) == 16  # 15 convs and the classifier
    for conv in convs:
        dq = producers[conv.input[1]]  # no weight stays float: each comes out of a DequantizeLinear
        assert dq.op_type == "DequantizeLinear" and dq.input[0] in inits
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.data_type == onnx.TensorProto.INT8
        axis = {a.name: a.i for a in dq.attribute}.get("axis")
        assert axis is not None and list(scale.dims) == [weight.dims[axis]] and weight.dims[axis] > 1
    info = qdq_info(m)
    assert info.per_channel_weights == 16 and info.quantize_nodes == ops["QuantizeLinear"]
    assert files.qdq.reduce_range == needs_reduce_range()


@pytest.mark.parametrize("name", CONTESTANTS)
def test_each_contestant_computes_the_fp32_function(built, ops_library, name):
    data, files = built
    registry = {c.name: c for c in peers.contestants()}
    ref, _ = _logits(registry[peers.REFERENCE], files, data)
    scale = max(1.0, float(np.abs(ref).max()))
    c = registry[name]
    if c.file not in files.paths:
        assert name == "ours-optimized" and "no fusion" in files.notes["optimized"]
        return
    try:
        y, props = _logits(c, files, data)
    except peers.PeerUnavailable as e:  # OpenVINO 2026.4 cannot read INT2 initializers (docs/runtime.md)
        assert name == "openvino-portable" and "cannot read the portable file" in str(e) and "\n" not in str(e)
        return
    hint = props.get("INFERENCE_PRECISION_HINT", "f32")
    if c.precision == "int8" or hint != "f32":
        assert np.abs(y - ref).max() <= INT8_RTOL * scale
        assert np.mean(y.argmax(1) == ref.argmax(1)) >= INT8_AGREEMENT
        top1, top1_ref = np.mean(y.argmax(1) == data.labels), np.mean(ref.argmax(1) == data.labels)
        assert top1 >= top1_ref - INT8_TOP1_POINTS
    else:
        np.testing.assert_allclose(y, ref, rtol=0, atol=FP32_RTOL * scale)
    if isinstance(c, peers.OpenVino):  # the timed form: reshaped to a static batch, same logits
        y4, _ = _logits(c, files, data, batch=4)
        np.testing.assert_allclose(y4, y[:4], rtol=0, atol=FP32_RTOL * scale)


def test_file_sizes_order(built):
    """The TernaryConv file is the smallest, the portable file smaller than int8, int8 than float32."""
    _, files = built
    size = files.sizes()
    assert size["ternary"] < size["portable"] < size["qdq"] < size["dense"]


def _check_report(report: dict, *, batches, threads, labels: bool) -> None:
    report = json.loads(json.dumps(report))  # plain data
    for key in ("kind", "model", "machine", "repeats", "settle_seconds", "kernel", "reference", "data", "qdq",
                "contestants", "skipped", "rows", "max_abs_logit"):
        assert key in report, key
    ran = [c["name"] for c in report["contestants"]]
    assert ran[0] == peers.OURS and peers.REFERENCE in ran
    assert sorted(ran + [s["name"] for s in report["skipped"]]) == sorted(CONTESTANTS)
    for c in report["contestants"]:
        assert {"label", "runtime", "precision", "file", "file_bytes", "top1", "agreement_with_fp32",
                "max_abs_logit_diff", "properties"} <= set(c)
        assert (c["top1"] is not None) == labels and 0 <= c["agreement_with_fp32"] <= 1
    keys = {(r["batch"], r["threads"], r["contestant"]) for r in report["rows"]}
    assert keys == {(b, t, n) for b in batches for t in threads for n in ran}
    for r in report["rows"]:
        assert r["images_per_s"] > 0 and len(r["samples"]) == report["repeats"]
        if r["contestant"] == peers.OURS:
            assert r["relative_to_ours"] == 1.0
    for s in report["skipped"]:
        assert s["reason"] and "\n" not in s["reason"]


def test_bench_peers_report_on_a_trained_file_and_its_checkpoint(trained, ops_library):
    report = bench.bench_peers(trained["ternary"], checkpoint=trained["ckpt"], batches=(1, 3), threads=(1,),
                               eval_images=64, calibration_images=32, **FAST)
    _check_report(report, batches=(1, 3), threads=(1,), labels=True)
    assert report["data"]["dataset"] == "digits" and report["data"]["images"] == 64
    text = render_peers(report)
    assert all(c["label"] in text for c in report["contestants"])
    assert all(f"skipped {s['name']}: {s['reason']}" in text for s in report["skipped"])
    # the checkpoint alone as MODEL: its TernaryConv file is exported first
    again = bench.bench_peers(trained["ckpt"], batches=(2,), threads=(1,), eval_images=16, calibration_images=16,
                              **FAST)
    assert "onnxruntime-portable" in [c["name"] for c in again["contestants"]] and again["checkpoint"]


def test_bench_peers_random_small(ops_library):
    """--random: the random model's own PyTorch model gives the portable file; no labels, agreement only."""
    reports = bench.bench_peers_random("micronet", (0.9,), depth=0.15, width=0.5, batches=(2,), threads=(1,),
                                       eval_images=32, calibration_images=16, **FAST)
    (report,) = reports
    _check_report(report, batches=(2,), threads=(1,), labels=False)
    assert report["sparsity"] == 0.9 and report["preset"] == "micronet"
    assert "random model" in report["data"]["description"] and "implies no data set" in report["data"]["description"]
    assert "top-1: not reported for a random model" in render_peers(report)


def test_missing_openvino_is_one_skip_line_per_contestant(monkeypatch, tmp_path, ops_library):
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "openvino", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_openvino)
    module, reason = peers.openvino_status()
    assert module is None and "not installed" in reason and "micronet-onnx[peers]" in reason
    path = tmp_path / "tiny.onnx"
    export_model(tiny_model(ternary=True), path, ternary=True, check=False)
    data = load_peer_data((3, 32, 32), eval_images=8, calibration_images=8)
    report = peer_bench.bench_files(path, data, batches=(1,), threads=(1,), **FAST)
    skipped = {s["name"]: s["reason"] for s in report["skipped"]}
    assert {n for n in skipped if n.startswith("openvino")} == {"openvino", "openvino-fp32", "openvino-int8",
                                                                "openvino-portable"}
    assert all(skipped[n] == reason for n in skipped if n.startswith("openvino"))
    assert not any(r["contestant"].startswith("openvino") for r in report["rows"])
    assert f"skipped openvino-int8: {reason}" in render_peers(report).splitlines()


def test_cli_peers_json_on_a_trained_file(trained, ops_library):
    r = subprocess.run([sys.executable, "-m", "micronet_onnx", "bench", str(trained["ternary"]), "--checkpoint",
                        str(trained["ckpt"]), "--peers", "--batch", "2", "--threads", "1", "--repeats", "1", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    _check_report(report, batches=(2,), threads=(1,), labels=True)
    assert report["settle_seconds"] == peer_bench.PEER_SETTLE_SECONDS


def test_cli_peers_refuses_layers_and_a_checkpoint_with_random(trained):
    with_ckpt = ["--random", "micronet-c100", "--peers", "--checkpoint", str(trained["ckpt"])]
    for args in (["--layers", "--peers"], with_ckpt):
        r = subprocess.run([sys.executable, "-m", "micronet_onnx", "bench", *args], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and r.stderr.startswith("mnx: error:") and len(r.stderr.strip().splitlines()) == 1
