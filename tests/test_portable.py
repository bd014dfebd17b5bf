"""The portable export (`mnx export --portable`): standard ONNX only, INT2 codes looked up by standard
ops, checked and run in stock onnxruntime without our library, scored like the TernaryConv file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from micronet_onnx.export import ExportError, export_checkpoint, export_model, parity
from micronet_onnx.export.portable import pack_int2
from micronet_onnx.format import versions
from micronet_onnx.format.reference_op import reference_evaluator
from micronet_onnx.runtime.session import create_session
from micronet_onnx.scoring import score_model
from tests.helpers.models import save_checkpoint, tiny_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("portable")
    model = tiny_model(ternary=True)
    save_checkpoint(model, tmp / "tiny.pt", ternary=True)
    reports = {
        "portable": export_checkpoint(tmp / "tiny.pt", tmp / "portable.onnx", ternary=False, portable=True),
        "ternary": export_checkpoint(tmp / "tiny.pt", tmp / "ternary.onnx", ternary=True),
        "ternary_v1": export_checkpoint(tmp / "tiny.pt", tmp / "ternary_v1.onnx", ternary=True, format_version=1),
        "dense": export_checkpoint(tmp / "tiny.pt", tmp / "dense.onnx", ternary=False),
    }
    return tmp, reports


def test_pack_int2_is_the_standard_layout():
    codes = np.array([-1, 0, 1, -2, 1, 1, 0], dtype=np.int8)  # 7 values: the last byte is padded
    raw = pack_int2(codes)
    assert raw == bytes([0b10_01_00_11, 0b00_00_01_01])  # first value in the low bits
    t = onnx.helper.make_tensor("c", onnx.TensorProto.INT2, [7], raw, raw=True)
    assert np.array_equal(numpy_helper.to_array(t).astype(np.int8), codes)


def test_file_is_standard_onnx_with_int2_codes(files):
    tmp, reports = files
    m = onnx.load(tmp / "portable.onnx")
    onnx.checker.check_model(m, full_check=True)
    assert [(o.domain, o.version) for o in m.opset_import] == [("", versions.PORTABLE_OPSET)]
    assert m.ir_version == versions.PORTABLE_IR_VERSION
    assert all(n.domain == "" for n in m.graph.node)
    int2 = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT2]
    assert len(int2) == len(reports["portable"].ternary_layers) == 12
    for t in int2:  # raw data, never varint fields, exactly ceil(n / 4) bytes
        assert not t.int32_data and len(t.raw_data) == (int(np.prod(t.dims)) + 3) // 4
        assert set(np.unique(numpy_helper.to_array(t).astype(np.int8))) <= {-1, 0, 1}
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["micronet.export_kind"] == "portable"


def test_dead_channels_as_in_the_ternary_export(files):
    _, reports = files
    portable, ternary = reports["portable"].ternary_layers, reports["ternary_v1"].ternary_layers
    assert reports["portable"].dead_outputs > 0 and reports["portable"].dropped_inputs > 0
    for p, t in zip(portable, ternary, strict=True):
        assert (p.name, p.stored_shape, p.nnz, p.dead_outputs, p.dead_outputs_zero_inputs, p.dropped_inputs,
                p.kept_constant_inputs) == (t.name, t.stored_shape, t.nnz, t.dead_outputs,
                                            t.dead_outputs_zero_inputs, t.dropped_inputs, t.kept_constant_inputs)


def test_parity_without_the_library_and_against_the_ternary_file(files):
    tmp, reports = files
    assert reports["portable"].parity.passed and reports["portable"].parity.evaluator == "onnxruntime"
    x = parity.default_probe(batch=4).numpy()
    sess = create_session(tmp / "portable.onnx", library=False)
    y = sess.run(None, {"input": x})[0]
    (yt,) = reference_evaluator(onnx.load(tmp / "ternary.onnx")).run(None, {"input": x})
    tol = parity.tolerance(float(np.abs(yt).max()), 0)
    assert np.abs(y - yt).max() <= tol
    assert np.array_equal(y.argmax(1), np.asarray(yt).argmax(1))
    yd = create_session(tmp / "dense.onnx", library=False).run(None, {"input": x})[0]
    assert np.abs(y - yd).max() <= tol  # bit-identical weights: only the summation order may differ


def test_onnxruntime_folds_the_lookup_at_load(files, tmp_path):
    tmp, _ = files
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp / "portable.onnx"), so, providers=["CPUExecutionProvider"])
    opt = onnx.load(tmp_path / "opt.onnx").graph
    ops = {n.op_type for n in opt.node}
    assert not ops & {"Gather", "Cast", "Pad"}, ops
    inits = {t.name for t in opt.initializer}
    convs = [n for n in opt.node if n.op_type == "Conv"]
    assert convs and all(n.input[1] in inits for n in convs)  # every weight folded to a constant
    # The only Mul left at run time is each block's bn1 scale (its shift is the Add after it).
    assert all(n.name.endswith(".bn1.mul") for n in opt.node if n.op_type == "Mul")


def test_score_agrees_with_the_ternary_file(files):
    tmp, _ = files
    p = score_model(tmp / "portable.onnx")
    for name in ("ternary.onnx", "ternary_v1.onnx"):
        assert p.params_paper == pytest.approx(score_model(tmp / name).params_paper, abs=1e-9)
    m = onnx.load(tmp / "portable.onnx")
    stored_bits = sum(len(t.raw_data) * 8 for t in m.graph.initializer)  # INT2 at 2 bits, padded bytes
    assert p.params_stored == pytest.approx(stored_bits / 32)
    assert p.num_ternary_layers == 12


def test_eval_runs_without_the_library(files):
    tmp, _ = files
    env = {**os.environ, "MICRONET_OPS_LIBRARY": str(tmp / "no-such-library.so")}
    cmd = [sys.executable, "-m", "micronet_onnx", "eval", str(tmp / "portable.onnx"), "--dataset", "digits",
           "--limit", "32", "--json"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in json.loads(r.stdout) or r.stdout
    out = tmp / "cli.onnx"
    r = subprocess.run([*cmd[:3], "export", "--portable", str(tmp / "tiny.pt"), "-o", str(out)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "portable" in r.stdout, r.stderr
    assert out.read_bytes() == (tmp / "portable.onnx").read_bytes()  # reproducible, same as the library call
    bad = subprocess.run([*cmd[:4], str(tmp / "ternary.onnx"), *cmd[5:]], env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode != 0  # the same bogus path does break a file that needs the library


def test_size_against_dense_at_90_percent_zeros(files):
    _, reports = files
    p, t, d = (reports[k].file_bytes for k in ("portable", "ternary", "dense"))
    assert t < p < d / 4  # the tiny model's float32 stem/shortcut/FC and names dominate
    from micronet_onnx.bench.synthetic import random_ternary_micronet

    model = random_ternary_micronet("micronet-c100", 0.9, seed=0)
    size = {}
    for kind in ("portable", "dense"):
        r = export_model(model, files[0] / f"c100_{kind}.onnx", ternary=False, portable=kind == "portable",
                         check=False)
        size[kind] = r.file_bytes
    assert size["portable"] < size["dense"] / 8
    assert size["portable"] <= 2.3 * 2**20


def test_refused_requests(tmp_path):
    with pytest.raises(ExportError):
        export_model(tiny_model(ternary=True), tmp_path / "x.onnx", ternary=True, portable=True)
    with pytest.raises(ExportError):
        export_model(tiny_model(ternary=False), tmp_path / "x.onnx", ternary=False, portable=True)
