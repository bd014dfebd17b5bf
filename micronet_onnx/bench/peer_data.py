"""The images `mnx bench --peers` calibrates, checks and times on: real images of the model's data set.

A trained model is judged on its own data set (its checkpoint's or file's ``dataset``; embedded digits by
default, CIFAR from ``data_dir``): top-1 on the test split, and the int8 file is calibrated on training
images. A random model (``--random PRESET``) has no data set of its own: it uses the one its preset
implies (CIFAR-100 for ``micronet-c100``, CIFAR-10 for ``micronet-c10``) where ``data_dir`` holds it,
else the embedded digits, and says so; its labels mean nothing to it, so the report gives the
agreement of each contestant's argmax with the float32 model instead of a top-1.

Every image goes through the training normalization of its data set (`data.normalize`) and, where the
model's input is not 3x32x32, is resized (bilinear) and its channels averaged or repeated; the
description says when that happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# What --random's presets were made for (model.PRESETS gives only the class count).
PRESET_DATASETS = {"micronet-c100": "cifar100", "micronet-c10": "cifar10"}
EVAL_IMAGES = 1000  # test images per contestant at most: 10 000 CIFAR images x 9 contestants take too long
CALIBRATION_IMAGES = 128  # training images of the int8 calibration (fixed-seed sample; about 10 s at C100 scale)


@dataclass
class PeerData:
    """Normalized float32 NCHW images in the model's input shape, and what they are.

    ``labels`` is None for a random model (its top-1 would be meaningless); ``description`` says which
    data set, split and count, and any resizing; ``calibration`` are training images."""

    dataset: str
    description: str
    images: np.ndarray
    labels: np.ndarray | None
    calibration: np.ndarray
    calibration_description: str

    def batch(self, n: int) -> np.ndarray:
        """The first ``n`` test images, repeated when the split holds fewer (the timed input)."""
        reps = -(-n // len(self.images))
        return np.ascontiguousarray(np.concatenate([self.images] * reps)[:n]) if reps > 1 else self.images[:n].copy()

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "description": self.description, "images": int(len(self.images)),
                "labels": self.labels is not None, "calibration": self.calibration_description,
                "calibration_images": int(len(self.calibration))}


def _fit(x, shape: tuple[int, int, int]):
    """``x`` (torch NCHW, 3 channels) resized and re-channelled to ``shape`` = (C, H, W); whether it changed."""
    import torch.nn.functional as F

    c, h, w = shape
    changed = False
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        changed = True
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True).expand(-1, c, -1, -1)  # gray, repeated to the model's channels
        changed = True
    return x.contiguous(), changed


def _normalized(split, idx: np.ndarray, ds, shape: tuple[int, int, int]) -> tuple[np.ndarray, bool]:
    import torch

    from micronet_onnx.data import normalize, to_float

    x = normalize(to_float(split.images[torch.from_numpy(idx)]), ds.mean, ds.std)
    x, changed = _fit(x, shape)
    return np.ascontiguousarray(x.numpy(), dtype=np.float32), changed


def dataset_for(*, trained_dataset: str | None, preset: str | None, data_dir: str | Path | None) -> tuple[str, str]:
    """The data set to use and why: a trained model's own (digits when it records none); for a random
    model the preset's CIFAR when ``data_dir`` is given, else the digits with the reason."""
    if preset is None:
        return trained_dataset or "digits", "the model's data set"
    implied = PRESET_DATASETS.get(preset)
    if implied is None:
        return "digits", f"preset {preset} implies no data set"
    if data_dir is not None:
        return implied, f"the data set preset {preset} implies"
    return "digits", f"{implied}, which preset {preset} implies, needs --data-dir"


def load_peer_data(input_shape: tuple[int, int, int], *, trained_dataset: str | None = None,
                   preset: str | None = None, data_dir: str | Path | None = None, eval_images: int = EVAL_IMAGES,
                   calibration_images: int = CALIBRATION_IMAGES, seed: int = 0) -> PeerData:
    """Test images (the first ``eval_images`` of the test split) and calibration images (a fixed-seed
    sample of ``calibration_images`` from the training split, validation part held out as in training)
    for a model with input ``input_shape`` = (C, H, W); see the module docstring for the data set.
    Raises `data.DataError` when a CIFAR set is needed and ``data_dir`` does not hold it."""
    from micronet_onnx.data import load_dataset

    if eval_images < 1 or calibration_images < 1:
        raise ValueError("eval and calibration image counts must be positive")
    name, why = dataset_for(trained_dataset=trained_dataset, preset=preset, data_dir=data_dir)
    ds = load_dataset(name, data_dir)
    test_idx = np.arange(min(eval_images, len(ds.test)))
    images, changed = _normalized(ds.test, test_idx, ds, input_shape)
    rng = np.random.default_rng(seed)
    calib_idx = np.sort(rng.choice(len(ds.train), size=min(calibration_images, len(ds.train)), replace=False))
    calibration, _ = _normalized(ds.train, calib_idx, ds, input_shape)
    fitted = f", resized to {input_shape[0]}x{input_shape[1]}x{input_shape[2]}" if changed else ""
    kind = "embedded digits" if name == "digits" else name.upper().replace("CIFAR", "CIFAR-")
    description = f"{kind} test split, first {len(test_idx)} images{fitted} ({why})"
    if preset is not None:
        description += "; random model: labels unused, argmax agreement with the float32 model reported"
    return PeerData(
        dataset=name, description=description, images=images,
        labels=None if preset is not None else ds.test.labels[test_idx].numpy().astype(np.int64),
        calibration=calibration,
        calibration_description=f"{kind} training split, {len(calib_idx)} images (seed {seed}){fitted}",
    )
