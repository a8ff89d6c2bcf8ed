"""Figures: pyplot-free ``Figure`` objects, atomic saving, PNG bytes, titles that fit.

Without a display (and with no backend chosen by ``MPLBACKEND`` or an imported pyplot)
matplotlib is switched to the Agg backend on import.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import matplotlib


def _headless() -> bool:
    if os.environ.get("MPLBACKEND") or "matplotlib.pyplot" in sys.modules:
        return False  # someone (a notebook kernel, the user) already chose
    if sys.platform.startswith("linux"):
        return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return False


if _headless():
    matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from ..io import atomic_path  # noqa: E402

__all__ = ["new_figure", "save_figure", "figure_png", "fit_title"]

FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".jpg": "jpg", ".jpeg": "jpg"}


def new_figure(nrows: int = 1, ncols: int = 1, *, panel_size=(4.5, 4.0), squeeze=True,
               **subplot_kw):
    """``(fig, axes)`` on a pyplot-free :class:`~matplotlib.figure.Figure` (nothing to
    close, no global state), constrained layout, each panel about ``panel_size`` inches."""
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=squeeze, **subplot_kw)
    return fig, axes


def save_figure(fig, path, *, dpi: int = 150, format: str | None = None) -> Path:
    """Write ``fig`` to ``path`` atomically; the format comes from the suffix unless given."""
    path = Path(path)
    fmt = format or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format of {path}; pass format= "
                         f"(one of {sorted(set(FORMATS.values()))})")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path


def figure_png(fig, *, dpi: int = 80) -> bytes:
    """``fig`` as PNG bytes (for an ``ipywidgets.Image``); the same figure gives the same
    bytes, so frames can be compared and cached."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def fit_title(ax, title: str, *, fontsize: float = 10):
    """Set ``title`` on ``ax``, wrapped at spaces to the axes' width, so that a long title
    over a narrow panel is not cut off at the figure's edge. Returns the Text."""
    width_pt = ax.get_position().width * ax.get_figure(root=True).get_figwidth() * 72
    chars = max(12, int(width_pt / (TITLE_EM_PER_CHAR * fontsize)))
    lines = [textwrap.fill(line, chars, break_on_hyphens=False) or line
             for line in title.split("\n")]
    return ax.set_title("\n".join(lines), fontsize=fontsize)


TITLE_EM_PER_CHAR = 0.62
