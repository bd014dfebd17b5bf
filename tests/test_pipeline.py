"""End to end on real data: train (fp + EC2T) -> export -> onnxruntime (our library) -> score -> eval."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from micronet_onnx import create_session
from micronet_onnx.data import make_batch
from micronet_onnx.export import export_checkpoint
from micronet_onnx.scoring import score_model
from micronet_onnx.training import checkpoint
from micronet_onnx.training.loop import TrainConfig, train

from .conftest import TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("pipeline")
    ckpt = root / "model.pt"
    cfg = TrainConfig(**TINY, epochs=3, batch_size=64, lr=0.05, ternary=True, ternary_epochs=2, freeze_epochs=1,
                      ec2t=dict(lambda_gain=0.5, lr_weights=1e-3, lr_centroids=1e-4, lr_other=1e-3))
    results = train(cfg, ckpt, log=lambda s: None)
    ternary, dense = root / "ternary.onnx", root / "dense.onnx"
    export_checkpoint(ckpt, ternary, ternary=True)
    export_checkpoint(ckpt, dense, ternary=False)
    return {"ckpt": ckpt, "results": results, "ternary": ternary, "dense": dense}


def _test_batch(ds, n=128):
    x, y = make_batch(ds.test, torch.arange(n), ds, None, None)
    return x, y


def test_library_matches_pytorch_on_trained_model(trained, digits, ops_library):
    model = checkpoint.Checkpoint.load(trained["ckpt"]).build_model()
    x, _ = _test_batch(digits)
    with torch.no_grad():
        ref = model(x).numpy()
    for threads in (1, 2):
        out = create_session(trained["ternary"], threads=threads).run(None, {"input": x.numpy()})[0]
        # fp16 centroids/scale/bias against the float32-trained model: a small relative error
        assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.98


def test_ternary_and_dense_files_agree(trained, digits, ops_library):
    import onnxruntime as ort

    x, _ = _test_batch(digits)
    tern = create_session(trained["ternary"]).run(None, {"input": x.numpy()})[0]
    dense = ort.InferenceSession(str(trained["dense"]), providers=["CPUExecutionProvider"])
    d = dense.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(tern, d, atol=1e-4 * np.abs(d).max())
    assert (tern.argmax(1) == d.argmax(1)).all()


def test_score_reconciles_with_the_file(trained):
    for path in (trained["ternary"], trained["dense"]):
        report = score_model(path)
        proto = onnx.load(str(path))
        init_bytes = sum(len(t.raw_data) for t in proto.graph.initializer)
        assert abs(report.params_stored * 4 - init_bytes) <= 0.01 * init_bytes
        assert 0 <= report.file_bytes - init_bytes <= 64 * 1024  # protobuf overhead only
        assert report.file_bytes == os.path.getsize(path)
    tern, dense = score_model(trained["ternary"]), score_model(trained["dense"])
    assert tern.num_ternary_layers == 12 and dense.num_ternary_layers == 0
    assert tern.params_stored < dense.params_stored / 4
    assert tern.dense_fp32_params == pytest.approx(dense.params_stored, rel=0.01)


def _mnx(*args):
    return subprocess.run([sys.executable, "-m", "micronet_onnx", *args], capture_output=True, text=True, timeout=300)


def test_eval_cli_reports_accuracy_next_to_pytorch(trained, ops_library):
    r = _mnx("eval", str(trained["ternary"]), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["custom_ops"] and result["dataset"] == "digits" and result["images"] == 359
    # same weights, same test split: the file's accuracy is PyTorch's up to fp16 rounding
    assert abs(result["top1"] - result["pytorch_top1"]) <= 0.02
    assert result["top1"] > 0.3
    dense = json.loads(_mnx("eval", str(trained["dense"]), "--json").stdout)
    assert not dense["custom_ops"] and abs(dense["top1"] - result["top1"]) <= 0.01


def test_score_cli_table_and_json(trained):
    r = _mnx("score", str(trained["ternary"]))
    assert r.returncode == 0 and "TernaryConv" in r.stdout and "params_paper" in r.stdout
    data = json.loads(_mnx("score", str(trained["ternary"]), "--json").stdout)
    for key in ("params_paper", "params_stored", "file_bytes", "ops", "score", "layers"):
        assert key in data
    assert {"name", "op_type", "sparsity", "params_paper", "params_stored"} <= set(data["layers"][0])


def test_frozen_phase_never_selects_a_worse_model(trained):
    r = trained["results"]
    assert r["frozen"]["val_acc"] >= r["ec2t"]["val_acc"]
    assert r["final"]["phase"] == "frozen" and r["final"]["sparsity"] == r["ec2t"]["sparsity"]


@pytest.mark.parametrize("library", ["missing", "unloadable"])
def test_dense_file_evaluates_without_the_library(trained, tmp_path, library):
    """A dense export is plain standard ONNX: `mnx eval` runs it in stock onnxruntime and never asks for
    our library, while the ternary file of the same run says clearly that it needs it."""
    bogus = tmp_path / "libmicronet_ops.so"
    if library == "unloadable":
        bogus.write_bytes(b"not a shared library")
    env = {**os.environ, "MICRONET_OPS_LIBRARY": str(bogus)}
    run = lambda path: subprocess.run([sys.executable, "-m", "micronet_onnx", "eval", str(path), "--json"],  # noqa: E731
                                      capture_output=True, text=True, timeout=300, env=env)
    dense = run(trained["dense"])
    assert dense.returncode == 0, dense.stderr
    assert json.loads(dense.stdout)["custom_ops"] is False
    ternary = run(trained["ternary"])
    assert ternary.returncode != 0 and "Traceback" not in ternary.stderr
    assert len(ternary.stderr.strip().splitlines()) == 1 and "make lib" in ternary.stderr
