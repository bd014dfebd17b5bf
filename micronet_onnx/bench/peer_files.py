"""The files `mnx bench --peers` runs, all computing one function, built (untimed) in a scratch folder.

- ``ternary``: the TernaryConv file given (or exported from the checkpoint / random model);
- ``optimized``: that file after `optimize_model` (``mnx optimize``), when it makes any fusion;
- ``dense``: its dense twin (`twin.dense_twin`), the float32 model every logit is compared with;
- ``qdq``: the twin in onnxruntime static int8 (`quantize.build_qdq`, calibrated on training images);
- ``portable``: the portable export (`export_model(..., portable=True)`: INT2 codes, standard ops),
  which needs the PyTorch model (a checkpoint, or the random model itself).

A file that cannot be built has a one-line note instead of a path; its contestants are skipped with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from micronet_onnx.bench.peer_data import PeerData

if TYPE_CHECKING:  # onnxruntime.quantization takes a second to import: only when the QDQ file is built
    from micronet_onnx.bench.quantize import QdqInfo


@dataclass
class PeerFiles:
    """Paths of the files that exist, notes (why not) for the others, and what the builders reported."""

    paths: dict[str, Path] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    qdq: QdqInfo | None = None
    optimize_fusions: int = 0

    def sizes(self) -> dict[str, int]:
        return {k: p.stat().st_size for k, p in self.paths.items()}


def _optimized(model: onnx.ModelProto, folder: Path, files: PeerFiles) -> None:
    from micronet_onnx.optimize import optimize_model, would_optimize

    files.optimize_fusions = would_optimize(model)
    if files.optimize_fusions == 0:
        files.notes["optimized"] = "`mnx optimize` makes no fusion in this file: it would be the file 'ours' runs"
        return
    optimized, _ = optimize_model(model)  # checked against the input in the reference op
    path = folder / "optimized.onnx"
    onnx.save(optimized, os.fspath(path))
    files.paths["optimized"] = path


def _portable(torch_model, folder: Path, input_hw: tuple[int, int], files: PeerFiles) -> None:
    from micronet_onnx.export import ExportError, ParityError, export_model

    if torch_model is None:
        files.notes["portable"] = ("the portable file is exported from the PyTorch model: give --checkpoint "
                                   "(the checkpoint of this file)")
        return
    path = folder / "portable.onnx"
    try:
        export_model(torch_model, path, ternary=False, portable=True, input_size=input_hw)
    except (ExportError, ParityError) as e:
        files.notes["portable"] = f"portable export failed: {str(e).splitlines()[0]}"
        return
    files.paths["portable"] = path


def build_peer_files(ternary: str | os.PathLike[str], folder: str | os.PathLike[str], data: PeerData, *,
                     torch_model=None) -> PeerFiles:
    """Every file of the module docstring for the TernaryConv file ``ternary``, written under ``folder``
    (the caller's scratch folder). ``torch_model``: the PyTorch model ``ternary`` was exported from
    (None: no portable file)."""
    from micronet_onnx.bench.quantize import build_qdq
    from micronet_onnx.bench.twin import dense_twin

    folder = Path(folder)
    ternary = Path(ternary)
    model = onnx.load(os.fspath(ternary))
    files = PeerFiles(paths={"ternary": ternary})
    _optimized(model, folder, files)
    dense = dense_twin(model)
    files.paths["dense"] = folder / "dense.onnx"
    onnx.save(dense, os.fspath(files.paths["dense"]))
    files.paths["qdq"] = folder / "qdq.onnx"
    files.qdq = build_qdq(dense, files.paths["qdq"], data.calibration)
    _portable(torch_model, folder, tuple(data.images.shape[2:]), files)
    return files
