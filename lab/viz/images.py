"""Image grids, and images as short text so a study row can carry a preview."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from .figures import fit_title, new_figure

__all__ = ["image_grid", "plot_image_grid", "images_to_text", "images_from_text",
           "preview_figure"]

def image_grid(images, nrow: int | None = None, *, pad: int = 1,
               value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Tile images ``(B, C, H, W)`` (C = 1 or 3) or ``(B, H, W)`` into one array in [0, 1]:
    ``(rows, cols)`` for grey, ``(rows, cols, 3)`` for colour. ``nrow`` images per row
    (default about sqrt(B)); values are clipped to ``value_range`` first."""
    x = torch.as_tensor(images).detach().to(torch.float64).cpu()
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or len(x) == 0:
        raise ValueError(f"images must be (B, 1 or 3, H, W) or (B, H, W), got {tuple(x.shape)}")
    lo, hi = value_range
    x = ((x.clamp(lo, hi) - lo) / (hi - lo)).numpy()
    b, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    rows = math.ceil(b / nrow)
    out = np.ones((c, rows * (h + pad) + pad, nrow * (w + pad) + pad))
    for k in range(b):
        r, q = divmod(k, nrow)
        out[:, pad + r * (h + pad):pad + r * (h + pad) + h,
            pad + q * (w + pad):pad + q * (w + pad) + w] = x[k]
    return out[0] if c == 1 else out.transpose(1, 2, 0)


def plot_image_grid(ax, images, *, nrow: int | None = None,
                    value_range: tuple[float, float] = (-1.0, 1.0), title: str | None = None,
                    cmap: str = "gray", fontsize: float = 10):
    """Draw :func:`image_grid` of ``images`` on ``ax`` without ticks, the ``title`` wrapped
    to the panel's width (:func:`fit_title`); returns the AxesImage."""
    grid = image_grid(images, nrow, value_range=value_range)
    im = ax.imshow(grid, cmap=cmap if grid.ndim == 2 else None, vmin=0, vmax=1,
                   interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        fit_title(ax, title, fontsize=fontsize)
    return im


def images_to_text(images) -> str:
    """Images ``(B, C, H, W)`` in [-1, 1] as short text (``"BxCxHxW:"`` + base64 of 8-bit
    pixels), so that a study row can carry a preview and ``render`` can draw sample grids
    from the rows alone. :func:`images_from_text` inverts it to within 1/255."""
    import base64

    x = torch.as_tensor(images).detach().cpu().clamp(-1, 1).add(1).mul(127.5).round()
    shape = "x".join(map(str, x.shape))
    return f"{shape}:{base64.b64encode(x.to(torch.uint8).numpy().tobytes()).decode()}"


def images_from_text(text: str) -> torch.Tensor:
    import base64

    shape, _, data = text.partition(":")
    pixels = np.frombuffer(base64.b64decode(data), dtype=np.uint8).copy()
    return torch.from_numpy(pixels).reshape(*map(int, shape.split("x"))).float() / 127.5 - 1


def preview_figure(previews: Mapping[str, str], *, ncols: int = 4, nrow: int = 4):
    """One panel per ``label -> images_to_text(...)`` preview (a study's sample grids,
    drawn from its rows)."""
    ncols = min(ncols, max(1, len(previews)))
    fig, axes = new_figure(math.ceil(len(previews) / ncols), ncols, panel_size=(2.6, 2.9),
                           squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (label, text) in zip(axes.flat, previews.items()):
        plot_image_grid(ax, images_from_text(text), nrow=nrow, title=label, fontsize=8)
    return fig
