"""What a score is counted with: the operand bit widths, the input size and the normalisation."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REFERENCE_MODEL", "REFERENCE_OPS", "REFERENCE_PARAMS", "ScoreOptions"]

# MicroNet Challenge normalisation for CIFAR-100: WideResNet-28-10 (ec2t-reference.md, "Counting").
REFERENCE_PARAMS = 36.5e6
REFERENCE_OPS = 10.49e9
REFERENCE_MODEL = "WideResNet-28-10 (MicroNet Challenge CIFAR reference)"


@dataclass(frozen=True)
class ScoreOptions:
    """Knobs of the operation count (and the input size). Bit widths are of the operands."""

    input_shape: tuple[int, ...] | dict[str, tuple[int, ...]] | None = None
    """Shape of the (first) graph input, e.g. ``(1, 3, 32, 32)``, or ``{input name: shape}``.
    Default: the graph's own, with a symbolic first (batch) dimension set to 1."""
    mult_bits: int = 16
    """Multiplications that do not involve a dense weight tensor: the two ternary centroid
    multiplications, BatchNorm / scale multiplications, ReLU and comparisons, pooling divisions."""
    add_bits: int = 32
    """Every addition (accumulators, bias, BatchNorm shift, residual adds, pooling sums)."""
    dense_bits: int | None = None
    """Multiplications by a dense weight (Conv, Gemm, MatMul). None: the bits of the weight's stored
    dtype (32 for float32, 16 for float16; 32 when the weight is not a constant)."""
    tree_adder: bool = False
    """Accumulate each ternary dot product in a tree adder at tree_base_bits, +1 bit per level
    (the improved reference scorer) instead of at add_bits."""
    tree_base_bits: int = 16
    merge_scale: bool = True
    """A TernaryConv's per-channel scale is merged into its two centroid multiplications (0 ops)."""
    reference_params: float = REFERENCE_PARAMS
    reference_ops: float = REFERENCE_OPS

    def validate(self) -> ScoreOptions:
        for name in ("mult_bits", "add_bits", "tree_base_bits"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.dense_bits is not None and int(self.dense_bits) <= 0:
            raise ValueError("dense_bits must be positive")
        if self.reference_params <= 0 or self.reference_ops <= 0:
            raise ValueError("reference_params and reference_ops must be positive")
        return self
