"""Panels for guided sampling, each a :class:`~lab.widgets.panels.RulePanel` whose
denoiser is rebuilt from its guidance controls for every run:

    GuidancePanel(cm)          # classifier-free guidance: scale, class, negative, interval
    Img2ImgPanel(cm, images)   # SDEdit on a given image: strength, target class, scale
    LossPanel(cm)              # loss guidance: brightness or a class's log-probability

They keep RulePanel's rule dropdown and parameter controls (``heavy_ball``'s ``beta``,
``ghvb``'s ``r``), steps, seed, Run button and scrubber. With ``live=True`` every control
reruns the panel when let go; ``panel.update(scale=8, rule="heavy_ball", beta=0.2)`` sets
several and runs once. ``panel.stats`` holds the last run's figures (``panel.stats_box``).
"""

from __future__ import annotations

import html
import math
import time

import ipywidgets as widgets
import torch
from torch import Tensor

from .. import guidance, metrics, viz
from ..data import CLASSES
from ..sample import sample
from ..tensors import rms
from ..trajectory import Trajectory
from ..viz.curves import one_two_five
from .display import STYLE
from .panels import RulePanel

__all__ = ["GuidancePanel", "Img2ImgPanel", "LossPanel", "GUIDED_RULES", "EACH_CLASS",
           "NULL_CLASS", "GUIDANCE_CSS", "class_ids", "interval_choices"]

#: The rules the panels offer by default: the plain step, the solver, momentum on both.
GUIDED_RULES = ["euler", "dpmpp_2m", "heavy_ball", "ghvb", "momentum", "extrapolate", "heun"]
#: Class dropdown entries besides the names (strings: a Dropdown shows None as blank).
EACH_CLASS, NULL_CLASS = "each class in turn", "none (null class)"
#: CSS classes on the guidance controls, for browser tests.
GUIDANCE_CSS = {"scale": "lab-guidance-scale", "stats": "lab-guidance-stats",
                "strength": "lab-img2img-strength", "loss_plot": "lab-loss-plot"}
_WIDE = widgets.Layout(width="420px")
#: The second, wider limit of the out-of-range measure.
FAR = 1.1
#: Seconds between redraws of a live plot while a run goes (the end is always drawn).
LIVE_REDRAW = 0.5


def class_ids(choice: str, n: int) -> Tensor | None:
    """The ``(n,)`` class ids a class dropdown's ``choice`` stands for: a class name, every
    class in turn (``EACH_CLASS``), or None for the null class (``NULL_CLASS``)."""
    if choice == NULL_CLASS:
        return None
    if choice == EACH_CLASS:
        return guidance.balanced_classes(n, len(CLASSES))
    if choice not in CLASSES:
        raise ValueError(f"unknown class {choice!r}; choose one of {list(CLASSES)}, "
                         f"{EACH_CLASS!r} or {NULL_CLASS!r}")
    return torch.full((n,), CLASSES.index(choice))


def interval_choices(sigma_min: float = 0.002, sigma_max: float = 80.0):
    """``(label, sigma)`` options of the interval slider: the model's range, with the
    1-2-5 values (0.01, 0.02, 0.05, 0.1, ...) between its ends."""
    inner = [v for v in one_two_five(sigma_min, sigma_max) if sigma_min < v < sigma_max]
    return [(f"{s:g}", float(s)) for s in (sigma_min, *inner, sigma_max)]


def _class_dropdown(description: str, options, value: str):
    return widgets.Dropdown(options=list(options), value=value, description=description,
                            style=STYLE)


def _scale_slider(value: float, high: float):
    return widgets.FloatSlider(value=value, min=0.0, max=max(high, value), step=0.5,
                               description="scale", continuous_update=False, style=STYLE,
                               layout=_WIDE)


def _rate(count: int, total: int) -> str:
    return f"{count}/{total} ({100 * count / max(total, 1):.0f} %)"


class _GuidedPanel(RulePanel):
    """RulePanel whose model is ``self.denoiser()``, rebuilt per run; subclasses add their
    controls to ``self.guidance_controls`` (shown above the rule) and fill ``self.stats``."""

    def _build(self, model, noise, n, seed, rule, params, steps, rules, live, run_now,
               **panel_options):
        self.live = live
        self.stats: dict = {}
        self.stats_box = widgets.HTML(value="")
        self.stats_box.add_class(GUIDANCE_CSS["stats"])
        super().__init__(model, noise, n=n, seed=seed, rule=rule, params=params, steps=steps,
                         rules=list(rules), run_now=False, **panel_options)
        children = list(self.widget.children)
        self.widget.children = (*self.guidance_rows(), *children[:-1], self.stats_box,
                                *self.result_rows(), children[-1])
        if live:
            for w in (*self.guidance_controls, self.rule_dropdown, self.steps, self.seed):
                w.observe(self._rerun, names="value")
        if run_now:
            self._on_run()

    guidance_controls: tuple = ()

    def guidance_rows(self) -> list:
        return [widgets.HBox(list(self.guidance_controls))]

    def result_rows(self) -> list:
        return []

    def _watch_controls(self):
        super()._watch_controls()
        if getattr(self, "live", False):
            for w in self._control_widgets():
                w.observe(self._rerun, names="value")

    def _rerun(self, _change=None):
        if not self._holding:
            self._on_run()

    _holding = False

    def update(self, **values) -> dict:
        """Set controls by name (a guidance control's attribute name, ``rule``, ``steps``,
        ``seed`` or a rule parameter), run once, return ``panel.stats``. Errors are raised,
        not shown: the notebooks check claims with it."""
        self._holding = True
        try:
            if "rule" in values:
                self.rule_dropdown.value = values.pop("rule")
            for name, value in values.items():
                if isinstance(getattr(self, name, None), widgets.ValueWidget):
                    getattr(self, name).value = value
                elif name in self.controls:
                    self.controls[name].value = value
                else:
                    own = [k for k, v in vars(self).items()
                           if any(v is w for w in self.guidance_controls)]
                    raise ValueError(f"{type(self).__name__} has no control {name!r}; its "
                                     f"controls: {own}, rule, steps, seed, {list(self.controls)}")
        finally:
            self._holding = False
        self.run()
        return self.stats

    def denoiser(self):
        raise NotImplementedError

    def _sample(self, rule, sigmas, tick) -> Trajectory:
        self.guided = self.denoiser()
        return sample(self.guided, self.start(sigmas), sigmas, rule,
                      seed=int(self.seed.value), callback=tick)

    def run(self) -> Trajectory:
        traj = super().run()
        self.stats = self.measure(traj)
        self.stats_box.value = " · ".join(f"{html.escape(k)}: <b>{html.escape(str(v))}</b>"
                                          for k, v in self.describe().items())
        return traj

    def measure(self, traj: Trajectory) -> dict:
        """Out-of-range pixels of the final samples before clamping (divergence artifacts):
        beyond [-1, 1], and beyond ``[-FAR, FAR]`` (the data's background sits at -1, so a
        hair of noise puts many pixels just past it)."""
        return metrics.out_of_range(traj.x, far=FAR)

    def describe(self) -> dict[str, str]:
        s, n = self.stats, self.shape[0]
        return {"pixels beyond [-1, 1] before clamping": f"{100 * s['pixels_out']:.1f} %",
                f"beyond [-{FAR:g}, {FAR:g}]": f"{100 * s['pixels_far']:.2f} %",
                "samples with any beyond [-1, 1]": _rate(round(s["samples_out"] * n), n),
                "mean largest |pixel|": f"{s['max_abs']:.3g}"}


class GuidancePanel(_GuidedPanel):
    """Classifier-free guidance of a class-conditional model: sliders for the scale, the
    class (a name, each class in turn, or the null class), a negative class (replacing the
    null class: class "none" with negative k is "anything but k") and the guidance
    interval (the full range is no interval), besides RulePanel's rule, parameters and
    steps. ``panel.stats``: accuracy of ``classifier`` on the intended class (when there
    is one), the share labelled as the negative class (when there is one), out-of-range
    pixels before clamping, and the network's evaluations per sample."""

    def __init__(self, model, noise: Tensor | None = None, *, n: int | None = None,
                 seed: int = 0, scale: float = 3.0, cls: str = EACH_CLASS,
                 negative: str = NULL_CLASS, interval: tuple[float, float] | None = None,
                 rule: str = "dpmpp_2m", params=None, steps: int = 10,
                 rules=GUIDED_RULES, scale_max: float = 15.0,
                 classifier="fashion-classifier", live: bool = True, run_now: bool = True,
                 **panel_options):
        if not getattr(model, "conditional", False):
            raise TypeError("GuidancePanel guides a class-conditional model (cm(x, sigma, "
                            "cond), e.g. lab.load('fashion-edm-cond')); use LossPanel to "
                            "steer an unconditional one")
        self.classifier = classifier
        self.scale = _scale_slider(scale, scale_max)
        self.scale.add_class(GUIDANCE_CSS["scale"])
        self.cls = _class_dropdown("class", [EACH_CLASS, *CLASSES, NULL_CLASS], cls)
        self.negative = _class_dropdown("negative", [NULL_CLASS, *CLASSES], negative)
        choices = interval_choices(max(float(model.sigma_min), 0.002),
                                   min(float(model.sigma_max), 80.0))
        self.interval = widgets.SelectionRangeSlider(
            options=choices, index=(0, len(choices) - 1), description="interval",
            continuous_update=False, style=STYLE, layout=_WIDE,
            tooltip="guidance only for sigma in [lo, hi]; the full range is no interval")
        if interval is not None:
            self.set_interval(*interval)
        self.guidance_controls = (self.scale, self.cls, self.negative, self.interval)
        self._build(model, noise, n, seed, rule, params, steps, rules, live, run_now,
                    **panel_options)

    def guidance_rows(self) -> list:
        return [widgets.HBox([self.scale, self.cls]),
                widgets.HBox([self.interval, self.negative])]

    def set_interval(self, lo: float, hi: float) -> None:
        """Move the interval slider to the options nearest ``lo`` and ``hi`` (in log)."""
        values = [v for _, v in self.interval.options]

        def nearest(s):
            return min(range(len(values)),
                       key=lambda i: abs(math.log(values[i]) - math.log(max(s, 1e-12))))

        self.interval.index = (nearest(lo), nearest(hi))

    def update(self, **values) -> dict:
        """As :meth:`_GuidedPanel.update`; ``interval=(lo, hi)`` moves the interval slider
        (:meth:`set_interval`), ``interval=None`` sets the full range (no interval)."""
        if "interval" in values:
            interval = values.pop("interval")
            self._holding = True
            try:
                if interval is None:
                    self.interval.index = (0, len(self.interval.options) - 1)
                else:
                    self.set_interval(*interval)
            finally:
                self._holding = False
        return super().update(**values)

    def guidance_interval(self) -> tuple[float, float] | None:
        lo, hi = self.interval.index
        if (lo, hi) == (0, len(self.interval.options) - 1):
            return None
        return self.interval.value

    def conditions(self) -> tuple[Tensor | None, Tensor | None]:
        """``(cond, negative)`` class ids for the batch, as :func:`lab.guidance.cfg` takes."""
        n = self.shape[0]
        return class_ids(self.cls.value, n), class_ids(self.negative.value, n)

    def denoiser(self):
        cond, negative = self.conditions()
        return guidance.cfg(self.model, cond, float(self.scale.value), negative=negative,
                            interval=self.guidance_interval())

    def measure(self, traj: Trajectory) -> dict:
        cond, negative = self.conditions()
        stats = dict(super().measure(traj))
        labels = metrics.classify(traj.x, self.classifier)
        if cond is not None:
            stats["accuracy"] = float((labels == cond).double().mean())
        if negative is not None:
            stats["negative_share"] = float((labels == negative).double().mean())
        stats["labels"] = labels
        stats["network_evaluations"] = self.guided.network_evaluations / self.shape[0]
        return stats

    def describe(self) -> dict[str, str]:
        s, n = self.stats, self.shape[0]
        out = {}
        if "accuracy" in s:
            out["classified as the intended class"] = _rate(round(s["accuracy"] * n), n)
        if "negative_share" in s:
            out["classified as the negative class"] = _rate(round(s["negative_share"] * n), n)
        out.update(super().describe())
        out["network evaluations per sample"] = f"{s['network_evaluations']:g}"
        out["labels"] = " ".join(CLASSES[int(k)].split("/")[0] for k in s["labels"])
        return out


class Img2ImgPanel(_GuidedPanel):
    """img2img (SDEdit, :func:`lab.img2img`) on one of ``images`` (``(M, 1, 28, 28)`` in
    [-1, 1]): ``n`` variations of the picked image (different noise each), a strength
    slider (diffusers' meaning: the share of the schedule that is run), and, for a
    conditional model, a target class and guidance scale (null class: the unconditional
    model). ``panel.stats``: the rms change of each variation from the image and the
    classifier's labels."""

    def __init__(self, model, images: Tensor, *, index: int = 0, n: int = 4, seed: int = 0,
                 strength: float = 0.5, cls: str = NULL_CLASS, scale: float = 1.0,
                 rule: str = "dpmpp_2m", params=None, steps: int = 10, rules=GUIDED_RULES,
                 scale_max: float = 10.0, classifier="fashion-classifier",
                 live: bool = True, run_now: bool = True, **panel_options):
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise ValueError("images must be a tensor (M, 1, 28, 28) in [-1, 1], e.g. "
                             "lab.data.fashion_mnist('test')[0][:16]")
        self.images, self.classifier = images, classifier
        self.index = widgets.IntSlider(value=index, min=0, max=len(images) - 1,
                                       description="image", continuous_update=False,
                                       style=STYLE, layout=_WIDE)
        self.strength = widgets.FloatSlider(value=strength, min=0.05, max=1.0, step=0.05,
                                            description="strength", continuous_update=False,
                                            style=STYLE, layout=_WIDE)
        self.strength.add_class(GUIDANCE_CSS["strength"])
        self.original = widgets.Image(format="png")
        controls = [self.index, self.strength]
        self.conditional = bool(getattr(model, "conditional", False))
        if self.conditional:
            self.cls = _class_dropdown("target", [NULL_CLASS, *CLASSES], cls)
            self.scale = _scale_slider(scale, scale_max)
            controls += [self.cls, self.scale]
        self.guidance_controls = tuple(controls)
        self.index.observe(self._show_original, names="value")
        self._show_original()
        self._build(model, None, None, seed, rule, params, steps, rules, live, run_now,
                    shape=(n, *images.shape[1:]), **panel_options)

    def guidance_rows(self) -> list:
        sliders = widgets.VBox([widgets.HBox(list(self.guidance_controls[:2])),
                                widgets.HBox(list(self.guidance_controls[2:]))])
        return [widgets.HBox([sliders, self.original])]

    def image(self) -> Tensor:
        """The picked image, repeated once per variation."""
        return self.images[int(self.index.value)].expand(self.shape).clone()

    def _show_original(self, _change=None):
        fig, ax = viz.new_figure(1, 1, panel_size=(1.4, 1.5))
        viz.plot_image_grid(ax, self.images[int(self.index.value)][None], title="image",
                            fontsize=8)
        self.original.value = viz.figure_png(fig, dpi=72)

    def denoiser(self):
        if not self.conditional:
            return self.model
        cond = class_ids(self.cls.value, self.shape[0])
        return guidance.cfg(self.model, cond, float(self.scale.value))

    def _sample(self, rule, sigmas, tick) -> Trajectory:
        self.guided = self.denoiser()
        return guidance.img2img(self.guided, self.image(), float(self.strength.value), rule,
                                sigmas=sigmas, seed=int(self.seed.value), callback=tick)

    def run(self) -> Trajectory:
        traj = super().run()
        self.progress.value = self.progress.max  # it ran the last traj.steps of them
        self.status.value += f" (strength {self.strength.value:g}: the last {traj.steps} steps)"
        return traj

    def measure(self, traj: Trajectory) -> dict:
        change = rms(traj.x.clamp(-1, 1) - self.image())
        return {**super().measure(traj), "rms_change": change,
                "labels": metrics.classify(traj.x, self.classifier),
                "image_label": int(metrics.classify(self.image()[:1], self.classifier)[0])}

    def describe(self) -> dict[str, str]:
        s = self.stats
        return {"rms change from the image": " ".join(f"{v:.3f}" for v in s["rms_change"]),
                "classified as": (CLASSES[s["image_label"]] + " (the image) -> "
                                  + ", ".join(CLASSES[int(k)] for k in s["labels"])),
                **super().describe()}


#: The losses :class:`LossPanel` offers (see :meth:`LossPanel.loss_fn`).
LOSSES = ("brightness", "class log-prob")


class LossPanel(_GuidedPanel):
    """Loss guidance (:func:`lab.guidance.loss`): ``brightness`` toward a target mean
    pixel, or ``-log p(class)`` under ``classifier``, and its scale; a conditional model is
    used at its null class. The loss of ``x0_hat`` along the path is drawn while the run
    goes (``panel.loss_plot``), beside the unguided path from the same noise (sampled once
    per seed, steps and rule). ``panel.stats``: both curves, the samples' losses."""

    def __init__(self, model, noise: Tensor | None = None, *, n: int | None = None,
                 seed: int = 0, loss: str = "brightness", target: float = 0.5,
                 cls: str = CLASSES[0], scale: float = 30.0, rule: str = "dpmpp_2m",
                 params=None, steps: int = 10, rules=GUIDED_RULES, scale_min: float = 0.1,
                 scale_max: float = 1000.0,
                 classifier="fashion-classifier", live: bool = True, run_now: bool = True,
                 **panel_options):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.classifier = classifier
        self.loss = widgets.Dropdown(options=LOSSES, value=loss, description="loss",
                                     style=STYLE)
        self.target = widgets.FloatSlider(value=target, min=-1.0, max=1.0, step=0.05,
                                          description="brightness", continuous_update=False,
                                          style=STYLE, layout=_WIDE,
                                          tooltip="target mean pixel (brightness loss)")
        self.cls = _class_dropdown("class", CLASSES, cls)
        # a loss's useful scales span decades (the gradient of a mean over pixels is small)
        self.scale = widgets.FloatLogSlider(
            value=scale, base=10, min=math.log10(scale_min), max=math.log10(scale_max),
            step=0.1, description="scale", continuous_update=False, style=STYLE, layout=_WIDE,
            readout_format=".3g")
        self.scale.add_class(GUIDANCE_CSS["scale"])
        self.loss_plot = widgets.Image(format="png")
        self.loss_plot.add_class(GUIDANCE_CSS["loss_plot"])
        self.guidance_controls = (self.loss, self.target, self.cls, self.scale)
        self._unguided: dict = {}
        self._build(model, noise, n, seed, rule, params, steps, rules, live, run_now,
                    **panel_options)

    def guidance_rows(self) -> list:
        return [widgets.HBox([self.loss, self.scale]),
                widgets.HBox([self.target, self.cls])]

    def result_rows(self) -> list:
        return [self.loss_plot]

    def loss_fn(self):
        """The chosen loss, ``x0_hat (B, ...) -> (B,)``."""
        if self.loss.value == "brightness":
            return guidance.brightness(float(self.target.value))
        return guidance.class_log_prob(CLASSES.index(self.cls.value), self.classifier)

    def base(self):
        """The model the loss steers: a conditional one at its null class."""
        if getattr(self.model, "conditional", False):
            return guidance.cfg(self.model, None, 1.0)
        return self.model

    def denoiser(self):
        return guidance.loss(self.base(), self.loss_fn(), float(self.scale.value))

    def unguided(self, rule, sigmas) -> Trajectory:
        """The unguided run from the same noise (cached per seed, schedule and rule)."""
        key = (int(self.seed.value), tuple(sigmas.tolist()), repr(rule.config))
        if key not in self._unguided:
            self._unguided = {key: sample(self.base(), self.start(sigmas), sigmas, rule,
                                          seed=int(self.seed.value))}
        return self._unguided[key]

    def _sample(self, rule, sigmas, tick) -> Trajectory:
        fn = self.loss_fn()
        self.reference = self.unguided(rule, sigmas)
        with torch.inference_mode():
            reference = [float(fn(x0).mean()) for x0 in self.reference.x0s]
        guided: list[float] = []
        self._last_draw = -math.inf

        def tick_and_draw(step):
            tick(step)
            with torch.inference_mode():
                guided.append(float(fn(step.x0).mean()))
            if time.monotonic() - self._last_draw > LIVE_REDRAW:
                self._draw_losses(sigmas, reference, guided)

        self.guided = self.denoiser()
        traj = sample(self.guided, self.start(sigmas), sigmas, rule,
                      seed=int(self.seed.value), callback=tick_and_draw)
        self.curves = {"unguided": reference, "guided": guided}
        self._draw_losses(sigmas, reference, guided)
        return traj

    def _draw_losses(self, sigmas, reference, guided):
        self._last_draw = time.monotonic()
        fig, ax = viz.new_figure(1, 1, panel_size=(4.6, 2.8))
        s = sigmas[:len(reference)].tolist()
        ax.plot(s, reference, "o-", color="0.5", ms=3, label="unguided")
        ax.plot(s[:len(guided)], guided, "o-", color="tab:red", ms=3,
                label=f"guided, scale {self.scale.value:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")  # a guided x0_hat at large sigma can be far off: decades apart
        ax.invert_xaxis()  # sampling runs left to right, sigma falling
        ax.set_xlabel("sigma")
        ax.set_ylabel(f"{self.loss.value} loss of x0_hat")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        self.loss_plot.value = viz.figure_png(fig, dpi=80)

    def measure(self, traj: Trajectory) -> dict:
        fn = self.loss_fn()
        with torch.inference_mode():
            losses = {"unguided_loss": float(fn(self.reference.x).mean()),
                      "guided_loss": float(fn(traj.x).mean())}
        return {**super().measure(traj), **losses, "curves": self.curves}

    def describe(self) -> dict[str, str]:
        s = self.stats
        return {"loss of the samples": f"unguided {s['unguided_loss']:.4g}, "
                                       f"guided {s['guided_loss']:.4g}",
                **super().describe()}
