"""Plots: 2-D densities and sampling paths, metrics against the number of model calls.

Helpers draw on a matplotlib ``Axes`` you pass in, so notebooks and experiments
compose them freely::

    fig, axes = lab.viz.new_figure(1, 2)
    lab.viz.plot_density_2d(axes[0], mixture, sigma=0.0)
    lab.viz.plot_paths_2d(axes[0], traj, samples=16)
    lab.viz.plot_metric_vs_nfe(axes[1], rows, "sw")
    lab.viz.save_figure(fig, "results/x/plot.png")     # atomic

Without a display (and with no backend chosen by ``MPLBACKEND`` or an imported
pyplot) matplotlib is switched to the Agg backend on import.
"""

from __future__ import annotations

import math
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: E402
from torch import Tensor  # noqa: E402

from .io import atomic_path  # noqa: E402

__all__ = ["new_figure", "save_figure", "log_density_2d", "bounds_2d", "density_grid",
           "plot_density_2d", "plot_paths_2d", "plot_samples_2d", "rule_styles",
           "plot_metric_vs_nfe"]

FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".jpg": "jpg", ".jpeg": "jpg"}


# --------------------------------------------------------------------------- figures

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


# --------------------------------------------------------------------------- densities

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


# --------------------------------------------------------------------------- paths

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


# --------------------------------------------------------------------------- metrics

MARKERS = "osD^v<>ph*XP"


def rule_styles(labels: Sequence[str], dashed: Sequence[str] = ()) -> dict[str, dict]:
    """Distinct line styles per label: tab20 colours, cycling markers, and dashed lines
    for the labels in ``dashed`` (e.g. the stochastic rules)."""
    cmap = matplotlib.colormaps["tab20"]
    dashed = set(dashed)
    return {lab: {"color": cmap(i % 20), "marker": MARKERS[i % len(MARKERS)],
                  "linestyle": "--" if lab in dashed else "-"}
            for i, lab in enumerate(labels)}


def _one_two_five(lo: float, hi: float) -> list[float]:
    out = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        out += [m * 10.0**e for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]
    return [int(v) if v >= 1 else v for v in out]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def plot_metric_vs_nfe(ax, rows: Sequence[Mapping], metric: str, *, x: str = "nfe",
                       group: str = "rule", groups: Sequence[str] | None = None,
                       styles: Mapping[str, dict] | None = None, floor: float | None = None,
                       floor_label: str = "floor", ylabel: str | None = None,
                       logx: bool = True, logy: bool = True, legend: bool = True,
                       xticks: Sequence[float] | None = None, yerr: str | None = None):
    """One line per ``group`` (rule) of ``metric`` against ``x`` (NFE), log-log.

    ``rows`` are dicts; rows without a positive finite ``metric`` (a failed run, a rule
    that did not fit the budget) are left out. Rows with ``stochastic`` true are drawn
    dashed. ``floor`` draws a horizontal reference line. ``xticks`` (default: the x
    values if there are few, else 1-2-5 steps) are labelled as plain numbers. ``yerr``
    names a column (e.g. ``"fid_std"``) drawn as error bars where it is set.
    """
    groups = list(groups) if groups is not None else list(dict.fromkeys(r[group] for r in rows))
    if styles is None:
        stochastic = {r[group] for r in rows if r.get("stochastic")}
        styles = rule_styles(groups, dashed=[g for g in groups if g in stochastic])
    ticks = set()
    for g in groups:
        pts = sorted((r[x], r[metric]) for r in rows
                     if r[group] == g and _finite(r.get(metric)) and _finite(r.get(x)))
        if not pts:
            continue
        ticks.update(p[0] for p in pts)
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], label=g, markersize=4,
                          lw=1.2, **styles.get(g, {}))
        bars = [(r[x], r[metric], r[yerr]) for r in rows if yerr and r[group] == g
                and _finite(r.get(metric)) and _finite(r.get(x)) and _finite(r.get(yerr))]
        if bars:
            ax.errorbar(*zip(*bars), fmt="none", ecolor=line.get_color(), capsize=3, lw=1)
    if floor is not None:
        ax.axhline(floor, color="k", lw=1, ls=":", label=floor_label)
    if logx:
        ax.set_xscale("log")
        if xticks is None and ticks:
            xticks = sorted(ticks) if len(ticks) <= 8 else _one_two_five(min(ticks), max(ticks))
        if xticks:
            ax.set_xticks(list(xticks))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("model calls (NFE)" if x == "nfe" else x)
    ax.set_ylabel(ylabel or metric)
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    if legend:
        ax.legend(fontsize="small")
    return ax


REFERENCE_STYLES = ({"ls": ":"}, {"ls": "-."}, {"ls": "--"})


def metric_vs_nfe_panels(rows: Sequence[Mapping], metric: str, *, panel: str = "model",
                         group: str = "rule", ylabel: str | None = None,
                         references: Mapping[str, Mapping[str, float]] | None = None,
                         xticks: Sequence[float] | None = None, yerr: str | None = None,
                         panel_size=(4.8, 4.0)):
    """A figure with one log-log panel of ``metric`` against NFE per value of ``panel``
    (e.g. the model), one line per ``group`` in the same style on every panel (dashed
    where ``stochastic``) and one legend on the right. ``references[panel value]`` maps
    a label to a horizontal line (a floor, an exact solution's score); ``yerr`` as in
    :func:`plot_metric_vs_nfe`."""
    names = list(dict.fromkeys(r[panel] for r in rows))
    groups = list(dict.fromkeys(r[group] for r in rows))
    styles = rule_styles(groups, dashed=[r[group] for r in rows if r.get("stochastic")])
    fig, axes = new_figure(1, len(names), panel_size=panel_size, squeeze=False)
    legend: dict[str, object] = {}
    for ax, name in zip(axes[0], names):
        plot_metric_vs_nfe(ax, [r for r in rows if r[panel] == name], metric, group=group,
                           groups=groups, styles=styles, legend=False, ylabel=ylabel,
                           xticks=xticks, yerr=yerr)
        for (label, value), style in zip((references or {}).get(name, {}).items(),
                                         REFERENCE_STYLES):
            if _finite(value):
                ax.axhline(value, color="k", lw=1, label=label, **style)
        ax.set_title(str(name), fontsize=10)
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="outside right center",
                   fontsize="small")
    return fig


# --------------------------------------------------------------------------- images

# --------------------------------------------------------------------------- panels
# Used by lab.widgets to draw one frame of a trajectory; usable on their own.

__all__ += ["figure_png", "image_grid", "fit_title", "plot_image_grid", "images_to_text",
            "images_from_text", "preview_figure",
            "plot_state_2d", "plot_field_2d",
            "loglog_slope", "plot_convergence", "step_angles", "plot_step_angles"]


def figure_png(fig, *, dpi: int = 80) -> bytes:
    """``fig`` as PNG bytes (for an ``ipywidgets.Image``); the same figure gives the same
    bytes, so frames can be compared and cached."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


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


def fit_title(ax, title: str, *, fontsize: float = 10):
    """Set ``title`` on ``ax``, wrapped at spaces to the axes' width, so that a long title
    over a narrow panel is not cut off at the figure's edge. Returns the Text."""
    width_pt = ax.get_position().width * ax.get_figure(root=True).get_figwidth() * 72
    chars = max(12, int(width_pt / (TITLE_EM_PER_CHAR * fontsize)))
    lines = [textwrap.fill(line, chars, break_on_hyphens=False) or line
             for line in title.split("\n")]
    return ax.set_title("\n".join(lines), fontsize=fontsize)


#: A generous average glyph width of the default font, in ems: titles wrap to fit it.
TITLE_EM_PER_CHAR = 0.62


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
    from .denoiser import eps

    xs = np.linspace(*xlim, resolution)
    ys = np.linspace(*ylim, resolution)
    X, Y = np.meshgrid(xs, ys)
    pts = torch.from_numpy(np.stack([X.ravel(), Y.ravel()], axis=1))
    with torch.inference_mode():
        d = -eps(model, pts, float(sigma)).to(torch.float64).numpy()
    return ax.quiver(X, Y, d[:, 0].reshape(X.shape), d[:, 1].reshape(X.shape), color=color,
                     angles="xy", scale_units="xy", scale=scale, **quiver_kw)


def loglog_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (an order of convergence when
    ``y`` is an error and ``x`` a step size or, negated, a step count)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        raise ValueError("a slope needs at least two positive finite points")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def plot_convergence(ax, x, errors, *, label: str, fit: bool = True, **style) -> float | None:
    """Errors against ``x`` (NFE or steps) on log-log axes, with the fitted slope in the
    label. Returns the slope (``None`` if ``fit`` is false)."""
    slope = loglog_slope(x, errors) if fit else None
    text = label if slope is None else f"{label} (slope {slope:.2f})"
    ax.loglog(x, errors, label=text, markersize=4, lw=1.2,
              **({"marker": "o"} | style))
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    return slope


def step_angles(paths) -> Tensor:
    """Mean angle in degrees between successive displacements ``x_{i+1} - x_i`` of a
    path, one value per interior state ``(T - 2,)``, averaged over samples: 0 on a
    straight path, large where the trajectory turns. ``paths``: a Trajectory or
    ``(T, B, ...)`` states."""
    xs = torch.as_tensor(getattr(paths, "xs", paths)).detach().to(torch.float64)
    d = (xs[1:] - xs[:-1]).reshape(xs.shape[0] - 1, xs.shape[1], -1)
    cos = torch.nn.functional.cosine_similarity(d[1:], d[:-1], dim=-1, eps=1e-300)
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).mean(1)


def plot_step_angles(ax, traj, *, label: str | None = None, **style):
    """:func:`step_angles` of a trajectory against the sigma at which the path turns
    (log x axis). Returns the line."""
    angles = step_angles(traj).numpy()
    sig = traj.sigmas[1:-1].to(torch.float64).numpy()
    (line,) = ax.plot(sig, angles, label=label, **({"marker": "."} | style))
    ax.set_xscale("log")
    ax.set_xlabel("sigma where the path turns")
    ax.set_ylabel("angle between successive steps (degrees)")
    ax.grid(True, alpha=0.3)
    return line
