"""Deprecated import path, kept until ``mnx bench`` (micronet_onnx/cli/app.py) switches: the names of
the former single module, now in `micronet_onnx.bench` (package) and `micronet_onnx.cli.bench_view`
(rendering). New code imports from there."""

from micronet_onnx.bench import *  # noqa: F403 - the public API, re-exported as it was
from micronet_onnx.bench import __all__ as _bench_all
from micronet_onnx.cli.bench_view import render, render_layers

__all__ = [*_bench_all, "render", "render_layers"]
