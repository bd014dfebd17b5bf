"""matplotlib behind one door: the Agg backend (no display, no GUI toolkit) and PNG rendering."""

from __future__ import annotations

import io
from typing import Any

INSTALL_HINT = "install micronet-onnx[plots]"


class PlotsUnavailable(ValueError):
    """matplotlib is not installed (a usage error: exit 2 at the command line)."""


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the Agg backend, or `PlotsUnavailable` naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable(f"plots need matplotlib: {INSTALL_HINT}") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; the figure is closed afterwards (pyplot keeps no reference)."""
    plt = pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


PHASE_COLORS = {"fp": "#dbe9f6", "ec2t": "#fde2c8", "frozen": "#d9f0d3"}
PHASE_NAMES = {"fp": "full precision", "ec2t": "EC2T", "frozen": "frozen assignment"}
