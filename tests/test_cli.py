"""The `mnx` command line: help, version, and one-line errors with exit status 2."""

import subprocess
import sys

import pytest

from micronet_onnx import __version__


def mnx(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "micronet_onnx", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_and_version():
    r = mnx("--help")
    assert r.returncode == 0
    for cmd in ("train", "export", "score", "eval", "bench-ec2t"):
        assert cmd in r.stdout
    r = mnx("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"mnx {__version__}"


@pytest.mark.parametrize("args,message", [
    (["train", "-o", "{tmp}/x.pt", "--dataset", "mnist"], "unknown dataset"),
    (["train", "-o", "{tmp}/x.pt", "--dataset", "cifar10", "--data-dir", "{tmp}"], "no cifar-10-batches-py"),
    (["train", "-o", "{tmp}/x.pt", "--model", "resnet"], "unknown model"),
    (["train", "-o", "{tmp}/x.pt", "--batch-size", "0"], "batch size"),
    (["train", "-o", "{tmp}/x.pt", "--device", "tpu"], "device"),
    (["train", "-o", "{tmp}/x.pt", "--lambda-gain", "-1"], "lambda gain"),
    (["train", "-o", "{tmp}/x.pt", "--init", "{tmp}/none.pt", "--ternary"], "no checkpoint"),
    (["train", "-o", "{tmp}/none.pt", "--resume"], "no checkpoint"),
    (["train", "-o", "{tmp}/exists.pt"], "exists"),
    (["score", "{tmp}/none.onnx"], "no such file"),
    (["score", "{tmp}/exists.pt"], "not"),
    (["eval", "{tmp}/none.onnx"], "no such file"),
    (["eval", "{tmp}/exists.pt", "--threads", "100000"], "threads must be in"),
    (["eval", "{tmp}/exists.pt", "--limit", "-1"], "limit must be positive"),
    (["eval", "{tmp}/exists.pt"], "not a readable ONNX model"),
    (["eval", "/dev/null"], "not a readable ONNX model"),
    (["export", "{tmp}/exists.pt", "-o", "{tmp}/o.onnx"], "cannot read checkpoint"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, args, message):
    (tmp_path / "exists.pt").write_bytes(b"junk")
    r = mnx(*[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnx: error:") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert (tmp_path / "exists.pt").read_bytes() == b"junk"  # nothing the user had is touched


def test_bad_option_value_is_a_usage_error():
    r = mnx("train", "-o", "x.pt", "--epochs", "many")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def _real_checkpoint(path):
    from micronet_onnx.training.ec2t import EC2TConfig, ternarize_model
    from tests.helpers.models import save_checkpoint, tiny_model

    model = tiny_model(ternary=False)
    ternarize_model(model, EC2TConfig())
    save_checkpoint(model.eval(), path, ternary=True)


@pytest.mark.parametrize("args,message", [
    (["export", "--ternary", "{ck}", "-o", "{ck}"], "also an input"),
    (["export", "--ternary", "{ck}", "-o", "{ck}", "--force"], "also an input"),
    (["export", "--ternary", "{ck}", "-o", "{other}"], "exists; pass --force"),
    (["export", "--ternary", "{ck}", "-o", "{tmp}"], "is a directory"),
    (["train", "--ternary", "--init", "{ck}", "-o", "{ck}", "--force", "--epochs", "1"], "also an input"),
])
def test_outputs_never_replace_inputs_or_existing_files(tmp_path, args, message):
    ck, other = tmp_path / "run.pt", tmp_path / "other.onnx"
    _real_checkpoint(ck)
    other.write_bytes(b"the user's file")
    before = ck.read_bytes()
    r = mnx(*[a.format(ck=ck, other=other, tmp=tmp_path) for a in args])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert ck.read_bytes() == before and other.read_bytes() == b"the user's file"
