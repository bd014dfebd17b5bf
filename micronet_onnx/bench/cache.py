"""The random models `bench_random` times, written once under an output folder and reused while they
are in the format version the exporter writes now."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from micronet_onnx.bench.synthetic import make_random_ternary_model
from micronet_onnx.format import spec as tf
from micronet_onnx.format import versions


def random_model_path(out_dir: str | os.PathLike[str], preset: str, sparsity: float, seed: int) -> Path:
    """``<out_dir>/<preset>-sp<NN>-seed<S>.onnx`` (NN: the share of zeros in percent)."""
    return Path(out_dir) / f"{preset}-sp{round(sparsity * 100):02d}-seed{seed}.onnx"


def is_current_format(path: Path) -> bool:
    """Whether ``path`` is a ternary file in the format version the exporter writes now (a file written
    before a format change is rewritten, not benchmarked in the old layout)."""
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable: write it again
        return False
    try:
        return versions.micronet_version(model) == tf.OPSET_VERSION
    except tf.FormatError:  # a format version this package does not read: write it again
        return False


def cached_random_model(preset: str, sparsity: float, out_dir: str | os.PathLike[str], *, seed: int = 0,
                        reuse: bool = True) -> Path:
    """The path of `make_random_ternary_model`'s file for these arguments, written unless ``reuse``
    and it is already there in the current format version."""
    path = random_model_path(out_dir, preset, sparsity, seed)
    if not (reuse and path.is_file() and is_current_format(path)):
        make_random_ternary_model(preset, sparsity, path, seed=seed)
    return path
