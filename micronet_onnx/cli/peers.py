"""`mnx bench --peers`: which library call the options make (`bench.bench_peers` for MODEL, a file or a
checkpoint; `bench.bench_peers_random` for --random); the table is `peers_view.render_peers`."""

from __future__ import annotations

from pathlib import Path

from .errors import fail


def peer_reports(model: Path | None, random: str | None, sparsity: list[float], *, data_dir: Path | None,
                 layers: bool, batches: list[int], threads: list[int], repeats: int, checkpoint: Path | None,
                 kernel: str | None) -> list[dict]:
    """The reports of `mnx bench --peers` (one per --sparsity with --random)."""
    from micronet_onnx import bench

    if layers:
        fail("--peers times whole models: give MODEL or --random PRESET, not --layers")
    if data_dir is not None and not data_dir.is_dir():
        fail(f"--data-dir {data_dir} is not a directory")
    if checkpoint is not None and not checkpoint.is_file():
        fail(f"no such file: {checkpoint}")
    kwargs = dict(batches=batches, threads=threads, repeats=repeats, kernel=kernel)
    if random is not None:
        if checkpoint is not None:
            fail("--checkpoint goes with MODEL; --random builds its own PyTorch model")
        return bench.bench_peers_random(random, sparsity, data_dir=data_dir, **kwargs)
    return [bench.bench_peers(model, checkpoint=checkpoint, data_dir=data_dir, **kwargs)]
