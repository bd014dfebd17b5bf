"""`mnx report`: one self-contained HTML page, checked in a real headless browser (Debian's
chromium, installed by `make setup`): the page loads, every embedded image decodes, nothing is
fetched from outside the file and the console shows no error."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from micronet_onnx.training.checkpoint import Checkpoint

from .helpers.models import save_checkpoint, tiny_model

pytest.importorskip("matplotlib", reason="the `plots` extra (matplotlib) is part of the dev install")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs "
                                    "Debian's chromium package: apt-get install -y chromium)")

# Injected into a test copy of the page only (the real page has no script): after load, write the
# natural size of every image and every error seen into the DOM, which --dump-dom then prints.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener('load', () => {
  const out = document.createElement('pre'); out.id = 'probe';
  const sizes = Array.from(document.images).map(i => i.complete + ':' + i.naturalWidth + 'x' + i.naturalHeight);
  out.textContent = 'IMAGES ' + sizes.join(' ') + ' ERRORS ' + window.__errors.length + ' END';
  document.body.appendChild(out);
});
</script>"""


def mnx(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "micronet_onnx", *args], capture_output=True, text=True,
                          timeout=600)


def _history() -> list[dict]:
    rows = []
    for e, phase in enumerate(["fp", "fp", "ec2t", "frozen"], start=1):
        row = {"phase": phase, "epoch": e, "train_loss": 2.0 / e, "train_acc": 0.2 * e, "val_acc": 0.2 * e,
               "val_loss": 2.0 / e, "images_per_s": 100.0}
        if phase != "fp":
            row.update(sparsity=0.3 * e / 4, stage_sparsity=[0.2, 0.3, 0.4], dead_channels=1)
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from micronet_onnx.export import export_checkpoint

    d = tmp_path_factory.mktemp("report")
    ckpt = d / "model.pt"
    save_checkpoint(tiny_model(ternary=True), ckpt, ternary=True)
    c = Checkpoint.load(ckpt)
    c.history = _history()
    c.results = {"final": {"phase": "frozen", "val_acc": 0.5, "test_acc": 0.5, "sparsity": 0.9}}
    c.save(ckpt)
    export_checkpoint(ckpt, d / "model.onnx", ternary=True)
    return ckpt, d / "model.onnx"


@pytest.fixture(scope="module")
def page(exported, tmp_path_factory):
    ckpt, onnx_path = exported
    out = tmp_path_factory.mktemp("page") / "report.html"
    r = mnx("report", str(onnx_path), "--checkpoint", str(ckpt), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"report: {out}"
    return out


def test_the_page_is_self_contained_and_complete(page):
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "<script" not in text and not re.search(r"(src|href)=['\"](?!data:)", text)  # nothing fetched
    assert text.count("data:image/png;base64,") == 2  # training curves + per-layer plot
    for part in ("<h2>Score</h2>", "<h2>Export</h2>", "<h2>Layers</h2>", "parity (reference", "has the same bytes",
                 "export_kind", "ternary", "TernaryConv (micronet)"):
        assert part in text, part


def test_without_checkpoint_no_curves_and_a_note_on_parity(exported, tmp_path):
    _, onnx_path = exported
    out = tmp_path / "r.html"
    assert mnx("report", str(onnx_path), "-o", str(out)).returncode == 0
    text = out.read_text()
    assert text.count("data:image/png;base64,") == 1 and "pass --checkpoint" in text
    r = mnx("report", str(onnx_path), "-o", str(out))
    assert r.returncode == 2 and "--force" in r.stderr and r.stderr.count("\n") == 1
    assert mnx("report", str(onnx_path), "-o", str(out), "--force").returncode == 0
    r = mnx("report", str(onnx_path), "-o", str(onnx_path), "--force")
    assert r.returncode == 2 and "also an input" in r.stderr


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    assert CHROMIUM is not None
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=180)


@needs_chromium
def test_the_page_renders_in_headless_chromium(page, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    r = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r"IMAGES (.*?) ERRORS (\d+) END", r.stdout)
    assert m, r.stdout[-2000:]
    sizes = m.group(1).split()
    assert len(sizes) == 2, sizes
    for s in sizes:
        complete, w, h = re.fullmatch(r"(\w+):(\d+)x(\d+)", s).groups()
        assert complete == "true" and int(w) > 100 and int(h) > 100, s
    assert m.group(2) == "0"
    console_errors = [ln for ln in r.stderr.splitlines() if "CONSOLE" in ln and "ERROR" in ln.upper()]
    assert not console_errors, console_errors
    shot = tmp_path / "shot.png"
    r = _chromium(tmp_path, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri())
    assert r.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", r.stderr[-2000:]
