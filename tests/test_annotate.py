"""Netron-friendly files: a doc string on every TernaryConv node that matches the node, the file's
descriptive metadata, and `mnx export --no-annotate` for byte-minimal files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx

from micronet_onnx.format import versions
from micronet_onnx.format.node import TernaryConvNode, is_ternary_conv
from tests.helpers.models import save_checkpoint, tiny_model


def _export(tmp_path, *extra: str) -> onnx.ModelProto:
    ckpt, out = tmp_path / "m.pt", tmp_path / f"m{len(extra)}.onnx"
    if not ckpt.exists():
        save_checkpoint(tiny_model(ternary=True, seed=3), ckpt, ternary=True)
    r = subprocess.run([sys.executable, "-m", "micronet_onnx", "export", "--ternary", str(ckpt), "-o", str(out),
                        "--no-check", *extra], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return onnx.load(str(out))


def test_doc_strings_describe_each_node_and_no_annotate_leaves_them_out(tmp_path):
    m = _export(tmp_path)
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    nodes = [n for n in m.graph.node if is_ternary_conv(n)]
    assert nodes
    for n in nodes:
        t = TernaryConvNode.from_onnx(n, consts, versions.micronet_version(m))
        zeros = float((np.asarray(t.codes) == 0).mean()) * 100
        assert f"{zeros:.1f}% zeros" in n.doc_string, n.doc_string
        assert f"encoding {t.encoding}" in n.doc_string
    keys = {p.key for p in m.metadata_props}
    assert {"micronet.description", "micronet.how_to_run", "micronet.summary"} <= keys

    bare = _export(tmp_path, "--no-annotate")
    assert not any(n.doc_string for n in bare.graph.node)
    bare_keys = {p.key for p in bare.metadata_props}
    assert "micronet.description" not in bare_keys and "micronet.format_version" in bare_keys
    assert bare.ByteSize() < m.ByteSize()
