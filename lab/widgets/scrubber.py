"""A step slider over recorded trajectories: :class:`TrajectoryScrubber`.

Each slider position is drawn once, to PNG bytes shown in an ``ipywidgets.Image``, and
kept. Inside a Jupyter kernel the frames not yet drawn are drawn while the kernel is idle,
nearest to the one on show first, so that moving the slider only swaps cached images and
keeps up with the keyboard; elsewhere (scripts, tests) a frame is drawn when first shown.
"""

from __future__ import annotations

import asyncio
import html
import math
import time
from collections.abc import Mapping

import ipywidgets as widgets
import torch
from torch import Tensor

from .. import viz
from ..trajectory import Trajectory
from .display import CSS, STYLE, Displayed

__all__ = ["TrajectoryScrubber"]


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


class TrajectoryScrubber(Displayed):
    """A step slider over a recorded trajectory (``record="all"``), or over several.

    For 2-D data each frame shows the states ``x_k`` (red) and the denoiser's
    predictions ``x0_hat`` (blue) over the density, with the paths so far of ``paths``
    samples; for images, a grid of ``x_k / sqrt(1 + sigma^2)`` beside a grid of
    ``x0_hat``. A mapping ``{label: Trajectory}`` is drawn ``layout="overlay"`` (2-D: all
    rules on one plot) or ``"side"`` (a panel per rule); runs with different step counts
    are indexed in proportion to the longest. The readout says ``step k/N``, sigma and
    the NFE spent to reach ``x_k``.

    ``density`` (2-D): a ``GaussianMixture``, an ``Empirical`` model or a tensor of data
    samples; by default ``model`` when it is one of those. ``density_sigma="data"``
    draws the data density, ``"current"`` the noised density ``p(x; sigma_k)``. Sample
    sets are smoothed by ``bandwidth`` (default 3 % of their extent). ``view="data"``
    keeps the view on the data (states far out at large sigma are counted in the
    title), ``"auto"`` widens it to the current states.

    ``prerender``: inside a Jupyter kernel, draw the remaining frames while the kernel is
    idle (each slider position is drawn once either way).
    """

    def __init__(self, traj=None, model=None, *, density=None, layout: str = "auto",
                 samples: int = 512, paths: int = 8, images: int = 16,
                 show_x0: bool | None = None, view: str = "data", density_sigma: str = "data",
                 bandwidth: float | None = None, resolution: int = 120, dpi: int = 96,
                 panel_size=(4.4, 4.2), continuous_update: bool = True,
                 title: str | None = None, prerender: bool = True):
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
        self.bandwidth, self.resolution, self.dpi = bandwidth, resolution, dpi
        self.panel_size, self.title, self.prerender = tuple(panel_size), title, prerender
        self._show_pending, self._shown_before = False, False
        self.trajectories: dict[str, Trajectory] = {}
        self._frames: dict[int, bytes] = {}
        self._grids: dict[float, tuple] = {}

        self.slider = widgets.IntSlider(value=0, min=0, max=0, description="step",
                                        continuous_update=continuous_update,
                                        layout=widgets.Layout(width="460px"), style=STYLE)
        self.play = widgets.Play(value=0, min=0, max=0, interval=500, description="play")
        self.link = widgets.jslink((self.play, "value"), (self.slider, "value"))
        self.readout = widgets.HTML(value="no trajectory yet")
        self.image = widgets.Image(format="png", layout=widgets.Layout(
            max_width="100%", align_self="flex-start"))  # natural size, not stretched
        self.slider.add_class(CSS["slider"])
        self.readout.add_class(CSS["readout"])
        self.image.add_class(CSS["image"])
        self.widget = widgets.VBox([widgets.HBox([self.play, self.slider]), self.readout,
                                    self.image])
        self.widget.add_class(CSS["scrubber"])
        self.slider.observe(self._on_slide, names="value")
        if traj is not None:
            self.set_trajectory(traj)

    # ------------------------------------------------------------------ state
    def set_trajectory(self, traj) -> None:
        """Show new trajectories (clears the frame cache) at their last step."""
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
        self._frames.clear()
        self._limits = self._view_limits()
        self.steps = max(t.steps for t in trajs.values())
        with self.slider.hold_trait_notifications():
            self.slider.max = self.play.max = self.steps
        self.slider.unobserve(self._on_slide, names="value")
        try:  # a user's slide may wait for more; a new run shows its last step at once
            self.slider.value = self.steps
        finally:
            self.slider.observe(self._on_slide, names="value")
        self.show(self.steps)
        if self.prerender:
            # a notebook's scrubbers are read top down; a panel's new run is looked at now
            IDLE_DRAWER.add(self, first=self._shown_before)
        self._shown_before = True

    @property
    def value(self) -> int:
        """The step on show."""
        return self.slider.value

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

    # ------------------------------------------------------------------ text
    def readout_text(self, k: int | None = None) -> str:
        """``step k/N · sigma ... · NFE ...`` (per rule when there are several)."""
        k = self.value if k is None else k
        if not self.trajectories:
            return "no trajectory yet"
        parts = [f"step {k}/{self.steps}"]
        for label, t in self.trajectories.items():
            _, _, sigma, nfe = self.state(label, k)
            i = self.index(label, k)
            own = f" ({i}/{t.steps})" if t.steps != self.steps else ""
            if len(self.trajectories) == 1:
                parts += [f"sigma {sigma:.4g}", f"NFE {nfe}"]
            else:
                parts.append(f"{label}{own}: sigma {sigma:.4g}, NFE {nfe}")
        return " · ".join(parts)

    # ------------------------------------------------------------------ drawing
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

    def figure(self, k: int | None = None):
        """The matplotlib figure of step ``k`` (default: the one on show)."""
        k = self.value if k is None else k
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

    def frame(self, k: int | None = None) -> bytes:
        """PNG bytes of step ``k`` (cached)."""
        k = self.value if k is None else k
        if k not in self._frames:
            self._frames[k] = viz.figure_png(self.figure(k), dpi=self.dpi)
        return self._frames[k]

    def show(self, k: int | None = None) -> None:
        """Draw step ``k`` into the image widget and update the readout."""
        k = self.value if k is None else k
        self.image.value = self.frame(k)
        self.readout.value = (f"<span style='font-family: monospace'>"
                              f"{html.escape(self.readout_text(k))}</span>")

    def _on_slide(self, change):
        if not self.trajectories:
            return
        IDLE_DRAWER.touched(self)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or change["new"] in self._frames:
            self.show(change["new"])  # drawn already: at once
        elif not self._show_pending:
            # a frame to draw: wait a moment, so a run of key presses draws only its last
            self._show_pending = True
            loop.call_later(SLIDE_DEBOUNCE, self._show_latest)

    def _show_latest(self) -> None:
        self._show_pending = False
        self.show()

    def missing_frame(self) -> int | None:
        """The undrawn step nearest to the one on show, or None when all are drawn."""
        if not self.trajectories:
            return None
        missing = [k for k in range(self.steps + 1) if k not in self._frames]
        return min(missing, key=lambda k: abs(k - self.value)) if missing else None


#: Seconds a slider position whose frame is not drawn yet waits for the next key press.
SLIDE_DEBOUNCE = 0.12


class IdleDrawer:
    """Draws the scrubbers' missing frames while a running event loop (a Jupyter kernel's)
    is idle: one frame at a time, the newest scrubber first, with ``gap`` seconds between
    frames and ``quiet`` seconds after a slider moved, so the kernel answers the slider
    (and runs cells) between two frames. With no running loop it does nothing: frames are
    then drawn when first shown. One drawer serves every scrubber, so several scrubbers
    in a notebook never draw more than one frame per turn of the loop. New scrubbers
    join the back of the queue (a notebook is read top down); a scrubber whose slider
    moved, or that shows a new run, goes to the front."""

    def __init__(self, gap: float = 0.05, quiet: float = 0.5):
        self.gap, self.quiet = gap, quiet
        self.queue: list[TrajectoryScrubber] = []
        self._scheduled = False
        self._last_touch = -math.inf

    def add(self, scrubber: TrajectoryScrubber, first: bool = True) -> None:
        """Queue ``scrubber``'s missing frames, ahead of the scrubbers queued before
        (``first``) or after them."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if scrubber in self.queue:
            self.queue.remove(scrubber)
        self.queue.insert(0 if first else len(self.queue), scrubber)
        if not self._scheduled:
            self._scheduled = True
            loop.call_later(self.gap, self._draw_one)

    def touched(self, scrubber: TrajectoryScrubber) -> None:
        """``scrubber``'s slider moved: the user is waiting on the kernel, so hold off for
        a moment; then draw this scrubber's frames first."""
        self._last_touch = time.monotonic()
        if scrubber.prerender:
            self.add(scrubber)

    def _draw_one(self) -> None:
        self._scheduled = False
        wait = self._last_touch + self.quiet - time.monotonic()
        if wait <= 0:
            while self.queue and self.queue[0].missing_frame() is None:
                self.queue.pop(0)
            if not self.queue:
                return
            scrubber = self.queue[0]
            try:
                scrubber.frame(scrubber.missing_frame())
            except Exception:  # noqa: BLE001 - shown, the frame raises where it is seen
                self.queue.pop(0)
        self._scheduled = True
        asyncio.get_running_loop().call_later(max(wait, self.gap), self._draw_one)


#: The one drawer of this process.
IDLE_DRAWER = IdleDrawer()
