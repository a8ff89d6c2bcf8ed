"""2-D pictures: densities ``log p(x; sigma)``, sampling paths, sample sets, one moment of
sampling (states, predictions, paths over the density) and the descent field."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["log_density_2d", "bounds_2d", "density_grid", "plot_density_2d", "plot_paths_2d",
           "plot_samples_2d", "plot_state_2d", "plot_field_2d"]

def _points_of(model) -> Tensor | None:
    """The data of an ``Empirical`` model or a tensor of samples, as ``(N, 2)`` float64."""
    data = model if isinstance(model, Tensor) else getattr(model, "data", None)
    if not isinstance(data, Tensor):
        return None
    data = data.reshape(len(data), -1).to(torch.float64)
    if data.shape[1] != 2:
        raise ValueError(f"a 2-D plot needs 2-D samples, got dimension {data.shape[1]}")
    return data


def log_density_2d(model, points, sigma: float = 0.0) -> Tensor:
    """``log p(x; sigma)``, the data density convolved with ``N(0, sigma^2 I)``, at ``(N, 2)``
    points.

    ``model`` is a ``GaussianMixture`` / ``Gaussian`` (exact), or an ``Empirical`` model
    or a tensor of samples (Gaussian kernels of width ``sigma``, which must be > 0).
    """
    points = torch.as_tensor(points, dtype=torch.float64).reshape(-1, 2)
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
    if all(hasattr(model, a) for a in ("means", "covs", "weights")):
        means, covs = model.means.to(torch.float64), model.covs.to(torch.float64)
        if means.shape[1] != 2:
            raise ValueError(f"a 2-D plot needs a 2-D model, got dimension {means.shape[1]}")
        lam, vecs = torch.linalg.eigh(covs)
        lam = lam.clamp_min(1e-12 * float(lam.max().clamp_min(1.0))) + sigma**2
        coords = torch.einsum("kdj,nkd->nkj", vecs, points[:, None, :] - means[None])
        logits = (model.weights.to(torch.float64).log()[None]
                  - 0.5 * torch.log(lam).sum(-1)[None]
                  - 0.5 * (coords**2 / lam[None]).sum(-1) - math.log(2 * math.pi))
        return torch.logsumexp(logits, dim=1)
    data = _points_of(model)
    if data is None:
        raise TypeError(f"log_density_2d needs a GaussianMixture, an Empirical model or a "
                        f"tensor of samples, got {type(model).__name__}")
    if sigma <= 0:
        raise ValueError("the density of a finite sample set needs sigma > 0 (kernel width)")
    out = []
    for chunk in points.split(4096):
        d2 = torch.cdist(chunk, data) ** 2
        out.append(torch.logsumexp(-d2 / (2 * sigma**2), dim=1))
    return (torch.cat(out) - math.log(len(data)) - math.log(2 * math.pi * sigma**2))


def bounds_2d(model, margin: float = 3.0) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(xlim, ylim)`` holding every component to ``margin`` standard deviations (a
    mixture), or every point with 5 % padding (samples, Empirical)."""
    if all(hasattr(model, a) for a in ("means", "covs")):
        means = model.means.to(torch.float64)
        sd = model.covs.to(torch.float64).diagonal(dim1=-2, dim2=-1).sqrt()
        lo, hi = (means - margin * sd).min(0).values, (means + margin * sd).max(0).values
    else:
        data = _points_of(model)
        if data is None:
            raise TypeError(f"cannot find the extent of a {type(model).__name__}")
        lo, hi = data.min(0).values, data.max(0).values
        pad = 0.05 * (hi - lo).clamp_min(1e-9)
        lo, hi = lo - pad, hi + pad
    return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))


def density_grid(model, sigma: float = 0.0, xlim=None, ylim=None, resolution: int = 200):
    """``(X, Y, logp)`` numpy arrays of ``log p(x; sigma)`` on a ``resolution``-square grid."""
    if xlim is None or ylim is None:
        bx, by = bounds_2d(model)
        xlim, ylim = xlim or bx, ylim or by
    xs = np.linspace(*xlim, resolution)
    ys = np.linspace(*ylim, resolution)
    X, Y = np.meshgrid(xs, ys)
    pts = torch.from_numpy(np.stack([X.ravel(), Y.ravel()], axis=1))
    logp = log_density_2d(model, pts, sigma).numpy().reshape(X.shape)
    return X, Y, logp


def plot_density_2d(ax, model, sigma: float = 0.0, *, xlim=None, ylim=None,
                    resolution: int = 200, levels: int = 12, depth: float | None = 10.0,
                    cmap: str = "Greys", lines: bool = False, alpha: float = 0.9, grid=None):
    """Filled contours of ``log p(x; sigma)`` from its maximum down ``depth`` nats
    (``depth=None``: down to the grid's minimum, at most 10 nats, so that a nearly flat
    density at large sigma still shows its shape).

    ``model`` as in :func:`log_density_2d`; or pass ``grid = density_grid(...)`` (and
    ``model=None``) to draw one grid on many panels. Sets the limits and an equal
    aspect; returns the contour set (for ``fig.colorbar``).
    """
    X, Y, logp = grid if grid is not None else density_grid(model, sigma, xlim, ylim,
                                                            resolution)
    top = float(np.max(logp))
    if depth is None:
        depth = min(10.0, max(top - float(np.min(logp)), 1e-6))
    lv = np.linspace(top - depth, top, levels + 1)
    cs = ax.contourf(X, Y, logp, levels=lv, cmap=cmap, alpha=alpha, extend="neither")
    if lines:
        ax.contour(X, Y, logp, levels=lv[1:-1], colors="k", linewidths=0.3, alpha=0.35)
    ax.set_xlim(X.min(), X.max())
    ax.set_ylim(Y.min(), Y.max())
    ax.set_aspect("equal")
    return cs


def _states(paths) -> Tensor:
    xs = getattr(paths, "xs", paths)  # a Trajectory or a (T, B, 2) tensor
    xs = torch.as_tensor(xs).detach().to(torch.float64)
    if xs.ndim == 2:
        xs = xs[:, None]
    xs = xs.reshape(xs.shape[0], xs.shape[1], -1)
    if xs.shape[2] != 2:
        raise ValueError(f"plot_paths_2d needs 2-D states, got dimension {xs.shape[2]}")
    return xs


def plot_paths_2d(ax, paths, *, samples: int | Sequence[int] | None = 16, color=None,
                  label: str | None = None, linewidth: float = 1.0, alpha: float = 0.85,
                  step_markers: bool = True, end_marker: str = "o", markersize: float = 4.0):
    """Draw the paths of a few samples: a ``Trajectory`` (``record="all"``) or states
    ``(T, B, 2)``. ``samples`` is a count (the first ones) or a list of indices.

    Small dots mark each state, ``end_marker`` the final one; ``label`` goes on the
    first path only, so a legend lists the rule once.
    """
    xs = _states(paths)
    index = range(min(samples, xs.shape[1])) if isinstance(samples, int) else \
        range(xs.shape[1]) if samples is None else list(samples)
    for j, k in enumerate(index):
        path = xs[:, k].numpy()
        (line,) = ax.plot(path[:, 0], path[:, 1], "-", color=color, lw=linewidth,
                          alpha=alpha, marker="." if step_markers else None,
                          markersize=markersize * 0.6, label=label if j == 0 else None)
        color = line.get_color()  # the first path picks the colour, the rest share it
        if end_marker:
            ax.plot(path[-1, 0], path[-1, 1], end_marker, color=color, markersize=markersize,
                    markeredgecolor="white", markeredgewidth=0.5)
    return color


def plot_samples_2d(ax, x, *, color=None, label: str | None = None, s: float = 4.0,
                    alpha: float = 0.5, **kw):
    """Scatter a ``(N, 2)`` sample set (a tensor or a Trajectory's final states)."""
    pts = _states(getattr(x, "x", x)[None])[0].numpy()
    return ax.scatter(pts[:, 0], pts[:, 1], s=s, alpha=alpha, color=color, label=label,
                      linewidths=0, **kw)


def plot_state_2d(ax, x, x0=None, *, grid=None, paths=None, color="tab:red",
                  x0_color="tab:blue", label: str | None = None, x0_label: str | None = None,
                  s: float = 6.0, xlim=None, ylim=None):
    """One moment of 2-D sampling: the density ``grid`` (from :func:`density_grid`) as
    background, the paths so far (``(k + 1, B, 2)`` states) of a few samples, the states
    ``x`` and, if given, the denoiser's predictions ``x0``. Returns the number of states
    outside the view (they are far out at large sigma)."""
    if grid is not None:
        plot_density_2d(ax, None, grid=grid, depth=None, alpha=0.5)
    if paths is not None and len(paths) > 1:
        plot_paths_2d(ax, paths, samples=None, color=color, linewidth=0.7, alpha=0.6,
                      end_marker="", markersize=3.0)
    if x0 is not None:
        plot_samples_2d(ax, x0, color=x0_color, s=s * 0.6, alpha=0.55, label=x0_label,
                        marker="D" if x0_color == color else "o")
    plot_samples_2d(ax, x, color=color, s=s, alpha=0.75, label=label)
    if xlim is not None:
        ax.set_xlim(*xlim)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    (x_lo, x_hi), (y_lo, y_hi) = ax.get_xlim(), ax.get_ylim()
    pts = _states(torch.as_tensor(x)[None])[0]
    inside = ((pts[:, 0] >= x_lo) & (pts[:, 0] <= x_hi) & (pts[:, 1] >= y_lo)
              & (pts[:, 1] <= y_hi))
    return int((~inside).sum())


def plot_field_2d(ax, model, sigma: float, *, xlim, ylim, resolution: int = 21,
                  color: str = "tab:red", scale: float | None = None, **quiver_kw):
    """Arrows of the descent direction ``-eps(x, sigma)`` (the plain step's direction, a
    positive multiple of the score) on a ``resolution``-square grid. Returns the quiver."""
    from ..denoiser import eps

    xs = np.linspace(*xlim, resolution)
    ys = np.linspace(*ylim, resolution)
    X, Y = np.meshgrid(xs, ys)
    pts = torch.from_numpy(np.stack([X.ravel(), Y.ravel()], axis=1))
    with torch.inference_mode():
        d = -eps(model, pts, float(sigma)).to(torch.float64).numpy()
    return ax.quiver(X, Y, d[:, 0].reshape(X.shape), d[:, 1].reshape(X.shape), color=color,
                     angles="xy", scale_units="xy", scale=scale, **quiver_kw)
