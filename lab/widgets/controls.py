"""Controls built from a rule's declared parameters (:func:`lab.rules.describe`).

A number gets a slider, a tuple one slider per element, a choice parameter (``Param(...,
choices=...)``, e.g. the torch.optim adapter's ``optimizer``) a dropdown of its choices,
and a wrapper's inner rule a dropdown of the deterministic rules. Nothing here knows a rule
by name: a new rule gets its controls by declaring its parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import ipywidgets as widgets

from .. import rules as _rules
from ..rules import Param, Rule
from .display import STYLE

__all__ = ["param_control", "rule_controls", "control_values", "INNER_RULE_LABEL"]

#: The label of a wrapper's inner-rule dropdown (the panel's own dropdown says "rule").
INNER_RULE_LABEL = "inner rule"


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
    common = {"description": name, "style": STYLE, "tooltip": p.doc,
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


def _dropdown(options, value, default, description: str, doc: str):
    options = list(options)
    return widgets.Dropdown(options=options, value=value if value in options else default,
                            description=description, style=STYLE, tooltip=doc)


def param_control(p: Param, value=None):
    """The control(s) for one declared parameter, set to ``value`` (default: its default).

    Numbers give a slider (``FloatLogSlider`` when ``p.log``, ``IntSlider`` when
    ``p.integer``; a bounded text box when the range spans many orders of magnitude);
    a tuple default gives a list with one slider per element (``betas[0]``, ...); a
    choice parameter gives a dropdown of ``p.choices``; a string default without choices
    (a wrapper's inner rule) gives a dropdown of the deterministic rules labelled
    ``INNER_RULE_LABEL``.
    """
    value = p.default if value is None else value
    if p.choices is not None:
        return _dropdown(p.choices, value, p.default, p.name, p.doc)
    if isinstance(p.default, str):
        name = value.name if isinstance(value, Rule) else value
        return _dropdown(_rules.available("deterministic"), name, p.default, INNER_RULE_LABEL,
                         p.doc)
    if isinstance(p.default, tuple):
        return [_number_control(f"{p.name}[{i}]", v, p) for i, v in enumerate(value)]
    return _number_control(p.name, value, p)


def rule_controls(name: str, values: Mapping | None = None) -> dict[str, object]:
    """``{param name: control or list of controls}`` for the registered rule ``name``,
    from :func:`lab.rules.describe`, set to ``values`` where given."""
    values = dict(values or {})
    return {p.name: param_control(p, values.get(p.name)) for p in _rules.describe(name)}


def control_values(controls: Mapping[str, object]) -> dict:
    """The values of :func:`rule_controls` as keyword arguments (tuples rebuilt)."""
    return {k: tuple(w.value for w in c) if isinstance(c, list) else c.value
            for k, c in controls.items()}
