"""Pictures of a run, a file and a benchmark (`mnx plot`, `mnx report`), drawn with matplotlib's
non-interactive Agg backend. matplotlib is the optional extra ``plots``: every function here gets
it through `backend.pyplot`, which raises `PlotsUnavailable` (one line: what to install) without it.

- `curves.training_curves`: loss, accuracy and sparsity per epoch from a checkpoint's history;
- `layers.layer_figure`: per layer of a `ScoreReport`: sparsity, stored bits, dead channels;
- `speed.speed_figure`: images/s of a `mnx bench --json` report by runtime, batch and threads;
- `page.report_html`: the self-contained HTML page of `mnx report`.
Each figure function returns the matplotlib Figure (tests count its axes); `backend.png_bytes`
renders one.
"""

from micronet_onnx.viz.backend import PlotsUnavailable, png_bytes

__all__ = ["PlotsUnavailable", "png_bytes"]
