"""Format version 3 through the exporter, the CLI and the scorer: the per-layer choice, the report,
the byte reconciliation, the sizes against params_best_format and the entropy bound, and a
stability pin of the written TernaryConv nodes (attributes and initializers only: doc strings are
another writer's)."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from micronet_onnx import export as mx
from micronet_onnx.cli.app import app
from micronet_onnx.format import spec as tf
from micronet_onnx.scoring import score_model
from tests.helpers.models import save_checkpoint, tiny_model

PINNED_V3 = {
    # encoding -> sha256 of the TernaryConv nodes' names, inputs, attributes and initializers
    "auto": "ca47642ef8206fb34d822a2f6c674081dbcd39ed15cd5e57a4041da01b16fc95",
    "rows": "d47b96a56649f2a1ade5e55078bd19387d94eb7be7c3f789faa65bd98f9e4ce9",
    "entropy": "379a7a332433c75d1658529ddf411857b5d341f1fdbb1dc8ca60878cf0ccfc6c",
}


def _ternary_digest(path) -> str:
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    h = hashlib.sha256()
    for op in model.opset_import:
        h.update(f"{op.domain}:{op.version};".encode())
    for n in model.graph.node:
        if n.op_type != tf.OP_TYPE:
            continue
        h.update(f"{n.name}|{','.join(n.input)}|{','.join(n.output)}".encode())
        for a in n.attribute:
            h.update(a.SerializeToString(deterministic=True))
        for name in n.input:
            if name in inits:
                t = inits[name]
                h.update(f"{t.name}:{t.data_type}:{list(t.dims)}".encode())
                h.update(numpy_helper.to_array(t).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("v3")
    model = tiny_model(ternary=True, seed=3)
    reports = {}
    for enc in ("auto", "masks", "rows", "entropy"):
        reports[enc] = mx.export_model(model, tmp / f"{enc}.onnx", ternary=True, encoding=enc, check=enc == "auto")
    reports["v2"] = mx.export_model(model, tmp / "v2.onnx", ternary=True, format_version=2, check=False)
    return tmp, reports


@pytest.mark.parametrize("encoding", list(PINNED_V3))
def test_v3_export_is_stable(exports, encoding):
    tmp, _ = exports
    assert _ternary_digest(tmp / f"{encoding}.onnx") == PINNED_V3[encoding]


def test_auto_is_the_smallest_per_layer_and_the_report_says_which(exports):
    _, reports = exports
    auto = reports["auto"]
    assert auto.format_version == 3 and auto.parity is not None and auto.parity.passed
    lines = auto.summary()
    assert any(line.startswith("  encodings: ") for line in lines)
    for i, la in enumerate(auto.ternary_layers):
        sizes = {enc: reports[enc].ternary_layers[i].assignment_bytes for enc in tf.ENCODINGS}
        assert la.assignment_bytes == min(sizes.values()) and sizes[la.encoding] == la.assignment_bytes
        assert f"    {la.name}: {la.encoding}, {la.assignment_bytes} bytes" in lines
        assert reports["v2"].ternary_layers[i].assignment_bytes == sizes["masks"]
    assert {la.encoding for la in reports["v2"].ternary_layers} == {"masks"}


def test_score_reconciles_and_reaches_the_bound(exports):
    tmp, _ = exports
    scores = {enc: score_model(tmp / f"{enc}.onnx") for enc in ("auto", "masks", "rows", "entropy", "v2")}
    for enc, s in scores.items():
        assert s.params_paper == pytest.approx(scores["v2"].params_paper)  # Appendix B does not move
        model = onnx.load(tmp / f"{enc}.onnx")
        inits = {t.name: numpy_helper.to_array(t).nbytes for t in model.graph.initializer}
        assert s.params_stored == pytest.approx(sum(inits.values()) / 4)
        ternary = [la for la in s.layers if la.op_type == tf.OP_TYPE]
        nodes = {n.name: n for n in model.graph.node if n.op_type == tf.OP_TYPE}
        for la in ternary:
            n = nodes[la.name]
            want = sum(inits[name] for name in n.input[1:4] if name) / 4
            assert la.assignment_params == pytest.approx(want)
            assert enc == "auto" or la.encoding == {"v2": "masks"}.get(enc, enc)
        assert s.assignment_params == pytest.approx(sum(la.assignment_params for la in ternary))
        assert s.entropy_bound == pytest.approx(sum(la.entropy_bound for la in ternary))
    auto = scores["auto"]
    best = sum(la.best_alternative.params for la in auto.layers if la.op_type == tf.OP_TYPE)
    assert auto.entropy_bound <= auto.assignment_params <= 1.05 * auto.entropy_bound
    assert auto.assignment_params <= best
    assert auto.params_stored <= scores["masks"].params_stored


def _mnx(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tern.pt"
    save_checkpoint(tiny_model(ternary=True, seed=3), path, ternary=True)
    return path


@pytest.mark.parametrize(("args", "message"), [
    (("--encoding", "rows", "--format-version", "2"), "mnx: error: --encoding: encoding rows needs format version 3"),
    (("--encoding", "entropy", "--format-version", "1"), "mnx: error: --encoding: encoding entropy needs"),
    (("--encoding", "zip"), "mnx: error: --encoding: unknown encoding 'zip'"),
])
def test_cli_refuses_an_encoding_the_version_cannot_store(ckpt, tmp_path, args, message):
    r = _mnx("export", "--ternary", *args, ckpt, "-o", tmp_path / "m.onnx")
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith(message), r.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_encoding_and_score(ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    r = _mnx("export", "--ternary", "--encoding", "entropy", ckpt, "-o", out, "--probe-batch", "2")
    assert r.exit_code == 0, r.output
    assert "format version 3" in r.stdout and "encodings: 12 entropy" in r.stdout
    r = _mnx("export", "--ternary", "--format-version", "2", "--encoding", "masks", ckpt, "-o", tmp_path / "v2.onnx")
    assert r.exit_code == 0, r.output
    r = _mnx("score", out)
    assert r.exit_code == 0, r.output
    assert "entropy_bound" in r.stdout and "encodings: 12 entropy" in r.stdout
    assert np.isfinite(score_model(out).entropy_bound)
