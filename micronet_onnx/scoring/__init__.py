"""Storage, operations and MicroNet score of an ONNX file, straight from the graph (docs/scoring.md).

Modules: `graph` (loading, header checks, graph index, constant tracing), `shapes` (shape inference),
`ternary` (TernaryConv nodes through the format package), `storage` (Appendix B, stored bits,
alternative formats), `counters` (the op-type -> counter registry), `report` (typed records and the
JSON form), `options` (`ScoreOptions`), `score` (`score_model`: the passes in order). Rendering the
report as text is the CLI's (`micronet_onnx.cli.score_view`).
"""

from micronet_onnx.scoring.counters import tree_adder_bits
from micronet_onnx.scoring.graph import ScoreInputError
from micronet_onnx.scoring.options import REFERENCE_MODEL, REFERENCE_OPS, REFERENCE_PARAMS, ScoreOptions
from micronet_onnx.scoring.report import (
    Alternative,
    LayerRecord,
    Reference,
    ScoreReport,
    ScoreTerms,
    TernaryLayerRecord,
    UnusedConstantsRecord,
    report_to_json,
)
from micronet_onnx.scoring.score import score_model
from micronet_onnx.scoring.storage import alternative_formats, best_alternative

__all__ = [
    "REFERENCE_MODEL",
    "REFERENCE_OPS",
    "REFERENCE_PARAMS",
    "Alternative",
    "LayerRecord",
    "Reference",
    "ScoreInputError",
    "ScoreOptions",
    "ScoreReport",
    "ScoreTerms",
    "TernaryLayerRecord",
    "UnusedConstantsRecord",
    "alternative_formats",
    "best_alternative",
    "report_to_json",
    "score_model",
    "tree_adder_bits",
]
