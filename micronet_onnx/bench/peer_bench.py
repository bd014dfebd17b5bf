"""`mnx bench --peers`: our library against what a user would pick instead, the same function in one
process, interleaved rounds (docs/runtime.md, "Peers").

For one model: `peer_data` picks the images, `peer_files` builds every contestant's file (untimed),
then every available contestant of `peers.contestants` is run once over the test images (top-1 or
agreement, logit difference to the float32 model) and timed, per thread count and batch size, by
`harness.interleaved_times` with a `PEER_SETTLE_SECONDS` pause before each measurement.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from micronet_onnx.bench.harness import KERNEL_ENV, interleaved_times
from micronet_onnx.bench.machine import machine_info
from micronet_onnx.bench.peer_data import CALIBRATION_IMAGES, EVAL_IMAGES, PeerData, load_peer_data
from micronet_onnx.bench.peer_files import PeerFiles, build_peer_files
from micronet_onnx.bench.peers import OURS, REFERENCE, Contestant, PeerUnavailable, contestants

# Pause before each timed measurement. Runtimes' pool threads keep spinning after their last task, and
# OpenVINO's spin longer than onnxruntime's (the 50 ms of `harness.SETTLE_SECONDS` is not enough
# after an OpenVINO run: issue 12 measured every contestant slower and the ranking blurred without it).
PEER_SETTLE_SECONDS = 0.5
EVAL_BATCH = 64


def _input_shape(model: onnx.ModelProto) -> tuple[int, int, int]:
    from micronet_onnx.bench.whole_model import _model_input

    return tuple(_model_input(model)[1][1:])


def _skips(registry: list[Contestant], files: PeerFiles) -> dict[str, str]:
    """Contestant name -> why it cannot run (its runtime is missing, or its file could not be built)."""
    out = {}
    for c in registry:
        reason = c.available() or files.notes.get(c.file)
        if reason is None and c.file not in files.paths:
            reason = f"no {c.file} file"
        if reason is not None:
            out[c.name] = reason
    return out


def _logits(c: Contestant, path: Path, threads: int, data: PeerData) -> tuple[np.ndarray, dict]:
    runner = c.prepare(path, threads, None)
    parts = [np.array(runner.run(np.ascontiguousarray(data.images[i:i + EVAL_BATCH])), dtype=np.float32, copy=True)
             for i in range(0, len(data.images), EVAL_BATCH)]
    return np.concatenate(parts), runner.properties


def _accuracy(active: list[Contestant], files: PeerFiles, data: PeerData, threads: int,
              skipped: dict[str, str]) -> tuple[dict[str, dict], float]:
    """One pass of every contestant over the test images: top-1 (trained models), argmax agreement with
    and max |logit difference| to the float32 model, file size and the runtime's properties. A contestant
    whose runtime cannot read its file moves to ``skipped``. Returns the records and the largest |logit|
    of the float32 model (the scale of the differences)."""
    logits: dict[str, np.ndarray] = {}
    props: dict[str, dict] = {}
    for c in active:
        try:
            logits[c.name], props[c.name] = _logits(c, files.paths[c.file], threads, data)
        except PeerUnavailable as e:
            skipped[c.name] = str(e)
    ref = logits[REFERENCE]
    sizes = files.sizes()
    records = {}
    for c in active:
        if c.name not in logits:
            continue
        y = logits[c.name]
        records[c.name] = {
            "name": c.name, "label": c.label, "runtime": c.runtime(), "precision": c.precision, "file": c.file,
            "file_bytes": sizes[c.file],
            "top1": None if data.labels is None else float(np.mean(y.argmax(1) == data.labels)),
            "agreement_with_fp32": float(np.mean(y.argmax(1) == ref.argmax(1))),
            "max_abs_logit_diff": float(np.max(np.abs(y - ref))) if y.size else 0.0,
            "properties": props[c.name],
        }
    return records, float(np.max(np.abs(ref))) if ref.size else 0.0


def _timed_rows(active: list[Contestant], files: PeerFiles, data: PeerData, *, batches: Sequence[int],
                threads: Sequence[int], repeats: int, warmup: int, min_seconds: float, settle: float) -> list[dict]:
    """Interleaved rounds per (threads, batch): medians, images/s and the ratio to ours' images/s."""
    rows: list[dict] = []
    for t in threads:
        for b in batches:
            x = data.batch(b)
            runners = {c.name: c.prepare(files.paths[c.file], t, b).run for c in active}
            fns: dict[str, Callable[[], object]] = {name: (lambda r=r, x=x: r(x)) for name, r in runners.items()}
            times = interleaved_times(fns, repeats, warmup=warmup, min_seconds=min_seconds, settle=settle)
            del runners, fns
            ours = statistics.median(times[OURS])
            for name, samples in times.items():
                med = statistics.median(samples)
                rows.append({"batch": b, "threads": t, "contestant": name, "ms_per_batch": med * 1e3,
                             "images_per_s": b / med, "relative_to_ours": ours / med,
                             "samples": [round(s, 9) for s in samples]})
    return rows


def bench_files(ternary: str | os.PathLike[str], data: PeerData, *, torch_model=None, batches: Sequence[int] = (1, 64),
                threads: Sequence[int] = (1, 2), repeats: int = 7, kernel: str | None = None, warmup: int = 1,
                min_seconds: float = 0.1, settle: float = PEER_SETTLE_SECONDS) -> dict:
    """Every contestant on the TernaryConv file ``ternary`` (see `bench_peers` for the report)."""
    if repeats < 1 or any(b < 1 for b in batches) or any(t < 1 for t in threads):
        raise ValueError("repeats, batch sizes and thread counts must be positive")
    machine = machine_info()
    registry = contestants(kernel)
    with tempfile.TemporaryDirectory(prefix="mnx-peers-") as scratch:
        files = build_peer_files(ternary, scratch, data, torch_model=torch_model)
        skipped = _skips(registry, files)
        active = [c for c in registry if c.name not in skipped]
        records, max_logit = _accuracy(active, files, data, max(threads), skipped)
        active = [c for c in active if c.name not in skipped]
        rows = _timed_rows(active, files, data, batches=batches, threads=threads, repeats=repeats, warmup=warmup,
                           min_seconds=min_seconds, settle=settle)
    labels = {c.name: c.label for c in registry}
    return {
        "kind": "peers", "model": os.fspath(ternary), "machine": machine, "repeats": repeats,
        "settle_seconds": settle, "kernel": kernel or os.environ.get(KERNEL_ENV, "auto"), "reference": REFERENCE,
        "data": data.to_dict(), "qdq": files.qdq.to_dict() if files.qdq else None,
        "optimize_fusions": files.optimize_fusions, "max_abs_logit": max_logit,
        "contestants": [records[c.name] for c in registry if c.name in records],
        "skipped": [{"name": n, "label": labels[n], "reason": r} for n, r in skipped.items()],
        "rows": rows,
    }


def bench_peers(model: str | os.PathLike[str], *, checkpoint: str | os.PathLike[str] | None = None,
                data_dir: str | os.PathLike[str] | None = None, eval_images: int = EVAL_IMAGES,
                calibration_images: int = CALIBRATION_IMAGES, **kwargs) -> dict:
    """`mnx bench MODEL --peers`: ``model`` a TernaryConv file (``checkpoint``: the checkpoint it was
    exported from, for the portable file) or a ternary checkpoint (exported here first). The data set is
    the checkpoint's or the file's (digits when it records none; CIFAR needs ``data_dir``).

    Returns ``{"kind": "peers", "model", "machine", "repeats", "settle_seconds", "kernel", "reference",
    "data", "qdq", "optimize_fusions", "max_abs_logit", "contestants", "skipped", "rows"}``: one record
    per contestant that ran (``top1`` or None, ``agreement_with_fp32``, ``max_abs_logit_diff``,
    ``file_bytes``, ``runtime``, ``precision``, ``properties``), one ``{"name", "label", "reason"}`` per
    contestant skipped, one row per (batch, threads, contestant) with ``ms_per_batch``, ``images_per_s``
    (medians), ``relative_to_ours`` (its images/s over ours) and every round's seconds.
    Keywords: those of `bench_files`."""
    from micronet_onnx.runtime.evaluate import model_metadata
    from micronet_onnx.training.checkpoint import Checkpoint

    model = Path(model)
    if zipfile.is_zipfile(model):  # torch.save's format: a checkpoint given as MODEL
        checkpoint, model = model, None
    ckpt = Checkpoint.load(checkpoint) if checkpoint is not None else None
    with tempfile.TemporaryDirectory(prefix="mnx-peers-src-") as scratch:
        if model is None:
            from micronet_onnx.export import export_checkpoint

            model = Path(scratch) / f"{Path(checkpoint).stem}.onnx"
            export_checkpoint(checkpoint, model, ternary=True)
        meta = model_metadata(model)
        best = meta.get("source_weights", "best") != "final"
        torch_model = ckpt.build_model(best=best) if ckpt is not None else None
        dataset = (ckpt.dataset if ckpt is not None else None) or meta.get("dataset") or None
        data = load_peer_data(_input_shape(onnx.load(os.fspath(model))), trained_dataset=dataset, data_dir=data_dir,
                              eval_images=eval_images, calibration_images=calibration_images)
        report = bench_files(model, data, torch_model=torch_model, **kwargs)
    if checkpoint is not None:
        report["checkpoint"] = os.fspath(checkpoint)
    return report


def bench_peers_random(preset: str = "micronet-c100", sparsities: Sequence[float] = (0.9,), *, seed: int = 0,
                       data_dir: str | os.PathLike[str] | None = None, eval_images: int = EVAL_IMAGES,
                       calibration_images: int = CALIBRATION_IMAGES, **kwargs) -> list[dict]:
    """`mnx bench --random PRESET --peers`: per sparsity, `random_ternary_micronet` exported as a TernaryConv
    file (in a scratch folder) and benched with `bench_files`; the data set is the preset's where
    ``data_dir`` holds it, else the digits (`peer_data`). Each report adds ``"sparsity"`` and ``"preset"``.
    Other keywords: those of `bench_files` (and ``depth``/``width`` for the custom presets)."""
    from micronet_onnx.bench.synthetic import random_ternary_micronet
    from micronet_onnx.export import export_model

    shape_kw = {k: kwargs.pop(k) for k in ("depth", "width") if k in kwargs}
    reports = []
    for sparsity in sparsities:
        torch_model = random_ternary_micronet(preset, sparsity, seed=seed, **shape_kw)
        with tempfile.TemporaryDirectory(prefix="mnx-peers-src-") as scratch:
            path = Path(scratch) / f"{preset}-sp{round(sparsity * 100):02d}-seed{seed}.onnx"
            export_model(torch_model, path, ternary=True, check=False)
            data = load_peer_data(_input_shape(onnx.load(os.fspath(path))), preset=preset, data_dir=data_dir,
                                  eval_images=eval_images, calibration_images=calibration_images)
            report = bench_files(path, data, torch_model=torch_model, **kwargs)
        report.update(model=f"random {preset}, {sparsity * 100:.0f}% zeros, seed {seed}", sparsity=sparsity,
                      preset=preset)
        reports.append(report)
    return reports
