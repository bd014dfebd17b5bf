"""What `optimize_model` did, as typed data: each fusion made, each one left undone and why, and the
parity check. Nothing here formats text for a terminal; `micronet_onnx/cli/optimize.py` renders it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

INPUT_AFFINE = "input_affine"  # a per-channel affine before the node -> in_scale / in_bias
OUTPUT_AFFINE = "output_affine"  # a per-channel affine after the node -> scale / bias
RELU = "relu"  # a Relu after the node -> activation
RESIDUAL = "residual"  # an Add of a tensor of the output's shape -> residual
KINDS = (INPUT_AFFINE, OUTPUT_AFFINE, RELU, RESIDUAL)


@dataclass(frozen=True)
class Fusion:
    """One standard node folded into a TernaryConv node."""

    node: str  # the TernaryConv node's name (its output name when it has none)
    kind: str  # one of KINDS
    op_type: str  # the fused node's op type (BatchNormalization, Mul, Add, Relu)
    op_name: str  # the fused node's name


@dataclass(frozen=True)
class Refusal:
    """A neighbour of a TernaryConv node that looks fusable but was left as it was, and why."""

    node: str
    kind: str  # the rule that was tried (one of KINDS)
    op_type: str
    op_name: str
    reason: str


@dataclass(frozen=True)
class Parity:
    """The result checked against the input in the reference evaluator on a fixed-seed probe."""

    probe_shapes: dict[str, list[int]]
    max_abs_diff: float
    tolerance: float
    output_scale: float  # largest |output| of the input model on the probe

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


@dataclass
class Reencoding:
    """A node whose assignment the pass stored in another encoding (same codes, fewer bytes)."""

    node: str
    encoding_in: str
    encoding_out: str
    bytes_in: int  # of the assignment (inputs 1 and 2)
    bytes_out: int


@dataclass
class OptimizeReport:
    format_version_in: int | None  # the micronet opset the input imports (None: no TernaryConv)
    format_version_out: int | None
    ternary_nodes: int
    nodes_before: int
    nodes_after: int
    fused: list[Fusion] = field(default_factory=list)
    left: list[Refusal] = field(default_factory=list)
    parity: Parity | None = None  # None when not checked (check=False, or nothing to check)
    reencoded: list[Reencoding] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether the output differs from the input (a fusion, a re-encoding, the format version raised)."""
        return bool(self.fused or self.reencoded) or self.format_version_in != self.format_version_out

    def counts(self) -> dict[str, int]:
        """Fusions per kind, every kind listed."""
        return {k: sum(f.kind == k for f in self.fused) for k in KINDS}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["counts"] = self.counts()
        d["changed"] = self.changed
        if self.parity is not None:
            d["parity"]["passed"] = self.parity.passed
        return d
