"""`mnx optimize` stores each node's assignment in its cheapest encoding (format version 3), or as asked."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from micronet_onnx.format import spec, versions
from micronet_onnx.format.node import TernaryConvNode, is_ternary_conv
from micronet_onnx.optimize import KEEP_ENCODING, OptimizeError, optimize_model
from micronet_onnx.runtime.session import create_session


@pytest.fixture(scope="module")
def paper_v2(tmp_path_factory):
    """A v2 (masks) export of a 90 %-zero ternary MicroNet whose layers are big enough for rows and
    entropy to beat the masks."""
    from micronet_onnx.bench.synthetic import random_ternary_micronet
    from micronet_onnx.export import export_model

    path = tmp_path_factory.mktemp("enc") / "v2.onnx"
    export_model(random_ternary_micronet("micronet", 0.9, depth=0.15, width=1.0), path, ternary=True,
                 format_version=2, check=False)
    return path


def _nodes(model: onnx.ModelProto) -> list[TernaryConvNode]:
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    version = versions.micronet_version(model)
    return [TernaryConvNode.from_onnx(n, consts, version) for n in model.graph.node if is_ternary_conv(n)]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return create_session(model.SerializeToString(), 1).run(None, {"input": x})[0]


def test_v2_file_gets_the_cheapest_encodings_and_the_same_function(paper_v2):
    m = onnx.load(paper_v2)
    out, report = optimize_model(m)
    assert report.format_version_out == spec.OPSET_VERSION
    before, after = _nodes(m), _nodes(out)
    assert {n.encoding for n in before} == {"masks"} and "masks" not in {n.encoding for n in after}
    assert len(report.reencoded) == len(after)
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a.codes, b.codes)
    # the reported bytes are the file's: the re-encoded nodes' initializers shrink by exactly that
    saved = sum(x.bytes_in - x.bytes_out for x in report.reencoded)
    assert saved > 0
    size = lambda p: sum(len(t.raw_data) for t in p.graph.initializer)  # noqa: E731
    assert size(m) - size(out) == saved
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, x), _run(optimize_model(m, encoding=KEEP_ENCODING)[0], x))
    again, second = optimize_model(out)
    assert not second.reencoded and again.SerializeToString() == out.SerializeToString()


def test_keep_and_forced_encodings(paper_v2):
    m = onnx.load(paper_v2)
    kept, report = optimize_model(m, encoding=KEEP_ENCODING)
    assert not report.reencoded and {n.encoding for n in _nodes(kept)} == {"masks"}
    rows, report = optimize_model(m, encoding="rows")
    assert {n.encoding for n in _nodes(rows)} == {"rows"} and len(report.reencoded) == len(_nodes(m))
    with pytest.raises(OptimizeError, match="unknown encoding"):
        optimize_model(m, encoding="zip")


def test_cli_bad_encoding_is_a_usage_error(paper_v2, tmp_path):
    r = subprocess.run([sys.executable, "-m", "micronet_onnx", "optimize", str(paper_v2), "-o",
                        str(tmp_path / "o.onnx"), "--encoding", "zip"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--encoding" in r.stderr
    assert not (tmp_path / "o.onnx").exists()
    r = subprocess.run([sys.executable, "-m", "micronet_onnx", "optimize", str(paper_v2), "-o",
                        str(tmp_path / "o.onnx")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "re-encoded:" in r.stdout
