"""The score report as typed records; ``to_dict()`` gives the JSON form (docs/scoring.md, "Report").

The JSON keys, their order and their values are a public format (``mnx score --json``), so every
``to_dict`` writes its keys explicitly, in the order the report has always had, and the whole report
goes through `_plain` (numpy scalars to Python, non-finite floats to null) once, at the end.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from micronet_onnx.scoring.options import ScoreOptions

__all__ = [
    "Alternative",
    "LayerRecord",
    "Reference",
    "ScoreReport",
    "ScoreTerms",
    "TernaryLayerRecord",
    "UnusedConstantsRecord",
    "report_to_json",
]


@dataclass(frozen=True)
class Alternative:
    """The cheapest reference storage format of a weight: its name, its cost (32-bit units) and the
    cost of every format considered."""

    name: str
    params: float
    all: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "all": dict(self.all)}


@dataclass(kw_only=True)
class LayerRecord:
    """One node of the graph (weight-path and Constant nodes are folded into their consumers).

    ``in_channels`` / ``out_channels`` are ``[effective, full]``; ``params_*`` in 32-bit-parameter
    units, ``ops`` in 32-bit-operation units, ``mults`` / ``adds`` raw counts. ``nnz`` is set for a
    layer whose weight is a numeric constant.
    """

    name: str
    op_type: str
    domain: str = ""
    output_shape: list[int | None] | None = None
    in_channels: list[int] | None = None
    out_channels: list[int] | None = None
    kernel: list[int] | None = None
    sparsity: float | None = None
    params_paper: float = 0.0
    params_paper_detail: dict[str, float] = field(default_factory=dict)
    params_stored: float = 0.0
    dense_fp32_params: float = 0.0
    weight_format_params: float | None = None
    best_alternative: Alternative | None = None
    unknown: bool = False
    shape_unknown: bool = False
    initializers: list[str] = field(default_factory=list)
    nnz: int | None = None
    mults: float = 0.0
    adds: float = 0.0
    ops: float = 0.0
    ops_detail: dict[str, float] = field(default_factory=dict)

    def _head(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "domain": self.domain,
            "output_shape": self.output_shape,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel": self.kernel,
            "sparsity": self.sparsity,
            "params_paper": self.params_paper,
            "params_paper_detail": dict(self.params_paper_detail),
            "params_stored": self.params_stored,
            "dense_fp32_params": self.dense_fp32_params,
            "weight_format_params": self.weight_format_params,
            "best_alternative": None if self.best_alternative is None else self.best_alternative.to_dict(),
            "unknown": self.unknown,
            "shape_unknown": self.shape_unknown,
            "initializers": list(self.initializers),
        }

    def _extra(self) -> dict[str, Any]:
        return {} if self.nnz is None else {"nnz": self.nnz}

    def _tail(self) -> dict[str, Any]:
        return {"mults": self.mults, "adds": self.adds, "ops": self.ops, "ops_detail": dict(self.ops_detail)}

    def to_dict(self) -> dict[str, Any]:
        return {**self._head(), **self._extra(), **self._tail()}


@dataclass(kw_only=True)
class TernaryLayerRecord(LayerRecord):
    """A TernaryConv: ``stored_channels`` is ``[N_stored, M_stored]``; ``weights_effective`` the
    weights over the effective channels (``N K^2 M``, summed over groups), ``weights_stored`` all."""

    stored_channels: list[int]
    group: int
    weights_effective: int
    weights_stored: int
    sparsity_stored: float
    encoding: str = "masks"  # how the file stores the assignment (masks, rows, entropy; int2 portable)
    assignment_params: float | None = None  # the file's assignment + centroid bytes / 4 (TernaryConv nodes)
    entropy_bound: float = 0.0  # n * H(p) of the stored codes + 32 centroid bits, / 32

    def _extra(self) -> dict[str, Any]:
        return {
            "stored_channels": list(self.stored_channels),
            "group": self.group,
            "nnz": self.nnz,
            "weights_effective": self.weights_effective,
            "weights_stored": self.weights_stored,
            "sparsity_stored": self.sparsity_stored,
            "encoding": self.encoding,
            "assignment_params": self.assignment_params,
            "entropy_bound": self.entropy_bound,
        }


@dataclass(kw_only=True)
class UnusedConstantsRecord(LayerRecord):
    """The pseudo-layer ``(unused constants)``: stored tensors no node reads (``params_stored`` only)."""

    name: str = "(unused constants)"
    op_type: str = "-"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "params_paper": self.params_paper,
            "params_stored": self.params_stored,
            "dense_fp32_params": self.dense_fp32_params,
            "initializers": list(self.initializers),
            "sparsity": self.sparsity,
            **self._tail(),
        }


@dataclass(frozen=True)
class ScoreTerms:
    """The two summands of the score: parameters and operations over their references."""

    params_paper: float
    params_stored: float
    ops: float


@dataclass(frozen=True)
class Reference:
    """The model the score is normalised by."""

    model: str
    params: float
    ops: float


@dataclass(kw_only=True)
class ScoreReport:
    """What `score_model` returns: totals, the score, the options used and the per-layer records."""

    model: str
    file_bytes: int
    initializer_bytes: int
    constant_bytes: int
    params_paper: float
    params_stored: float
    params_best_format: float
    entropy_bound: float  # sum over the ternary layers of their entropy_bound
    assignment_params: float  # sum over the TernaryConv layers of their assignment_params
    dense_fp32_params: float
    compression_ratio: float | None
    compression_ratio_paper: float | None
    ops: float
    mults: float
    adds: float
    ops_by_category: dict[str, float]
    score: float
    score_stored: float
    score_terms: ScoreTerms
    reference: Reference
    options: ScoreOptions
    input_shapes: dict[str, list[int]]
    num_ternary_layers: int
    unknown_ops: list[str]
    warnings: list[str]
    layers: list[LayerRecord]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: plain Python values, every key of docs/scoring.md, in the report's order."""
        return _plain(
            {
                "model": self.model,
                "file_bytes": self.file_bytes,
                "initializer_bytes": self.initializer_bytes,
                "constant_bytes": self.constant_bytes,
                "params_paper": self.params_paper,
                "params_stored": self.params_stored,
                "params_best_format": self.params_best_format,
                "entropy_bound": self.entropy_bound,
                "assignment_params": self.assignment_params,
                "dense_fp32_params": self.dense_fp32_params,
                "compression_ratio": self.compression_ratio,
                "compression_ratio_paper": self.compression_ratio_paper,
                "ops": self.ops,
                "mults": self.mults,
                "adds": self.adds,
                "ops_by_category": dict(self.ops_by_category),
                "score": self.score,
                "score_stored": self.score_stored,
                "score_terms": asdict(self.score_terms),
                "reference": asdict(self.reference),
                "options": asdict(self.options),
                "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
                "num_ternary_layers": self.num_ternary_layers,
                "unknown_ops": list(self.unknown_ops),
                "warnings": list(self.warnings),
                "layers": [layer.to_dict() for layer in self.layers],
            }
        )

    def layer(self, name: str) -> LayerRecord:
        """The record of the layer called ``name`` (KeyError if none)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def _plain(v: Any) -> Any:
    """Convert to JSON-serializable plain Python types."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def report_to_json(report: ScoreReport, indent: int | None = 2) -> str:
    """The JSON form of a report (``json.dumps`` of `ScoreReport.to_dict`)."""
    return json.dumps(report.to_dict(), indent=indent, sort_keys=False)
