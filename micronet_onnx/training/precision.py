"""Mixed precision and the speed options of a run: ``--amp``, ``--channels-last``, ``--compile``.

* ``--amp bf16|fp16`` runs the forward pass and the loss under ``torch.autocast``; the weights,
  the optimizer state and EC2T's per-step update (centroid floor, lambda, re-assignment, which run
  outside autocast on the float32 background weights) stay float32. fp16 needs loss scaling: a
  ``GradScaler`` (a step with an overflowing gradient is skipped and the scale lowered; EC2T's update
  after a skipped step re-computes the same assignment, since it reads only the weights).
* ``--channels-last`` stores the model's 4-d tensors and each batch as NHWC (faster convolutions on
  recent GPUs and oneDNN); checkpoints are written contiguous, so they do not depend on it.
* ``--compile`` wraps the training module in ``torch.compile``. It needs a working compiler backend
  (a C++ compiler for inductor on the CPU, triton on CUDA); when compiling fails the run stops with
  one line saying so (`CompileError`), never a traceback.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

AMP_CHOICES = ("off", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class CompileError(ValueError):
    """``--compile`` asked for, but torch.compile cannot compile the model on this machine."""


@dataclass(frozen=True)
class Precision:
    """The precision and layout settings of a run on one device."""

    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    device_type: str = "cpu"

    def __post_init__(self) -> None:
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")

    def check(self) -> Precision:
        """Refuse, before anything is built, what this torch cannot do on this device."""
        if self.amp == "off":
            return self
        try:
            with torch.autocast(self.device_type, dtype=_DTYPES[self.amp]):
                torch.nn.functional.conv2d(torch.zeros(1, 1, 3, 3, device=self.device_type),
                                           torch.zeros(1, 1, 1, 1, device=self.device_type))
            if self.amp == "fp16":
                torch.amp.GradScaler(self.device_type)
        except (RuntimeError, ValueError, AttributeError, TypeError) as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"--amp {self.amp} is not supported on {self.device_type} by this torch "
                             f"({torch.__version__}): {why}") from None
        return self

    def autocast(self) -> AbstractContextManager:
        """The context of a forward pass and its loss (nothing for ``--amp off``)."""
        if self.amp == "off":
            return nullcontext()
        return torch.autocast(self.device_type, dtype=_DTYPES[self.amp])

    def scaler(self) -> Any:
        """A GradScaler for fp16, else None (bf16 has float32's range and needs no loss scaling)."""
        return torch.amp.GradScaler(self.device_type) if self.amp == "fp16" else None

    def model(self, model: nn.Module) -> nn.Module:
        """``model`` in the run's memory format (in place; call again after EC2T swaps layers in)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def compiled(self, net: nn.Module) -> nn.Module:
        """``net`` wrapped in torch.compile when asked for (compiling happens at the first step)."""
        if not self.compile:
            return net
        if not hasattr(torch, "compile"):
            raise CompileError(f"--compile: this torch ({torch.__version__}) has no torch.compile")
        return torch.compile(net)


def compile_failure(e: BaseException) -> CompileError | None:
    """The one-line `CompileError` for an exception raised while torch.compile compiles (its
    backend, dynamo or inductor), or None for any other exception."""
    module = type(e).__module__ or ""
    if module.startswith(("torch._dynamo", "torch._inductor")) or type(e).__name__ in (
            "BackendCompilerFailed", "InternalTorchDynamoError", "CppCompileError", "InvalidCxxCompiler"):
        text = str(e).strip().splitlines()
        detail = next((line.strip() for line in text if line.strip()), type(e).__name__)
        return CompileError(f"--compile: torch.compile cannot compile the model on this machine: {detail[:200]}")
    return None
