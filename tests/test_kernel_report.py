"""The MICRONET_TERNARY_REPORT channel of the compiled library and its reader
``micronet_onnx.runtime.kernel_report`` (real library, real onnxruntime): one JSON line per
TernaryConv kernel, agreeing with the MICRONET_TERNARY_LOG line, appended atomically."""

from __future__ import annotations

import json
import os
import re
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from micronet_onnx.format import spec as tf
from micronet_onnx.runtime.kernel_report import (
    ISA_ENV,
    KERNEL_ENV,
    REPORT_ENV,
    REPORT_VERSION,
    KernelReportError,
    NodeKernel,
    node_kernels,
    parse_report,
    read_report,
)
from micronet_onnx.runtime.session import create_session
from tests.helpers.cpu import BEST_ISA
from tests.helpers.nodes import random_node


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in (KERNEL_ENV, ISA_ENV, REPORT_ENV, "MICRONET_TERNARY_LOG"):
        monkeypatch.delenv(name, raising=False)


def _model(*, stride: int = 1, sparsity: float = 0.9, seed: int = 3, name: str = "tc") -> bytes:
    node = random_node(np.random.default_rng(seed), 32, 32, (3, 3), strides=(stride, stride), pads=(1, 1, 1, 1),
                       sparsity=sparsity)
    return node.model(node_name=name).SerializeToString()


def _chain() -> onnx.ModelProto:
    """X [B, 8, 16, 16] -> a (stride 2) -> b: b's X has no value_info (shape inference states it)."""
    rng = np.random.default_rng(11)
    nodes, inits = [], []
    for name, x_name, y_name, stride in (("a", "X", "T", 2), ("b", "T", "Y", 1)):
        n = random_node(rng, 8, 8, (3, 3), strides=(stride, stride), pads=(1, 1, 1, 1), sparsity=0.33, prefix=name)
        names, arrays = n.wire(x_name)
        nodes.append(helper.make_node(tf.OP_TYPE, names, [y_name], domain=tf.DOMAIN, name=name, **n.attrs.to_onnx()))
        inits += [numpy_helper.from_array(v, k) for k, v in arrays.items()]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", 8, 16, 16])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(tf.DOMAIN, tf.OPSET_VERSION)], ir_version=8)


def test_auto_reports_sparse_and_dense_nodes(ops_library):
    (sparse,) = node_kernels(_model(stride=1, sparsity=0.9))
    assert isinstance(sparse, NodeKernel)
    assert (sparse.node, sparse.output, sparse.kernel, sparse.isa) == ("tc", "Y", "sparse", BEST_ISA)
    assert (sparse.requested, sparse.requested_isa, sparse.forced) == ("auto", "auto", False)
    assert sparse.weight_shape == (32, 32, 3, 3) and sparse.group == 1 and sparse.pid == os.getpid()
    assert 0.05 < sparse.density < 0.15 and sparse.nnz == round(sparse.density * 32 * 32 * 9)
    (dense,) = node_kernels(_model(stride=2, sparsity=0.0))
    assert (dense.kernel, dense.isa, dense.forced) == ("dense", BEST_ISA, False)
    assert dense.density == 1.0 and dense.effective == 1.0 and dense.complement_rows == 0
    assert dense.dense_threshold == pytest.approx(0.4)


@pytest.mark.parametrize("kernel,expected,isa", [
    ("sparse", "sparse", BEST_ISA), ("dense", "dense", BEST_ISA), ("portable", "sparse", "portable"),
    ("direct", "direct", "scalar"), ("auto", "dense", BEST_ISA),
])
def test_forced_kernels_are_reported_as_forced(ops_library, kernel, expected, isa):
    (rec,) = node_kernels(_model(stride=2, sparsity=0.0), kernel=kernel)
    assert (rec.kernel, rec.isa, rec.requested) == (expected, isa, kernel)
    assert rec.forced == (kernel != "auto")
    assert KERNEL_ENV not in os.environ and REPORT_ENV not in os.environ  # restored


def test_forced_isa_and_environment_restored(ops_library, monkeypatch):
    monkeypatch.setenv(KERNEL_ENV, "direct")
    (rec,) = node_kernels(_model(), isa="portable")
    assert (rec.kernel, rec.requested, rec.requested_isa) == ("direct", "direct", "portable")
    (rec,) = node_kernels(_model(), kernel="sparse", isa="portable")
    assert (rec.kernel, rec.isa, rec.forced) == ("sparse", "portable", True)
    assert os.environ[KERNEL_ENV] == "direct" and ISA_ENV not in os.environ
    with pytest.raises(ValueError, match="kernel must be one of"):
        node_kernels(_model(), kernel="fastest")


def test_report_agrees_with_the_log_line(ops_library, monkeypatch, capfd, tmp_path):
    path = tmp_path / "r.jsonl"
    monkeypatch.setenv(REPORT_ENV, str(path))
    monkeypatch.setenv("MICRONET_TERNARY_LOG", "1")
    create_session(_model(sparsity=0.25), threads=1)
    (line,) = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("micronet: ")]
    (rec,) = read_report(path)
    log = dict(re.findall(r"(\w+)=(\S+)", line))
    assert line.startswith(f"micronet: TernaryConv node '{rec.node}': kernel={rec.kernel} isa={rec.isa} ")
    assert float(log["density"]) == pytest.approx(rec.density, abs=5e-5)
    assert float(log["effective"]) == pytest.approx(rec.effective, abs=5e-5)
    assert (int(log["complement_rows"]), int(log["plane"]), int(log["nnz"])) == (rec.complement_rows, rec.plane,
                                                                                rec.nnz)
    raw = json.loads(path.read_text().splitlines()[0])
    assert raw["report_version"] == REPORT_VERSION
    assert {"node", "kernel", "isa", "density", "effective", "complement_rows", "plane"} <= raw.keys()


def test_one_line_per_node_and_shapes_reach_the_kernels(ops_library):
    a, b = node_kernels(_chain())
    assert (a.node, a.output, b.node, b.output) == ("a", "T", "b", "Y")
    assert a.plane == 64  # 16x16 at stride 2, from the graph input
    assert b.plane == 64  # 8x8: T's shape, inferred by TernaryConv's shape inference
    assert b.dense_threshold == pytest.approx(0.55)


def test_concurrent_sessions_append_whole_lines(ops_library, monkeypatch, tmp_path):
    path = tmp_path / "r.jsonl"
    monkeypatch.setenv(REPORT_ENV, str(path))
    model = _chain().SerializeToString()
    errors = []

    def work():
        try:
            for _ in range(3):
                create_session(model, threads=1)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    records = read_report(path)
    assert len(records) == 4 * 3 * 2
    assert sorted(r.node for r in records) == ["a"] * 12 + ["b"] * 12


def test_unwritable_report_fails_the_session(ops_library, monkeypatch, tmp_path):
    monkeypatch.setenv(REPORT_ENV, str(tmp_path / "missing-dir" / "r.jsonl"))
    with pytest.raises(Exception, match=r"TernaryConv node 'tc': MICRONET_TERNARY_REPORT='.*': cannot open"):
        create_session(_model(), threads=1)


def test_parse_report_rejects_other_versions_and_garbage():
    line = {"report_version": 2, "node": "x"}
    with pytest.raises(KernelReportError, match="report_version 2"):
        parse_report(json.dumps(line))
    with pytest.raises(KernelReportError, match="not JSON"):
        parse_report("micronet: TernaryConv node 'x': kernel=sparse")
    with pytest.raises(KernelReportError, match="without field 'kernel'"):
        parse_report(json.dumps({"report_version": 1, "node": "x", "output": "y", "weight_shape": [1, 1, 1, 1]}))
    assert parse_report("\n\n") == []
