"""Checkpoints: plain dicts of tensors and primitives, written atomically, read with
``torch.load(weights_only=True)`` so opening one never runs code from the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from micronet_onnx.fileio import atomic_writer
from micronet_onnx.model import MicroNet, MicroNetConfig
from micronet_onnx.training.ec2t import EC2TConfig, ternarize_model

FORMAT = "micronet-onnx/checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not ours."""


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write a checkpoint so that a run killed mid-write leaves the previous one intact."""
    with atomic_writer(path) as f:
        torch.save(obj, f)


def load(path: str | Path) -> dict[str, Any]:
    """Read and sanity-check a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a micronet-onnx checkpoint")
    if int(ckpt.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt.get('version')}, this tool reads <= {VERSION}")
    return ckpt


def build_model(ckpt: dict[str, Any], *, best: bool = True) -> MicroNet:
    """The model a checkpoint holds, in eval mode (the selected weights when ``best``)."""
    try:
        model = MicroNet(MicroNetConfig.from_dict(ckpt["model_config"]))
        if ckpt.get("ternary") is not None:
            ternarize_model(model, EC2TConfig.from_dict(ckpt["ternary"]))
        use_best = best and ckpt.get("best_state_dict") is not None
        state = ckpt["best_state_dict"] if use_best else ckpt["state_dict"]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint has a malformed model description: {type(e).__name__}: {e}") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint weights do not fit its model config: {first}") from None
    return model.eval()


def load_model(path: str | Path, *, best: bool = True) -> tuple[MicroNet, dict[str, Any]]:
    """Convenience: (eval-mode model, checkpoint dict)."""
    ckpt = load(path)
    return build_model(ckpt, best=best), ckpt
