"""`mnx eval`: top-1 accuracy and images/s of an ONNX file in onnxruntime on the CPU.

Files with ``micronet`` ops run with our custom-op library registered; plain files run in stock
onnxruntime, so the same command measures the ternary model and its dense twin.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from micronet_onnx.data import iterate, load_dataset, make_batch
from micronet_onnx.runtime.session import create_session, needs_library

META_PREFIX = "micronet."  # the exporter's metadata namespace


class EvalInputError(ValueError):
    """A file that is not a readable ONNX model, or options it cannot be evaluated with."""


MAX_THREADS = 256  # far above any CPU this runs on; onnxruntime spins for minutes on absurd pool sizes


@dataclass(frozen=True)
class EvalResult:
    """Top-1 and throughput of one file on one split (`to_dict` is the `mnx eval --json` object)."""

    model: str
    dataset: str
    split: str
    images: int
    top1: float
    images_per_s: float
    batch_size: int
    threads: int | None
    custom_ops: bool  # the file ran through our library (it imports the micronet domain)
    pytorch_top1: float | None = None  # the exporter's record of PyTorch's top-1 on the same split

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["pytorch_top1"] is None:
            del d["pytorch_top1"]
        return d


def check_options(batch_size: int, threads: int | None, limit: int | None) -> None:
    """Bounds before any allocation: positive batch and limit, a thread count onnxruntime can serve."""
    if batch_size <= 0 or batch_size > 1 << 16:
        raise EvalInputError(f"batch size must be in [1, 65536], got {batch_size}")
    cap = max(MAX_THREADS, 4 * (os.cpu_count() or 1))
    if threads is not None and not 1 <= threads <= cap:
        raise EvalInputError(f"threads must be in [1, {cap}], got {threads}")
    if limit is not None and limit <= 0:
        raise EvalInputError(f"limit must be positive, got {limit}")


def model_metadata(path: str | Path) -> dict[str, str]:
    """The exporter's metadata props of ``path`` (without the prefix); refuses what is not a model file
    before anything large is read (a device such as /dev/zero would be read without end)."""
    path = Path(path)
    if not path.exists():
        raise EvalInputError(f"no such file: {path}")
    if not path.is_file():
        raise EvalInputError(f"{path} is not a readable ONNX model: not a regular file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise EvalInputError(f"{path} is not a readable ONNX model: {type(e).__name__}") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise EvalInputError(f"{path} is not a readable ONNX model: it holds no graph")
    return {p.key[len(META_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}


def evaluate_onnx(path: str | Path, dataset: str | None = None, data_dir: str | None = None, *,
                  split: str = "test", batch_size: int = 64, threads: int | None = None,
                  limit: int | None = None) -> EvalResult:
    """Top-1 accuracy and throughput of ``path`` on a data split (the run's own data by default)."""
    check_options(batch_size, threads, limit)
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
    pytorch = meta.get("pytorch_test_acc") if split == "test" and limit is None else None
    return EvalResult(model=str(path), dataset=dataset, split=split, images=seen, top1=correct / max(seen, 1),
                      images_per_s=seen / compute if compute > 0 else 0.0, batch_size=batch_size, threads=threads,
                      custom_ops=needs_library(path), pytorch_top1=None if pytorch is None else float(pytorch))
