"""Curves: a metric against the number of model calls, convergence slopes, step angles."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.ticker import NullFormatter, ScalarFormatter
from torch import Tensor

from .figures import new_figure

__all__ = ["rule_styles", "one_two_five", "plot_metric_vs_nfe", "metric_vs_nfe_panels",
           "loglog_slope", "plot_convergence", "step_angles", "plot_step_angles"]

MARKERS = "osD^v<>ph*XP"


def rule_styles(labels: Sequence[str], dashed: Sequence[str] = ()) -> dict[str, dict]:
    """Distinct line styles per label: tab20 colours, cycling markers, and dashed lines
    for the labels in ``dashed`` (e.g. the stochastic rules)."""
    cmap = matplotlib.colormaps["tab20"]
    dashed = set(dashed)
    return {lab: {"color": cmap(i % 20), "marker": MARKERS[i % len(MARKERS)],
                  "linestyle": "--" if lab in dashed else "-"}
            for i, lab in enumerate(labels)}


def one_two_five(lo: float, hi: float) -> list[float]:
    """The 1-2-5 values between ``lo`` and ``hi`` (tick marks on a log axis)."""
    out = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        out += [m * 10.0**e for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]
    return [int(v) if v >= 1 else v for v in out]


def _finite(v, log: bool = True) -> bool:
    """A number that can be drawn: finite, and positive on a log axis."""
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and (v > 0 or not log))


def plot_metric_vs_nfe(ax, rows: Sequence[Mapping], metric: str, *, x: str = "nfe",
                       group: str = "rule", groups: Sequence[str] | None = None,
                       styles: Mapping[str, dict] | None = None, floor: float | None = None,
                       floor_label: str = "floor", ylabel: str | None = None,
                       logx: bool = True, logy: bool = True, legend: bool = True,
                       xticks: Sequence[float] | None = None, yerr: str | None = None):
    """One line per ``group`` (rule) of ``metric`` against ``x`` (NFE), log-log.

    ``rows`` are dicts; rows without a finite ``metric`` (a failed run, a rule that did
    not fit the budget), or with a non-positive one on a log axis, are left out. Rows
    with ``stochastic`` true are drawn dashed. ``floor`` draws a horizontal reference
    line. ``xticks`` (default: the x values if there are few, else 1-2-5 steps) are
    labelled as plain numbers. ``yerr`` names a column (e.g. ``"fid_std"``) drawn as
    error bars where it is set.
    """
    groups = list(groups) if groups is not None else list(dict.fromkeys(r[group] for r in rows))
    if styles is None:
        stochastic = {r[group] for r in rows if r.get("stochastic")}
        styles = rule_styles(groups, dashed=[g for g in groups if g in stochastic])
    ticks = set()
    for g in groups:
        pts = sorted((r[x], r[metric]) for r in rows
                     if r[group] == g and _finite(r.get(metric), logy)
                     and _finite(r.get(x), logx))
        if not pts:
            continue
        ticks.update(p[0] for p in pts)
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], label=g, markersize=4,
                          lw=1.2, **styles.get(g, {}))
        bars = [(r[x], r[metric], r[yerr]) for r in rows if yerr and r[group] == g
                and _finite(r.get(metric), logy) and _finite(r.get(x), logx)
                and _finite(r.get(yerr), False)]
        if bars:
            ax.errorbar(*zip(*bars), fmt="none", ecolor=line.get_color(), capsize=3, lw=1)
    if floor is not None:
        ax.axhline(floor, color="k", lw=1, ls=":", label=floor_label)
    if logx:
        ax.set_xscale("log")
        if xticks is None and ticks:
            xticks = sorted(ticks) if len(ticks) <= 8 else one_two_five(min(ticks), max(ticks))
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
