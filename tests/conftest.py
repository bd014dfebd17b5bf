"""Shared fixtures: tiny real MicroNets trained on the embedded digits."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores on the project's machines: keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY = dict(model="micronet", depth=0.15, width=0.5)  # 2 blocks/stage, widths 8/16/32


@pytest.fixture(scope="session")
def digits():
    from micronet_onnx.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def ops_library() -> str:
    """Path of the compiled libmicronet_ops.so; fails (never skips) when it is missing: run `make lib`."""
    from micronet_onnx.runtime.session import OpsLibraryError, ops_library_path

    try:
        return ops_library_path()
    except OpsLibraryError as exc:
        pytest.fail(str(exc), pytrace=False)
