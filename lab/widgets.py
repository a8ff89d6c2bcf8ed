"""Interactive panels for notebooks: ipywidgets over lab.sample, lab.metrics and lab.viz.

    from lab.widgets import Compare, RulePanel, TrajectoryScrubber

    TrajectoryScrubber(traj, model)                     # a step slider over one run
    TrajectoryScrubber({"euler": t1, "heun": t2}, model)  # several runs overlaid
    RulePanel(model, shape=(256, 2))                    # pick a rule and its parameters, Run
    Compare(model, ["euler", "heun", "momentum"], shape=(256, 2))  # same seed, side by side

A panel shows itself when it is a cell's last expression (or through ``display``).
Its widgets are attributes (``panel.steps``, ``panel.controls["beta"]``,
``panel.run_button``, ``scrubber.slider``, ``scrubber.readout``, ``scrubber.image``), so
code and tests drive a panel without a browser: set values, then ``panel.run()`` or
``panel.run_button.click()``. Sampling happens once per Run; the step slider only
indexes the cached trajectory (rendered frames are cached too).

Nothing here computes what lab/ already does: sampling is :func:`lab.sample` (its
``callback`` feeds the progress bar), the controls come from the rules' declared
parameters (:func:`lab.rules.describe`), metrics are :mod:`lab.metrics`, drawing is
:mod:`lab.viz`. In the browser the scrubber's parts carry the CSS classes in ``CSS``.
"""

from __future__ import annotations

import functools
import html
import math
import time
from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets
import torch
from torch import Tensor

from . import metrics, schedules, viz
from . import rules as _rules
from .rules import Param, Rule
from .sample import NonFiniteError, sample
from .seeding import noise as make_noise
from .trajectory import Trajectory

__all__ = ["TrajectoryScrubber", "RulePanel", "Compare", "param_control", "rule_controls",
           "control_values", "torch_optimizers", "default_schedule", "default_metric",
           "exact_error", "sliced_wasserstein_to", "fid_metric", "CSS"]

#: CSS classes on the scrubber's widgets, for browser tests and custom styling.
CSS = {"scrubber": "lab-scrubber", "slider": "lab-scrubber-slider",
       "readout": "lab-scrubber-readout", "image": "lab-scrubber-image",
       "panel": "lab-rule-panel", "compare": "lab-compare"}

_STYLE = {"description_width": "90px"}
_ERRORS = (NonFiniteError, ValueError, TypeError, RuntimeError)


def _display_bundle(widget, **kwargs):
    return widget._repr_mimebundle_(**kwargs)


# =========================================================================== scrubber

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


class TrajectoryScrubber:
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
    """

    def __init__(self, traj=None, model=None, *, density=None, layout: str = "auto",
                 samples: int = 512, paths: int = 8, images: int = 16,
                 show_x0: bool | None = None, view: str = "data", density_sigma: str = "data",
                 bandwidth: float | None = None, resolution: int = 120, dpi: int = 96,
                 panel_size=(4.4, 4.2), continuous_update: bool = True,
                 title: str | None = None):
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
        self.panel_size, self.title = tuple(panel_size), title
        self.trajectories: dict[str, Trajectory] = {}
        self._frames: dict[int, bytes] = {}
        self._grids: dict[float, tuple] = {}

        self.slider = widgets.IntSlider(value=0, min=0, max=0, description="step",
                                        continuous_update=continuous_update,
                                        layout=widgets.Layout(width="460px"), style=_STYLE)
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
        if self.slider.value == self.steps:
            self.show(self.steps)
        else:
            self.slider.value = self.steps  # the observer draws it

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
        nfe = t.nfe_per_step[i - 1] if i > 0 else 0
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
                ax.set_title(f"{label}: step {i}/{t.steps}, sigma {sigma:.3g}, NFE {nfe}{note}",
                             fontsize=9)
        for ax in list(axes.flat)[1 if overlay else len(labels):]:
            ax.set_visible(False)
        if overlay:
            _, _, sigma, _ = self.state(labels[0], k)
            note = f"; {outside_total} of {shown} outside the view" if outside_total else ""
            axes.flat[0].set_title(self.title or f"step {k}/{self.steps}, sigma {sigma:.3g}{note}",
                                   fontsize=9)
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
                                title=f"{label} {i}/{n}: x / sqrt(1+sigma^2), sigma {sigma:.3g}")
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
        if self.trajectories:
            self.show(change["new"])

    def _repr_mimebundle_(self, **kwargs):
        return _display_bundle(self.widget, **kwargs)


# =========================================================================== controls

def _nice_step(lo: float, hi: float, default: float) -> float:
    """About 200 slider positions, on a 10^k grid that holds ``default`` exactly."""
    span = hi - lo
    step = 10.0 ** math.floor(math.log10(span / 200)) if span > 0 else 0.1
    while step > 1e-9 and abs(default / step - round(default / step)) > 1e-6:
        step /= 10
    return step


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9))


def _number_control(name: str, default, p: Param):
    lo = p.low if p.low is not None else (0.0 if default >= 0 else 2.0 * default)
    hi = p.high if p.high is not None else max(2.0 * abs(default), 1.0)
    common = {"description": name, "style": _STYLE, "tooltip": p.doc,
              "layout": widgets.Layout(width="420px")}
    if p.integer:
        hi = hi if p.high is not None else max(4 * int(default), 10)
        return widgets.IntSlider(value=int(default), min=int(lo), max=int(hi),
                                 continuous_update=False, **common)
    if p.log:
        low_exp = math.log10(lo) if lo > 0 else math.floor(math.log10(abs(default) or 1e-8)) - 4
        high_exp = math.log10(hi) if hi > 0 else low_exp + 8
        return widgets.FloatLogSlider(value=float(default), base=10, min=low_exp, max=high_exp,
                                      step=0.05, readout_format=".2e",
                                      continuous_update=False, **common)
    step = _nice_step(lo, hi, float(default))
    if hi - lo > 100 * max(abs(float(default)), 1.0):
        # a slider over [0, 1e6] is unusable: type the number instead
        return widgets.BoundedFloatText(value=float(default), min=lo, max=hi, step=step,
                                        **common)
    return widgets.FloatSlider(value=float(default), min=lo, max=hi, step=step,
                               readout_format=f".{_decimals(step)}f", continuous_update=False,
                               **common)


def param_control(p: Param, value=None):
    """The control(s) for one declared parameter, set to ``value`` (default: its default).

    Numbers give a slider (``FloatLogSlider`` when ``p.log``, ``IntSlider`` when
    ``p.integer``; a bounded text box when the range spans many orders of magnitude);
    a tuple default gives a list with one slider per element (``betas[0]``, ...); a
    string default (a wrapper's inner rule) gives a dropdown of the deterministic rules.
    """
    value = p.default if value is None else value
    if isinstance(p.default, str):
        options = _rules.available("deterministic")
        name = value.name if isinstance(value, Rule) else value
        return widgets.Dropdown(options=options, value=name if name in options else p.default,
                                description=p.name, style=_STYLE, tooltip=p.doc)
    if isinstance(p.default, tuple):
        return [_number_control(f"{p.name}[{i}]", v, p) for i, v in enumerate(value)]
    return _number_control(p.name, value, p)


@functools.lru_cache(maxsize=1)
def torch_optimizers() -> tuple[str, ...]:
    """Names of the ``torch.optim`` optimisers that ``lab.rules.optim`` accepts."""
    names = []
    for name in sorted(dir(torch.optim)):
        cls = getattr(torch.optim, name)
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) \
                and cls is not torch.optim.Optimizer:
            try:  # the adapter accepts it, and it steps a dense 1-element parameter
                _rules.optim(name)
                x = torch.zeros(1, requires_grad=True)
                x.grad = torch.ones(1)
                cls([x], lr=0.1).step()
            except (ValueError, TypeError, RuntimeError):
                continue
            names.append(name)
    return tuple(names)


def rule_controls(name: str, values: Mapping | None = None) -> dict[str, object]:
    """``{param name: control or list of controls}`` for the registered rule ``name``,
    from :func:`lab.rules.describe`. The torch.optim adapter (``"optim"``) also gets an
    ``optimizer`` dropdown, since its optimiser class is a constructor argument rather
    than a declared parameter."""
    values = dict(values or {})
    out: dict[str, object] = {}
    if name == "optim":
        out["optimizer"] = widgets.Dropdown(options=torch_optimizers(),
                                            value=values.get("optimizer", "SGD"),
                                            description="optimizer", style=_STYLE)
    for p in _rules.describe(name):
        out[p.name] = param_control(p, values.get(p.name))
    return out


def control_values(controls: Mapping[str, object]) -> dict:
    """The values of :func:`rule_controls` as keyword arguments (tuples rebuilt)."""
    return {k: tuple(w.value for w in c) if isinstance(c, list) else c.value
            for k, c in controls.items()}


def _make_rule(name: str, values: Mapping) -> Rule:
    values = dict(values)
    if name == "optim":
        return _rules.optim(values.pop("optimizer", "SGD"), **values)
    return _rules.get(name, **values)


def default_schedule(model, sigma_min: float = 0.002, sigma_max: float = 80.0,
                     rho: float = 7.0) -> Callable[[int], Tensor]:
    """``n -> karras(n)`` within the model's supported range (EDM defaults otherwise)."""
    lo = max(float(getattr(model, "sigma_min", 0.0) or 0.0), sigma_min)
    hi = min(float(getattr(model, "sigma_max", math.inf)), sigma_max)
    return functools.partial(schedules.karras, sigma_min=lo, sigma_max=hi, rho=rho)


def _sample_shape(model, n: int | None) -> tuple[int, ...]:
    shape = getattr(model, "sample_shape", None)
    if shape is None:
        raise ValueError("pass shape=(B, ...) or noise=: the model does not say its sample "
                         "shape")
    shape = tuple(shape)
    if n is None:
        n = 16 if len(shape) == 3 else 256
    return (n, *shape)


class _Sampler:
    """What RulePanel and Compare share: starting noise, seed, schedule, progress."""

    def _setup(self, model, noise, shape, n, seed, schedule, sigma_estimate, dtype):
        self.model = model
        self.fixed_noise = noise
        if noise is not None:
            if not isinstance(noise, Tensor):
                raise TypeError(f"noise must be a tensor, got {type(noise).__name__}")
            self.shape = tuple(noise.shape)
        else:
            self.shape = tuple(shape) if shape is not None else _sample_shape(model, n)
        self.dtype = dtype
        self.schedule = schedule or default_schedule(model)
        self.seed = widgets.IntText(value=seed, description="seed", style=_STYLE,
                                    layout=widgets.Layout(width="180px"))
        self.run_button = widgets.Button(description="Run", button_style="primary",
                                         icon="play", tooltip="sample with these settings")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="sampling",
                                            style=_STYLE)
        self.status = widgets.HTML(value="")
        if isinstance(sigma_estimate, (list, tuple)):
            options = [("schedule" if s is None else str(s), s) for s in sigma_estimate]
            self.sigma_from = widgets.Dropdown(options=options, value=sigma_estimate[0],
                                               description="sigma from", style=_STYLE)
        else:
            self.sigma_from = None
            self._sigma_estimate = sigma_estimate
        self.run_button.on_click(self._on_run)

    @property
    def sigma_estimate(self):
        return self.sigma_from.value if self.sigma_from is not None else self._sigma_estimate

    def start(self, sigmas: Tensor) -> Tensor:
        """The starting state at ``sigmas[0]``: the fixed noise or ``lab.noise(shape,
        seed)``, times ``sigmas[0]``."""
        z = self.fixed_noise if self.fixed_noise is not None else make_noise(
            self.shape, int(self.seed.value), dtype=self.dtype)
        return z * float(sigmas[0])

    def _sample(self, rule: Rule, sigmas: Tensor, tick: Callable) -> Trajectory:
        return sample(self.model, self.start(sigmas), sigmas, rule, seed=int(self.seed.value),
                      callback=tick, sigma_estimate=self.sigma_estimate)

    def _on_run(self, _button=None):
        self.run_button.disabled = True
        try:
            self.run()
        except _ERRORS as err:
            self.progress.bar_style = "danger"
            self.status.value = (f"<span style='color: #b00'>{type(err).__name__}: "
                                 f"{html.escape(str(err))}</span>")
        finally:
            self.run_button.disabled = False

    def _repr_mimebundle_(self, **kwargs):
        return _display_bundle(self.widget, **kwargs)


# =========================================================================== RulePanel

class RulePanel(_Sampler):
    """Pick a rule, set its declared parameters and the number of steps, press Run.

    ``model``: any denoiser. The start is ``noise`` (unit variance, ``(B, ...)``) or
    ``lab.noise(shape, seed)`` with ``shape`` defaulting to ``(n, *model.sample_shape)``
    (n = 256 points or 16 images); it is multiplied by the schedule's first sigma. The
    seed box also seeds the stochastic rules. ``schedule``: ``n -> sigmas`` (default
    Karras within the model's range). ``sigma_estimate`` goes to :func:`lab.sample`; a
    list of choices (e.g. ``[None, "rms"]``) gives a dropdown. ``rules`` restricts the
    rule dropdown; ``params`` sets the first rule's initial values. The result goes to
    ``panel.scrubber`` (a :class:`TrajectoryScrubber`; ``density`` and
    ``scrubber_options`` are passed to it) and ``panel.traj``. ``run_now`` samples once
    at construction.
    """

    def __init__(self, model, noise: Tensor | None = None, *, shape=None, n: int | None = None,
                 seed: int = 0, rule: str = "euler", params: Mapping | None = None,
                 steps: int = 10, max_steps: int = 100, rules: Sequence[str] | None = None,
                 schedule: Callable[[int], Tensor] | None = None, sigma_estimate=None,
                 dtype=torch.float32, density=None, scrubber_options: Mapping | None = None,
                 run_now: bool = True):
        self._setup(model, noise, shape, n, seed, schedule, sigma_estimate, dtype)
        names = list(rules) if rules is not None else _rules.available()
        if rule not in names:
            raise ValueError(f"rule {rule!r} is not among the offered rules {names}")
        self.rule_dropdown = widgets.Dropdown(options=names, value=rule, description="rule",
                                              style=_STYLE)
        self.controls = rule_controls(rule, params)
        self.params_box = widgets.VBox(self._control_widgets())
        self.steps = widgets.IntSlider(value=steps, min=1, max=max(max_steps, steps),
                                       description="steps", continuous_update=False,
                                       style=_STYLE, layout=widgets.Layout(width="420px"))
        self.cost = widgets.HTML()
        self.traj: Trajectory | None = None
        self.scrubber = TrajectoryScrubber(None, model, density=density,
                                           **dict(scrubber_options or {}))
        top = [self.rule_dropdown] + ([self.sigma_from] if self.sigma_from else [])
        self.widget = widgets.VBox([
            widgets.HBox(top), self.params_box, widgets.HBox([self.steps, self.cost]),
            widgets.HBox([self.seed, self.run_button, self.progress, self.status]),
            self.scrubber.widget])
        self.widget.add_class(CSS["panel"])
        self.rule_dropdown.observe(self._on_rule, names="value")
        self.steps.observe(self._update_cost, names="value")
        self._watch_controls()
        self._update_cost()
        if run_now:
            self._on_run()

    def _control_widgets(self) -> list:
        out = []
        for c in self.controls.values():
            out.extend(c if isinstance(c, list) else [c])
        return out

    def _watch_controls(self):
        for w in self._control_widgets():
            w.observe(self._update_cost, names="value")

    def _on_rule(self, change):
        self.controls = rule_controls(change["new"])
        self.params_box.children = self._control_widgets()
        self._watch_controls()
        self._update_cost()

    def values(self) -> dict:
        """The parameter values set in the controls."""
        return control_values(self.controls)

    def rule(self) -> Rule:
        """The rule the controls describe."""
        return _make_rule(self.rule_dropdown.value, self.values())

    def sigmas(self) -> Tensor:
        return self.schedule(int(self.steps.value))

    def _update_cost(self, _change=None):
        try:
            nfe = _rules.nfe(self.rule(), self.sigmas())
            self.cost.value = f"&nbsp;{self.steps.value} steps = {nfe} model calls (NFE)"
        except _ERRORS as err:
            self.cost.value = f"<span style='color: #b00'>{html.escape(str(err))}</span>"

    def run(self) -> Trajectory:
        """Sample with the current settings, show the result, return the trajectory."""
        rule, sigmas = self.rule(), self.sigmas()
        n = len(sigmas) - 1
        self.progress.bar_style = ""
        self.progress.max, self.progress.value = n, 0
        self.status.value = f"{rule.config_name} ..."
        start = time.perf_counter()

        def tick(step):
            self.progress.value = step.index + 1

        traj = self._sample(rule, sigmas, tick)
        seconds = time.perf_counter() - start
        self.traj = traj
        self.scrubber.set_trajectory({rule.config_name: traj})
        self.progress.bar_style = "success"
        self.status.value = (f"{html.escape(rule.config_name)}: {n} steps, {traj.nfe} NFE, "
                             f"sampled in {seconds:.2f} s")
        return traj


# =========================================================================== metrics

def exact_error(model) -> Callable[[Trajectory], float]:
    """Max abs difference between a run's end and the exact ODE flow of its start:
    ``model.solve`` (a ``lab.models.Gaussian``) or else :func:`lab.metrics.ode_reference`
    (slow: a tight-tolerance solve per call)."""
    def error(traj: Trajectory) -> float:
        start, s0, s1 = traj.xs[0], float(traj.sigmas[0]), float(traj.sigmas[-1])
        exact = model.solve(start, s0, s1) if hasattr(model, "solve") else \
            metrics.ode_reference(model, start.to(torch.float64), s0, s1)
        return metrics.max_abs_error(traj.x, exact)

    return error


def sliced_wasserstein_to(reference: Tensor, projections: int = 256
                          ) -> Callable[[Trajectory], float]:
    """Sliced Wasserstein distance of a run's samples to ``reference`` samples."""
    def sw(traj: Trajectory) -> float:
        return metrics.sliced_wasserstein(traj.x, reference, projections=projections)

    return sw


def fid_metric(reference="fashion-test") -> Callable[[Trajectory], float]:
    """FID of a run's images (clamped to [-1, 1]) against ``reference``
    (:func:`lab.metrics.fid`); on a small batch it is biased upward: compare rules at the
    same count only."""
    def fid(traj: Trajectory) -> float:
        return metrics.fid(traj.x.clamp(-1, 1), reference)

    return fid


def default_metric(model, shape: Sequence[int], reference=None, seed: int = 0):
    """``(name, metric)`` for a model, or ``(None, None)`` when nothing fits:

    - a ``Gaussian`` (it has ``solve``): max error against the exact ODE solution;
    - 2-D samples: sliced Wasserstein to ``reference`` samples, else to the model's own
      exact samples (mixtures) or data (``Empirical``);
    - Fashion-MNIST-shaped images ``(1, 28, 28)``: FID on the batch against ``reference``
      (images) or the shipped ``fashion-test`` features, when they exist.
    """
    per_sample = tuple(shape[1:])
    n = int(shape[0])
    if hasattr(model, "solve"):
        return "max |x - exact ODE solution|", exact_error(model)
    if math.prod(per_sample) == 2:
        if reference is None and hasattr(model, "sample"):
            reference = model.sample(max(n, 512), seed=seed + 1)
        if reference is None and isinstance(getattr(model, "data", None), Tensor):
            reference = model.data
        if reference is not None:
            return "sliced W2 to reference", sliced_wasserstein_to(reference)
        return None, None
    if per_sample == (1, 28, 28):
        if isinstance(reference, Tensor):
            return f"FID ({n} samples)", fid_metric(reference)
        try:
            from . import fid as fid_module

            if "fashion-test" in fid_module.references():
                return f"FID ({n} samples)", fid_metric("fashion-test")
        except ImportError:  # pragma: no cover - the module ships with the lab
            pass
    return None, None


# =========================================================================== Compare

class Compare(_Sampler):
    """The same starting noise (and seed) under two or more rules, side by side.

    ``rules``: names, Rule objects, or a mapping ``label -> name or Rule``. Runs are
    matched by step count (``match="steps"``) or by model calls (``match="NFE"``: each
    rule gets the most steps that fit, :func:`lab.rules.steps_for_budget`); the slider
    sets the count. The table shows steps, NFE, ``metric(traj) -> float`` and time;
    ``metric="auto"`` picks :func:`default_metric` (exact error for a Gaussian, sliced
    Wasserstein for 2-D, FID for Fashion-MNIST images when the reference ships);
    ``metric=None`` shows none. The runs go to a :class:`TrajectoryScrubber`
    (``compare.scrubber``; side by side unless ``layout="overlay"``) and
    ``compare.trajectories``; the rows to ``compare.rows``.
    """

    def __init__(self, model, rules: Sequence | Mapping, noise: Tensor | None = None, *,
                 shape=None, n: int | None = None, seed: int = 0, steps: int = 10,
                 match: str = "steps", max_amount: int = 100,
                 schedule: Callable[[int], Tensor] | None = None, metric="auto",
                 metric_name: str | None = None, reference=None, sigma_estimate=None,
                 dtype=torch.float32, density=None, layout: str = "side",
                 scrubber_options: Mapping | None = None, run_now: bool = True):
        self._setup(model, noise, shape, n, seed, schedule, sigma_estimate, dtype)
        self.rules = self._label_rules(rules)
        if len(self.rules) < 1:
            raise ValueError("give at least one rule")
        if match not in ("steps", "NFE"):
            raise ValueError(f"match must be 'steps' or 'NFE', got {match!r}")
        if metric == "auto":
            name, metric = default_metric(model, self.shape, reference, seed)
            metric_name = metric_name or name
        elif metric is not None and not callable(metric):
            raise TypeError("metric must be 'auto', None or a callable traj -> float")
        self.metric = metric
        self.metric_name = metric_name or (getattr(metric, "__name__", "metric")
                                           if metric else None)
        self.match = widgets.ToggleButtons(options=["steps", "NFE"], value=match,
                                           description="match", style=_STYLE)
        self.amount = widgets.IntSlider(value=steps, min=1, max=max(max_amount, steps),
                                        description=match, continuous_update=False,
                                        style=_STYLE, layout=widgets.Layout(width="420px"))
        self.match.observe(lambda c: setattr(self.amount, "description", c["new"]),
                           names="value")
        self.table = widgets.HTML()
        self.rows: list[dict] = []
        self.trajectories: dict[str, Trajectory] = {}
        self.scrubber = TrajectoryScrubber(None, model, density=density, layout=layout,
                                           **dict(scrubber_options or {}))
        self.widget = widgets.VBox([
            widgets.HBox([self.match, self.amount] + ([self.sigma_from] if self.sigma_from
                                                       else [])),
            widgets.HBox([self.seed, self.run_button, self.progress, self.status]),
            self.table, self.scrubber.widget])
        self.widget.add_class(CSS["compare"])
        if run_now:
            self._on_run()

    @staticmethod
    def _label_rules(spec) -> dict[str, Rule]:
        items = spec.items() if isinstance(spec, Mapping) else [(None, r) for r in spec]
        out: dict[str, Rule] = {}
        for label, r in items:
            r = _rules.resolve(r)
            label = label or r.config_name
            base, k = label, 2
            while label in out:
                label, k = f"{base} #{k}", k + 1
            out[label] = r
        return out

    def plan(self) -> dict[str, int | None]:
        """Steps per rule for the current setting (None: one step costs more than the
        budget)."""
        amount = int(self.amount.value)
        if self.match.value == "steps":
            return {label: amount for label in self.rules}
        return {label: _rules.steps_for_budget(r, amount, self.schedule, max_steps=10 * amount)
                for label, r in self.rules.items()}

    def run(self) -> dict[str, Trajectory]:
        """Run every rule from the same start; fill the table and the scrubber."""
        plan = self.plan()
        self.progress.bar_style = ""
        self.progress.max = max(1, sum(n for n in plan.values() if n))
        self.progress.value = 0
        rows, trajs = [], {}
        done = 0

        def tick(step):
            self.progress.value = done + step.index + 1

        for label, r in self.rules.items():
            n = plan[label]
            row = {"rule": label, "steps": n, "nfe": None, "metric": None, "seconds": None,
                   "status": "ok"}
            if n is None:
                row["status"] = "does not fit the budget"
                rows.append(row)
                continue
            self.status.value = f"{html.escape(label)} ..."
            start = time.perf_counter()
            try:
                traj = self._sample(r, self.schedule(n), tick)
            except NonFiniteError as err:
                row["status"] = f"non-finite: {err}"
                rows.append(row)
                done += n
                continue
            row.update(nfe=traj.nfe, seconds=time.perf_counter() - start)
            if self.metric is not None:
                row["metric"] = float(self.metric(traj))
            trajs[label] = traj
            rows.append(row)
            done += n
        self.rows, self.trajectories = rows, trajs
        self.table.value = self._table_html(rows)
        if trajs:
            self.scrubber.set_trajectory(trajs)
        self.progress.bar_style = "success"
        self.status.value = f"{len(trajs)} of {len(rows)} rules ran"
        return trajs

    def _table_html(self, rows) -> str:
        head = ["rule", "steps", "NFE", self.metric_name or "metric", "seconds", "status"]
        cells = "".join(f"<th style='padding: 0 8px'>{html.escape(h)}</th>" for h in head)
        body = []
        for r in rows:
            vals = [r["rule"], r["steps"], r["nfe"],
                    None if r["metric"] is None else f"{r['metric']:.4g}",
                    None if r["seconds"] is None else f"{r['seconds']:.2f}", r["status"]]
            body.append("<tr>" + "".join(
                f"<td style='padding: 0 8px'>{html.escape('-' if v is None else str(v))}</td>"
                for v in vals) + "</tr>")
        return f"<table><tr>{cells}</tr>{''.join(body)}</table>"
