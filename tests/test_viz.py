"""`mnx plot` and the training history it draws: each plot is a real PNG with the expected panels
and bars, the history is kept in (and resumed from) the checkpoint, and `mnx train`'s output off a
terminal stays one plain line per epoch (with live bars only on a terminal)."""

from __future__ import annotations

import json
import os
import pty
import struct
import subprocess
import sys

import pytest
import torch

from micronet_onnx.training import loop as train_mod
from micronet_onnx.training.checkpoint import Checkpoint
from micronet_onnx.training.loop import TrainConfig, train

from .conftest import TINY
from .helpers.models import save_checkpoint, tiny_model

pytest.importorskip("matplotlib", reason="the `plots` extra (matplotlib) is part of the dev install")

from micronet_onnx.viz import PlotsUnavailable, png_bytes  # noqa: E402
from micronet_onnx.viz.curves import training_curves  # noqa: E402
from micronet_onnx.viz.layers import layer_figure, weight_layers  # noqa: E402
from micronet_onnx.viz.speed import speed_figure  # noqa: E402

TRAIN_ARGS = ["--model", "micronet", "--depth", str(TINY["depth"]), "--width", str(TINY["width"]),
              "--epochs", "1", "--batch-size", "64", "--lr", "0.05", "--ternary", "--ternary-epochs", "1",
              "--freeze-epochs", "1", "--seed", "1"]
EPOCHS = 3


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature and that IHDR comes first."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def mnx(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "micronet_onnx", *args], capture_output=True, text=True,
                          timeout=600, **kw)


def _rows(ternary: bool = True) -> list[dict]:
    rows = []
    for e, phase in enumerate(["fp", "fp", "ec2t", "ec2t", "frozen"] if ternary else ["fp", "fp"], start=1):
        row = {"phase": phase, "epoch": e, "train_loss": 2.0 / e, "train_acc": 0.1 * e, "val_acc": 0.1 * e,
               "val_loss": 2.1 / e, "images_per_s": 100.0}
        if phase != "fp":
            row.update(sparsity=0.1 * e, stage_sparsity=[0.1 * e, 0.05 * e, 0.12 * e], dead_channels=e)
        rows.append(row)
    return rows


# ---- the figures --------------------------------------------------------------------------------
def test_training_curves_have_three_panels_with_phases_shaded():
    fig = training_curves(_rows())
    assert len(fig.axes) == 3  # loss, accuracy, sparsity
    loss, _, sparsity = fig.axes
    assert len(loss.patches) == 3  # one shaded span per phase
    assert len(sparsity.lines) == 1 + 3  # overall + one per stage
    w, h = png_size(png_bytes(fig))
    assert w > 400 and h > 400


def test_training_curves_of_a_full_precision_run_have_no_sparsity_panel():
    assert len(training_curves(_rows(ternary=False)).axes) == 2


@pytest.fixture(scope="module")
def ternary_onnx(tmp_path_factory):
    from micronet_onnx.export import export_checkpoint

    d = tmp_path_factory.mktemp("viz")
    save_checkpoint(tiny_model(ternary=True), d / "t.pt", ternary=True)
    export_checkpoint(d / "t.pt", d / "t.onnx", ternary=True)
    return d / "t.onnx"


def test_layer_figure_has_a_bar_per_layer_in_each_panel(ternary_onnx):
    from micronet_onnx.scoring import score_model

    report = score_model(ternary_onnx)
    n = len(weight_layers(report))
    assert n >= report.num_ternary_layers > 0
    fig = layer_figure(report)
    sparsity, bits, channels = fig.axes
    assert len(sparsity.patches) == n
    assert len(bits.patches) == 3 * n  # stored, Appendix B, cheapest format
    assert len(channels.patches) == 2 * n  # live + dead
    assert "dead channels: " in channels.get_title() and not channels.get_title().startswith("dead channels: 0 ")
    png_size(png_bytes(fig))


def _bench(threads=(1, 2), batches=(1, 64), runtimes=("ternary", "dense")) -> dict:
    rows = [{"batch": b, "threads": t, "runtime": r, "ms_per_batch": 1.0, "images_per_s": 100.0 * b,
             "speedup_vs_dense": 1.0} for t in threads for b in batches for r in runtimes]
    return {"model": "m.onnx", "machine": {}, "repeats": 1, "kernel": "auto", "rows": rows,
            "max_abs_diff": 0.0, "max_abs_logit": 1.0}


def test_speed_figure_has_a_panel_per_thread_count_and_a_bar_per_runtime_and_batch():
    fig = speed_figure(_bench())
    assert len(fig.axes) == 2
    assert all(len(ax.patches) == 2 * 2 for ax in fig.axes)
    fig = speed_figure([_bench(threads=(1,)), dict(_bench(threads=(1,)), sparsity=0.5)])  # --random: a list
    assert len(fig.axes) == 2
    png_size(png_bytes(fig))


def test_speed_figure_refuses_what_is_not_a_bench_report():
    with pytest.raises(ValueError, match="mnx bench --json"):
        speed_figure({"model": "x"})


# ---- the command --------------------------------------------------------------------------------
def test_mnx_plot_writes_each_kind_and_refuses_to_overwrite(tmp_path, ternary_onnx):
    ckpt = tmp_path / "run.pt"
    save_checkpoint(tiny_model(ternary=True), ckpt, ternary=True)
    c = Checkpoint.load(ckpt)
    c.history = _rows()
    c.save(ckpt)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_bench()))
    for src, name in ((ckpt, "curves.png"), (ternary_onnx, "layers.png"), (bench, "speed.png")):
        r = mnx("plot", str(src), "-o", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        png_size((tmp_path / name).read_bytes())
    r = mnx("plot", str(bench), "-o", str(tmp_path / "speed.png"))
    assert r.returncode == 2 and "--force" in r.stderr
    r = mnx("plot", str(tmp_path / "x.txt"), "-o", str(tmp_path / "x.png"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_a_checkpoint_without_history_says_so(tmp_path):
    ckpt = tmp_path / "bare.pt"
    save_checkpoint(tiny_model(ternary=False), ckpt, ternary=False)
    r = mnx("plot", str(ckpt), "-o", str(tmp_path / "c.png"))
    assert r.returncode == 2 and "no per-epoch history" in r.stderr and not (tmp_path / "c.png").exists()


def test_missing_matplotlib_is_one_line_and_exit_2(tmp_path, ternary_onnx):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from micronet_onnx.cli import main; sys.argv = ['mnx'] + sys.argv[1:]; main()")
    for args in (["plot", str(ternary_onnx), "-o", str(tmp_path / "l.png")],
                 ["report", str(ternary_onnx), "-o", str(tmp_path / "r.html")]):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "install micronet-onnx[plots]" in lines[0], r.stderr
    assert issubclass(PlotsUnavailable, ValueError)


# ---- training: history and output ---------------------------------------------------------------
def test_history_is_kept_and_old_checkpoints_still_load(tmp_path):
    out = tmp_path / "h.pt"
    train(TrainConfig(**dict(TINY, epochs=1, batch_size=64, lr=0.05, seed=1, ternary=True, ternary_epochs=1,
                             freeze_epochs=1)), out, log=lambda s: None, progress=False)
    ckpt = Checkpoint.load(out)
    assert [h["phase"] for h in ckpt.history] == ["fp", "ec2t", "frozen"]
    fp, ec2t, frozen = ckpt.history
    assert set(fp["lr"]) == {"0"} and set(ec2t["lr"]) == {"weights", "centroids", "other"}
    assert "lambda" in ec2t and "lambda" not in frozen  # no entropy constraint once frozen
    assert ec2t["lambda"]["max"] >= ec2t["lambda"]["mean"] >= 0
    assert frozen["centroids"]["w_p_min"] > 0 > frozen["centroids"]["w_n_max"]
    for h, m in zip(ckpt.history, ckpt.metrics):
        assert {k: h[k] for k in m} == m  # the history row extends the metrics row
        assert len(h.get("stage_sparsity", [0, 0, 0])) == 3
    raw = torch.load(out, weights_only=True)
    del raw["history"]  # a file written before the history existed
    assert Checkpoint.from_dict(raw).history == []
    assert len(training_curves(ckpt.history).axes) == 3


def test_resume_keeps_the_history(tmp_path, monkeypatch):
    cfg = TrainConfig(**dict(TINY, epochs=2, batch_size=64, lr=0.05, seed=1, ternary=True, ternary_epochs=1,
                             freeze_epochs=1))
    out = tmp_path / "r.pt"
    real, calls = train_mod._train_epoch, {"n": 0}

    def stop_after_two(*args, **kwargs):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_train_epoch", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, log=lambda s: None, progress=False)
    assert len(Checkpoint.load(out).history) == 2
    monkeypatch.setattr(train_mod, "_train_epoch", real)
    train(cfg, out, resume=True, log=lambda s: None, progress=False)
    hist = Checkpoint.load(out).history
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4] and [h["phase"] for h in hist] == ["fp", "fp", "ec2t", "frozen"]


def test_train_off_a_terminal_prints_one_plain_line_per_epoch_and_json_parses(tmp_path):
    r = mnx("train", *TRAIN_ARGS, "-o", str(tmp_path / "a.pt"))
    assert r.returncode == 0, r.stderr
    epoch_lines = [ln for ln in r.stdout.splitlines() if ln.startswith("epoch ")]
    assert len(epoch_lines) == EPOCHS
    assert "\r" not in r.stdout + r.stderr and "\x1b" not in r.stdout + r.stderr  # no bars, no colours
    r = mnx("train", *TRAIN_ARGS, "--json", "-o", str(tmp_path / "b.pt"))
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)) >= {"fp", "ec2t", "frozen", "final"}
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("epoch ")]) == EPOCHS
    r = mnx("train", *TRAIN_ARGS, "--quiet", "-o", str(tmp_path / "c.pt"))
    assert r.returncode == 0 and not [ln for ln in r.stdout.splitlines() if ln.startswith("epoch ")]
    assert r.stdout.strip().endswith(f"checkpoint: {tmp_path / 'c.pt'}")


def test_train_on_a_terminal_draws_live_bars(tmp_path):
    """Under a pseudo-terminal (stdout and stderr both a tty) the phases get rich bars, and the
    epoch lines still print."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin/stdout/stderr are the terminal
        os.environ.update(COLUMNS="160", TERM="xterm")
        os.execv(sys.executable, [sys.executable, "-m", "micronet_onnx", "train", *TRAIN_ARGS,
                                  "-o", str(tmp_path / "t.pt")])
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    for phase in ("fp", "ec2t", "frozen"):
        assert f"[{phase}] epochs" in text
    assert "img/s" in text and "ETA" in text
    assert text.count("epoch   ") >= EPOCHS  # the per-epoch lines, above the bars
