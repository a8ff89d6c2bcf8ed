"""Panels that sample: :class:`RulePanel` (one rule, its parameters, Run) and
:class:`Compare` (the same noise under several rules, a table and the runs side by side).

Sampling is :func:`lab.sample` (its ``callback`` feeds the progress bar); the result goes
to a :class:`~lab.widgets.scrubber.TrajectoryScrubber`. Errors a user can cause (a rule
that refuses estimated sigmas, a run that blows up) are shown in the panel, not raised.
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

from .. import rules as _rules
from .. import schedules
from ..metrics import default_metric
from ..rules import Rule
from ..sample import NonFiniteError, sample
from ..seeding import noise as make_noise
from ..trajectory import Trajectory
from .controls import control_values, rule_controls
from .display import CSS, STYLE, Displayed
from .scrubber import TrajectoryScrubber

__all__ = ["RulePanel", "Compare", "default_schedule"]

_ERRORS = (NonFiniteError, ValueError, TypeError, RuntimeError)


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


def _estimate_label(estimate) -> str:
    """The dropdown label of a ``sigma_estimate`` choice (None: the schedule's sigma)."""
    if estimate is None:
        return "schedule"
    if isinstance(estimate, str):
        return estimate
    return getattr(estimate, "name", None) or type(estimate).__name__


class _Sampler(Displayed):
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
        self.seed = widgets.IntText(value=seed, description="seed", style=STYLE,
                                    layout=widgets.Layout(width="180px"))
        self.run_button = widgets.Button(description="Run", button_style="primary",
                                         icon="play", tooltip="sample with these settings")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="sampling",
                                            style=STYLE)
        self.status = widgets.HTML(value="")
        if isinstance(sigma_estimate, (list, tuple)):
            # string keys: a Dropdown whose value is None shows blank
            self._estimates = {_estimate_label(s): s for s in sigma_estimate}
            if len(self._estimates) != len(sigma_estimate):
                raise ValueError(f"sigma_estimate choices need distinct names, got "
                                 f"{list(map(_estimate_label, sigma_estimate))}")
            self.sigma_from = widgets.Dropdown(options=list(self._estimates),
                                               description="sigma from", style=STYLE)
            self.sigma_from.add_class(CSS["sigma_from"])
        else:
            self.sigma_from = None
            self._estimates = {None: sigma_estimate}
        self.run_button.on_click(self._on_run)

    @property
    def sigma_estimate(self):
        """What :func:`lab.sample` gets as ``sigma_estimate`` (None: the schedule's)."""
        return self._estimates[self.sigma_from.value if self.sigma_from is not None else None]

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

    def run(self):
        raise NotImplementedError


class RulePanel(_Sampler):
    """Pick a rule, set its declared parameters and the number of steps, press Run.

    ``model``: any denoiser. The start is ``noise`` (unit variance, ``(B, ...)``) or
    ``lab.noise(shape, seed)`` with ``shape`` defaulting to ``(n, *model.sample_shape)``
    (n = 256 points or 16 images); it is multiplied by the schedule's first sigma. The
    seed box also seeds the stochastic rules. ``schedule``: ``n -> sigmas`` (default
    Karras within the model's range). ``sigma_estimate`` goes to :func:`lab.sample`; a
    list of choices (e.g. ``[None, "rms"]``) gives a "sigma from" dropdown whose options
    are their names ("schedule" for None). ``rules`` restricts the rule dropdown;
    ``params`` sets the first rule's initial values. The result goes to
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
                                              style=STYLE)
        self.controls = rule_controls(rule, params)
        self.params_box = widgets.VBox(self._control_widgets())
        self.steps = widgets.IntSlider(value=steps, min=1, max=max(max_steps, steps),
                                       description="steps", continuous_update=False,
                                       style=STYLE, layout=widgets.Layout(width="420px"))
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
        return _rules.get(self.rule_dropdown.value, **self.values())

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


class Compare(_Sampler):
    """The same starting noise (and seed) under two or more rules, side by side.

    ``rules``: names, Rule objects, or a mapping ``label -> name or Rule``. Runs are
    matched by step count (``match="steps"``) or by model calls (``match="NFE"``: each
    rule gets the most steps that fit, :func:`lab.rules.steps_for_budget`); the slider
    sets the count. The table shows steps, NFE, ``metric(traj) -> float`` and time;
    ``metric="auto"`` picks :func:`lab.metrics.default_metric` (exact error for a
    Gaussian, sliced Wasserstein for 2-D, FID for Fashion-MNIST images when the
    reference ships); ``metric=None`` shows none. The runs go to a
    :class:`TrajectoryScrubber` (``compare.scrubber``; side by side unless
    ``layout="overlay"``) and ``compare.trajectories``; the rows to ``compare.rows``.
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
                                           description="match", style=STYLE)
        self.amount = widgets.IntSlider(value=steps, min=1, max=max(max_amount, steps),
                                        description=match, continuous_update=False,
                                        style=STYLE, layout=widgets.Layout(width="420px"))
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
