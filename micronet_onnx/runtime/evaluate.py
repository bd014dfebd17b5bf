"""`mnx eval`: top-1 accuracy and images/s of an ONNX file in onnxruntime on the CPU.

Files with ``micronet`` ops run with our custom-op library registered; plain files run in stock
onnxruntime, so the same command measures the ternary model and its dense twin.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx

from micronet_onnx.data import iterate, load_dataset, make_batch
from micronet_onnx.runtime.session import create_session, needs_library

META_PREFIX = "micronet."  # the exporter's metadata namespace


class EvalInputError(ValueError):
    """A file that is not a readable ONNX model."""


def model_metadata(path: str | Path) -> dict[str, str]:
    """The exporter's metadata props of ``path`` (without the prefix)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise EvalInputError(f"no such file: {path}") from None
    except Exception as e:
        raise EvalInputError(f"{path} is not a readable ONNX model: {type(e).__name__}") from None
    return {p.key[len(META_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}


def evaluate_onnx(path: str | Path, dataset: str | None = None, data_dir: str | None = None, *,
                  split: str = "test", batch_size: int = 64, threads: int | None = None,
                  limit: int | None = None) -> dict:
    """Top-1 accuracy and throughput of ``path`` on a data split (the run's own data by default)."""
    meta = model_metadata(path)
    dataset = dataset or meta.get("dataset") or "digits"
    ds = load_dataset(dataset, data_dir)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    part = getattr(ds, split)
    session = create_session(path, threads=threads)
    input_name = session.get_inputs()[0].name
    n_out = session.get_outputs()[0].shape[-1]
    if isinstance(n_out, int) and n_out != ds.num_classes:
        raise ValueError(f"{path} has {n_out} outputs but {dataset} has {ds.num_classes} classes")
    correct = seen = 0
    compute = 0.0
    for idx in iterate(part, batch_size):
        if limit is not None and seen >= limit:
            break
        x, y = make_batch(part, idx, ds, None, None)
        feed = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        t0 = time.perf_counter()
        logits = session.run(None, {input_name: feed})[0]
        compute += time.perf_counter() - t0
        correct += int((logits.argmax(1) == y.numpy()).sum())
        seen += len(y)
    result = {
        "model": str(path),
        "dataset": dataset,
        "split": split,
        "images": seen,
        "top1": correct / max(seen, 1),
        "images_per_s": seen / compute if compute > 0 else 0.0,
        "batch_size": batch_size,
        "threads": threads,
        "custom_ops": needs_library(path),
    }
    if "pytorch_test_acc" in meta and split == "test" and limit is None:
        result["pytorch_top1"] = float(meta["pytorch_test_acc"])
    return result


def render(result: dict) -> str:
    line = (f"{result['model']}: top-1 {result['top1'] * 100:.2f}% on {result['images']} {result['dataset']} "
            f"{result['split']} images, {result['images_per_s']:.1f} images/s (batch {result['batch_size']}, "
            f"{'our library' if result['custom_ops'] else 'stock onnxruntime'})")
    if "pytorch_top1" in result:
        line += f"; PyTorch: {result['pytorch_top1'] * 100:.2f}%"
    return line
