"""What a scrubber's frame shows: :class:`TrajectoryFrames` draws slider position ``k`` of
one or more recorded runs (2-D points over a density, or image grids) as a figure."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from .. import viz
from ..trajectory import Trajectory

__all__ = ["TrajectoryFrames"]


def _as_mapping(traj) -> dict[str, Trajectory]:
    if isinstance(traj, Trajectory):
        return {traj.rule or "trajectory": traj}
    if isinstance(traj, Mapping):
        out = dict(traj)
        for label, t in out.items():
            if not isinstance(t, Trajectory):
                raise TypeError(f"{label!r}: expected a lab.Trajectory, got {type(t).__name__}")
        if not out:
            raise ValueError("no trajectories to show")
        return out
    raise TypeError(f"traj must be a lab.Trajectory or a mapping label -> Trajectory, got "
                    f"{type(traj).__name__}")


def _kind(t: Trajectory) -> str:
    per_sample = tuple(t.xs.shape[2:])
    if len(per_sample) == 3 and per_sample[0] in (1, 3):
        return "images"
    return "points"


def _first_two(x: Tensor, lead: int = 1) -> Tensor:
    """States ``(B, ...)`` (``lead=1``) or paths ``(T, B, ...)`` (``lead=2``) as 2-D
    points: 2-D data as is, higher dimensions by their first two coordinates (a
    projection, said in the figure)."""
    return x.reshape(*x.shape[:lead], -1)[..., :2]


def _is_mixture(m) -> bool:
    return all(hasattr(m, a) for a in ("means", "covs", "weights"))


def _points_model(m) -> bool:
    """Whether ``m`` can give a 2-D density background (viz.density_grid)."""
    if m is None:
        return False
    if _is_mixture(m):
        return m.means.shape[1] == 2
    data = m if isinstance(m, Tensor) else getattr(m, "data", None)
    return isinstance(data, Tensor) and data[0].numel() == 2


class TrajectoryFrames:
    """The frames of recorded runs (``record="all"``): a figure per slider position.

    For 2-D data a frame shows the states ``x_k`` (red) and the denoiser's predictions
    ``x0_hat`` (blue) over the density, with the paths so far of ``paths`` samples; for
    images, a grid of ``x_k / sqrt(1 + sigma^2)`` beside a grid of ``x0_hat``. A mapping
    ``{label: Trajectory}`` is drawn ``layout="overlay"`` (2-D: all rules on one plot) or
    ``"side"`` (a panel per rule); runs with different step counts are indexed in
    proportion to the longest.

    ``density`` (2-D): a ``GaussianMixture``, an ``Empirical`` model or a tensor of data
    samples; by default ``model`` when it is one of those. ``density_sigma="data"``
    draws the data density, ``"current"`` the noised density ``p(x; sigma_k)``. Sample
    sets are smoothed by ``bandwidth`` (default 3 % of their extent). ``view="data"``
    keeps the view on the data (states far out at large sigma are counted in the
    title), ``"auto"`` widens it to the current states.
    """

    def __init__(self, model=None, *, density=None, layout: str = "auto", samples: int = 512,
                 paths: int = 8, images: int = 16, show_x0: bool | None = None,
                 view: str = "data", density_sigma: str = "data",
                 bandwidth: float | None = None, resolution: int = 120,
                 panel_size=(4.4, 4.2), title: str | None = None):
        if layout not in ("auto", "overlay", "side"):
            raise ValueError(f"layout must be 'auto', 'overlay' or 'side', got {layout!r}")
        if view not in ("data", "auto"):
            raise ValueError(f"view must be 'data' or 'auto', got {view!r}")
        if density_sigma not in ("data", "current"):
            raise ValueError(f"density_sigma must be 'data' or 'current', got {density_sigma!r}")
        self.model = model
        self.density = density if density is not None else (
            model if _points_model(model) else None)
        self.layout_option, self.samples, self.paths, self.images = layout, samples, paths, images
        self.show_x0, self.view, self.density_sigma = show_x0, view, density_sigma
        self.bandwidth, self.resolution = bandwidth, resolution
        self.panel_size, self.title = tuple(panel_size), title
        self.trajectories: dict[str, Trajectory] = {}
        self._grids: dict[tuple, tuple] = {}  # density backgrounds, kept across runs

    def load(self, traj) -> None:
        """Take new trajectories: a Trajectory or a mapping ``label -> Trajectory``."""
        trajs = _as_mapping(traj)
        kinds = set()
        for label, t in trajs.items():
            if len(t.xs) != t.steps + 1:
                raise ValueError(f"{label!r} was recorded with record='final'; the scrubber "
                                 "needs every state: sample with record='all'")
            kinds.add(_kind(t))
        if len(kinds) > 1:
            raise ValueError("cannot show image and point trajectories together")
        self.trajectories = trajs
        self.kind = kinds.pop()
        self.layout = self.layout_option
        if self.layout == "auto":
            self.layout = "overlay" if self.kind == "points" and 1 < len(trajs) <= 6 else "side"
        if self.kind == "images":
            self.layout = "side"
        self._limits = self._view_limits()
        self.steps = max(t.steps for t in trajs.values())

    def index(self, label: str, k: int) -> int:
        """The state of ``label``'s run shown at slider position ``k``."""
        n = self.trajectories[label].steps
        return k if n == self.steps else round(k * n / self.steps)

    def state(self, label: str, k: int) -> tuple[Tensor, Tensor, float, int]:
        """``(x, x0_hat, sigma, nfe so far)`` of ``label`` at slider position ``k``.

        ``x0_hat`` is the denoiser's output at ``x`` (recorded at the start of the next
        step); at the end of the schedule it is the final state itself.
        """
        t = self.trajectories[label]
        i = self.index(label, k)
        x0 = t.x0s[i] if i < len(t.x0s) else t.xs[i]
        nfe = t.cumulative_nfe[i - 1] if i > 0 else 0
        return t.xs[i], x0, float(t.sigmas[i]), nfe

    def _view_limits(self):
        if self.kind != "points":
            return None
        if self.density is not None:
            try:
                margin = 3.5 if _is_mixture(self.density) else 0.0
                (x0, x1), (y0, y1) = viz.bounds_2d(self.density, margin=margin)
                if not _is_mixture(self.density):
                    pad = 3 * self._bandwidth()
                    x0, x1, y0, y1 = x0 - pad, x1 + pad, y0 - pad, y1 + pad
                return (x0, x1), (y0, y1)
            except (TypeError, ValueError):
                self.density = None
        finals = torch.cat([_first_two(t.xs[-1]) for t in self.trajectories.values()])
        return viz.bounds_2d(finals)

    def _bandwidth(self) -> float:
        if self.bandwidth is not None:
            return float(self.bandwidth)
        (x0, x1), (y0, y1) = viz.bounds_2d(self.density)
        return 0.03 * max(x1 - x0, y1 - y0)

    def _grid(self, sigma: float, xlim, ylim):
        """The density background at ``sigma`` (cached), or None."""
        if self.density is None:
            return None
        s = 0.0 if self.density_sigma == "data" else sigma
        if not _is_mixture(self.density):
            s = math.hypot(s, self._bandwidth())
        key = (s, xlim, ylim)
        if key not in self._grids:
            self._grids[key] = viz.density_grid(self.density, s, xlim, ylim, self.resolution)
        return self._grids[key]

    def _limits_at(self, k: int):
        (x0, x1), (y0, y1) = self._limits
        if self.view == "auto":
            pts = torch.cat([_first_two(self.state(lb, k)[0]) for lb in self.trajectories])
            lo = pts.to(torch.float64).quantile(0.01, dim=0)
            hi = pts.to(torch.float64).quantile(0.99, dim=0)
            x0, x1 = min(x0, float(lo[0])), max(x1, float(hi[0]))
            y0, y1 = min(y0, float(lo[1])), max(y1, float(hi[1]))
        return (x0, x1), (y0, y1)

    def figure(self, k: int):
        """The matplotlib figure of slider position ``k``."""
        if not self.trajectories:
            raise ValueError("no trajectory to draw yet")
        return self._draw_points(k) if self.kind == "points" else self._draw_images(k)

    def _draw_points(self, k: int):
        labels = list(self.trajectories)
        overlay = self.layout == "overlay"
        n = len(labels)
        cols = 1 if overlay else (n if n <= 3 else 2 if n == 4 else 3)
        rows = 1 if overlay else math.ceil(n / cols)
        xlim, ylim = self._limits_at(k)
        width = self.panel_size[0]
        aspect = (ylim[1] - ylim[0]) / max(xlim[1] - xlim[0], 1e-12)
        height = min(max(width * aspect + 0.7, 2.5), self.panel_size[1] * 1.5)
        fig, axes = viz.new_figure(rows, cols, panel_size=(width, height), squeeze=False)
        show_x0 = (not overlay) if self.show_x0 is None else self.show_x0
        projected = any(t.xs[0, 0].numel() != 2 for t in self.trajectories.values())
        outside_total, shown = 0, 0
        for j, label in enumerate(labels):
            ax = axes.flat[0 if overlay else j]
            x, x0, sigma, nfe = self.state(label, k)
            i = self.index(label, k)
            color = f"C{j}" if overlay else "tab:red"
            grid = self._grid(sigma, xlim, ylim) if (j == 0 or not overlay) else None
            t = self.trajectories[label]
            paths = _first_two(t.xs[:i + 1, :self.paths], 2) if self.paths else None
            out = viz.plot_state_2d(
                ax, _first_two(x[:self.samples]),
                _first_two(x0[:self.samples]) if show_x0 else None, grid=grid, paths=paths,
                color=color, x0_color=color if overlay else "tab:blue",
                label=f"{label} (NFE {nfe})" if overlay else "x at sigma",
                x0_label=None if overlay else "x0_hat = D(x, sigma)", xlim=xlim, ylim=ylim)
            outside_total += out
            shown += min(self.samples, len(x))
            if not overlay:
                note = f"; {out} outside" if out else ""
                viz.fit_title(ax, f"{label}: step {i}/{t.steps}, sigma {sigma:.3g}, "
                                  f"NFE {nfe}{note}", fontsize=9)
        for ax in list(axes.flat)[1 if overlay else len(labels):]:
            ax.set_visible(False)
        if overlay:
            _, _, sigma, _ = self.state(labels[0], k)
            note = f"; {outside_total} of {shown} outside the view" if outside_total else ""
            viz.fit_title(axes.flat[0], self.title or f"step {k}/{self.steps}, "
                                                      f"sigma {sigma:.3g}{note}", fontsize=9)
        elif self.title:
            fig.suptitle(self.title, fontsize=10)
        handles, names = axes.flat[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, names, loc="outside lower center", fontsize="x-small",
                       ncols=min(len(handles), 3), markerscale=2, frameon=False)
        if projected:
            axes.flat[0].set_xlabel("x[0] (first two coordinates shown)", fontsize=8)
        return fig

    def _draw_images(self, k: int):
        labels = list(self.trajectories)
        fig, axes = viz.new_figure(len(labels), 2, panel_size=(3.0, 3.2), squeeze=False)
        for r, label in enumerate(labels):
            x, x0, sigma, nfe = self.state(label, k)
            i = self.index(label, k)
            n = self.trajectories[label].steps
            viz.plot_image_grid(axes[r, 0], x[:self.images] / math.sqrt(1 + sigma**2),
                                title=f"{label}, step {i}/{n}\n"
                                      f"x / sqrt(1 + sigma^2), sigma {sigma:.3g}")
            viz.plot_image_grid(axes[r, 1], x0[:self.images], title=f"x0_hat (NFE {nfe})")
        return fig
