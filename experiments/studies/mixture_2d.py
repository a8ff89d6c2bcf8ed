"""Every rule on a 2-D Gaussian mixture at budgets of 5, 10, 20 and 50 model calls,
against the exact ODE solution and exact samples; with paths to look at.

    python -m experiments mixture_2d [--fast]

Model: the 8-component 2-D ring mixture (:func:`lab.data.ring_mixture`), an exact
denoiser, in float64. Rules: every registered rule with default parameters, then a few
variants (LMS of order 2, momentum and Nesterov at beta 0.5, ``torch.optim.SGD`` with
momentum 0.9, and the noise wrappers around heun), each at the largest number of Karras
steps (sigma 80 -> 0.002, rho 7: the EDM defaults; the mixture's spread is about 5, so
N(0, 80^2 I) is indistinguishable from the noised data) whose model calls fit the
budget. All rules start from the same noise.

Metrics per cell: ``error_rms`` and ``error_max`` (deterministic rules: distance of the
final samples to a tight-tolerance solution of the probability-flow ODE from the same
noise), ``sw`` (sliced Wasserstein distance to a fixed set of exact samples), and the
references of the cell's noise: ``sw_floor`` (independent exact sets against that one:
the mean, min and max over five), ``sw_ode`` (the exact ODE solution) and the schedule's
own error floor (the exact flow to sigma_min, then one denoiser call). Cells at 10 calls
carry the paths of the first 14 samples, drawn in ``paths.png``. ``--fast``: 256
samples, budgets 5, 10 and 50.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import torch

import lab
from lab import io, study, viz
from lab.metrics import ode_reference, sample_distances, sliced_wasserstein

NAME = "mixture_2d"
NOTEBOOK, PLOT = "04_trajectories_2d.ipynb", "metrics_vs_nfe.png"  # for results/README.md
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
schedule = functools.partial(lab.schedules.karras, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                             rho=RHO)
FULL = {"budgets": [5, 10, 20, 50], "samples": 2000}
FAST = {"budgets": [5, 10, 50], "samples": 256}
NOISE_SEED = 0  # starting noise, and the stochastic rules' noise streams
DATA_SEED = 1  # the exact samples every rule is compared to
FLOOR_SEEDS = (2, 3, 4, 5, 6)  # independent exact sets: the SW floor
VARIANTS = [("lms", {"order": 2}), ("momentum", {"beta": 0.5}), ("nesterov", {"beta": 0.5}),
            ("optim", {"optimizer": "SGD", "momentum": 0.9, "dampening": 0.9}),
            ("ancestral", {"rule": "heun"}), ("churn", {"rule": "heun"}),
            ("langevin", {"rule": "heun"})]
PATH_RULES = ("euler", "heun", "dpmpp_2m", "momentum", "adam", "langevin")
PATH_SAMPLES, PATH_BUDGET = 14, 10
SW_PROJECTIONS = 128  # plenty of directions in 2-D

model = study.model_loader(mixture=lab.data.ring_mixture)


def rules() -> list[dict]:
    """Every registered rule with default parameters, then :data:`VARIANTS`."""
    return ([{"rule": name, "params": {}} for name in lab.rules.available()]
            + [{"rule": name, "params": params} for name, params in VARIANTS])


def cells(fast: bool = False) -> list[dict]:
    size = FAST if fast else FULL
    return study.grid(rules(), model="mixture", budget=size["budgets"], seed=NOISE_SEED,
                      samples=size["samples"])


def sw(a, b) -> float:
    return sliced_wasserstein(a, b, projections=SW_PROJECTIONS)


@functools.lru_cache(maxsize=2)
def reference(samples: int, seed: int) -> SimpleNamespace:
    """What every cell of a seed compares against (cached: cells that differ only in rule
    or budget share it): the exact ODE solution from the cell's noise, exact samples, and
    the reference metrics every row carries."""
    m = model("mixture")
    x = study.start_noise(m, samples, seed, SIGMA_MAX, torch.float64)
    # in two legs, so that the state at sigma_min gives the schedule's own error floor
    at_min = ode_reference(m, x, SIGMA_MAX, SIGMA_MIN)
    solution = ode_reference(m, at_min, SIGMA_MIN, 0.0)
    with torch.inference_mode():
        truncated = sample_distances(m(at_min, SIGMA_MIN), solution)
    exact = m.sample(samples, DATA_SEED, dtype=torch.float64)
    floor = [sw(exact, m.sample(samples, s, dtype=torch.float64)) for s in FLOOR_SEEDS]
    return SimpleNamespace(solution=solution, exact=exact, metrics={
        "sw_floor": sum(floor) / len(floor), "sw_floor_min": min(floor),
        "sw_floor_max": max(floor), "sw_ode": sw(solution, exact),
        "schedule_floor_rms": float(truncated.pow(2).mean().sqrt()),
        "schedule_floor_max": float(truncated.max())})


def run_cell(cell: dict) -> dict:
    rule = lab.rules.get(cell["rule"], **cell["params"])
    ref = reference(cell["samples"], cell["seed"])
    out = {"label": rule.config_name, "family": rule.name, "stochastic": rule.stochastic,
           **ref.metrics}
    with_path = cell["budget"] == PATH_BUDGET
    traj, status = study.sample_cell(model(cell["model"]), cell, schedule, sigma_max=SIGMA_MAX,
                                     rule=rule, dtype=torch.float64,
                                     record="all" if with_path else "final")
    if traj is None:
        return {**out, "status": status}
    predicted = lab.rules.nfe(rule, schedule(traj.steps))
    if traj.nfe != predicted:
        status = f"NFE mismatch: counted {traj.nfe}, lab.rules.nfe says {predicted}"
    out.update(steps=traj.steps, nfe=traj.nfe, status=status, sw=sw(traj.x, ref.exact))
    if not rule.stochastic:
        d = sample_distances(traj.x, ref.solution)
        out.update(error_rms=float(d.pow(2).mean().sqrt()), error_max=float(d.max()))
    if with_path:
        out.update(path=rounded(traj.xs[:, :PATH_SAMPLES]),
                   path_end=rounded(ref.solution[:PATH_SAMPLES]))
    return out


def rounded(x: torch.Tensor) -> list:
    """``x`` as nested lists to 4 decimals: ample for a plot, and short in a row."""
    return (x * 1e4).round().div(1e4).tolist()


# ---- render -------------------------------------------------------------------------------

def flat_of(rows: list[dict]) -> list[dict]:
    return [{"error_rms": None, "error_max": None, "sw": None, "steps": None,
             **study.flat(r)} for r in rows]


def headline(rows: list[dict]) -> list[str]:
    """For results/README.md and the summary: per budget, the best rule by each metric."""
    return study.best_per_budget(flat_of(rows), {"error_rms": "error (RMS)", "sw": "SW"})


def render(rows: list[dict], out_dir) -> None:
    flat = flat_of(rows)
    ref = flat[0]  # the reference metrics: one seed, the same in every row
    budgets = sorted({r["budget"] for r in flat})
    labels = list(dict.fromkeys(r["label"] for r in flat))
    stochastic = [r["label"] for r in flat if r["stochastic"]]
    deterministic = [lb for lb in labels if lb not in stochastic]
    plot_paths(out_dir / "paths.png", [r for r in flat if r.get("path")])
    plot_metrics(out_dir / PLOT, flat, labels, stochastic, budgets, ref)

    def table(metric, names, fmt):
        entries = study.pivot([r for r in flat if r["label"] in names], "label", "budget",
                              lambda r: fmt(r) if r[metric] is not None else (
                                  "n/a" if r["status"].startswith("does not fit") else "failed"),
                              "B={}")
        return study.markdown_table(entries, headers={"label": "rule"}, right=list(entries[0])[1:])

    unfit = [r for r in flat if r["status"].startswith("does not fit")]
    failed = [r for r in flat if r["status"] != "ok" and r not in unfit]
    same = study.identical(flat, "label", "sw", ["budget", "seed"])
    lines = [
        "# Every rule on a 2-D Gaussian mixture at fixed budgets of model calls", "",
        study.generated_note(rows, NAME), "",
        "## Set-up", "",
        "- Data: the ring mixture of `lab.data.ring_mixture()` (a ring of six stretched "
        "components of unequal weight, a broad tilted one in the middle, a small tight mode "
        "far out); exact denoiser, float64.",
        f"- Schedule: Karras, sigma {SIGMA_MAX:g} -> {SIGMA_MIN:g}, rho {RHO:g}, then 0. Each "
        "rule gets the largest step count whose NFE fits the budget B; the NFE shown is the "
        "counted `traj.nfe`, checked against `lab.rules.nfe`.",
        f"- {ref['samples']} samples from the same starting noise (seed {ref['seed']}); "
        "stochastic rules draw their noise from the same seed.",
        "- Error: per-sample distance of the final samples to a reference solution of the "
        "probability-flow ODE (`lab.metrics.ode_reference`, float64) from the same noise; "
        "deterministic rules only.",
        f"- SW: sliced Wasserstein-2 distance ({SW_PROJECTIONS} projections) to "
        f"{ref['samples']} exact mixture samples (seed {DATA_SEED}).", "",
        "## Floors", "",
        f"- SW between the exact set and independent exact sets of the same size: mean "
        f"**{ref['sw_floor']:.3g}** (range {ref['sw_floor_min']:.3g} to "
        f"{ref['sw_floor_max']:.3g} over {len(FLOOR_SEEDS)} sets). Differences below this are "
        "sampling noise.",
        f"- SW of the exact ODE solution (the limit of every deterministic rule): "
        f"**{ref['sw_ode']:.3g}**.",
        f"- Error floor of the schedule itself (exact flow to sigma_min = {SIGMA_MIN:g}, then "
        f"one denoiser call, vs the flow to 0): RMS {ref['schedule_floor_rms']:.2g}, max "
        f"{ref['schedule_floor_max']:.2g}.", "",
        "## Headlines", "", *headline(rows),
        *(["- Did not fit a budget (one step costs more): "
           + ", ".join(f"{r['label']} at B={r['budget']}" for r in unfit) + "."] if unfit else []),
        *(f"- **{r['label']} at B={r['budget']}: {r['status']}**" for r in failed),
        *(["- Same SW in every cell (the same samples): "
           + "; ".join(" = ".join(g) for g in same) + "."] if same else []), "",
        "![paths](paths.png)", "", f"![metrics vs NFE]({PLOT})", "",
        "## Steps / NFE used at each budget", "",
        table("nfe", labels, lambda r: f"{r['steps']} / {r['nfe']}"),
        "## RMS distance to the exact ODE solution (deterministic rules)", "",
        table("error_rms", deterministic, lambda r: f"{r['error_rms']:.3g}"),
        "## Max distance to the exact ODE solution (deterministic rules)", "",
        table("error_max", deterministic, lambda r: f"{r['error_max']:.3g}"),
        f"## Sliced Wasserstein distance to exact samples (floor {ref['sw_floor']:.3g})", "",
        table("sw", labels, lambda r: f"{r['sw']:.3g}"),
        "## Every cell", "",
        study.markdown_table(flat, ["key", "label", "budget", "steps", "nfe", "error_rms",
                                    "error_max", "sw", "seconds", "status"],
                             {"error_rms": "{:.3g}", "error_max": "{:.3g}", "sw": "{:.3g}",
                              "seconds": "{:.2f}"}, headers={"label": "rule"}),
    ]
    io.write_text(out_dir / "summary.md", "\n".join(lines))


def plot_paths(path, rows: list[dict]) -> None:
    shown = [r for lb in PATH_RULES for r in rows if r["label"] == lb]
    if not shown:
        return
    cols = 3
    fig, axes = viz.new_figure(math.ceil(len(shown) / cols), cols, panel_size=(4.6, 4.2),
                               squeeze=False)
    m = model("mixture")
    xlim, ylim = viz.bounds_2d(m, margin=4.0)
    grid = viz.density_grid(m, 0.0, xlim, ylim, resolution=160)
    for ax, row in zip(axes.flat, shown):
        viz.plot_density_2d(ax, None, grid=grid)
        end = torch.tensor(row["path_end"])
        ax.plot(end[:, 0], end[:, 1], "x", color="k", markersize=6, mew=1.5,
                label="exact ODE end point")
        viz.plot_paths_2d(ax, torch.tensor(row["path"]), samples=None, color="tab:red",
                          label="path (dots: steps)")
        err = f", RMS error {row['error_rms']:.2g}" if row["error_rms"] is not None else ""
        ax.set_title(f"{row['label']}: {row['steps']} steps, {row['nfe']} NFE{err}", fontsize=10)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small", loc="lower left")
    fig.suptitle(f"Paths of {PATH_SAMPLES} samples at a budget of {PATH_BUDGET} model calls, "
                 "over the data density (log scale); paths enter from sigma = "
                 f"{SIGMA_MAX:g}, outside the view")
    viz.save_figure(fig, path, dpi=130)


def plot_metrics(path, flat, labels, stochastic, budgets, ref) -> None:
    styles = viz.rule_styles(labels, dashed=stochastic)
    fig, (left, right) = viz.new_figure(1, 2, panel_size=(5.2, 5.0))
    viz.plot_metric_vs_nfe(left, flat, "error_rms", group="label",
                           groups=[lb for lb in labels if lb not in stochastic], styles=styles,
                           legend=False, ylabel="RMS distance to the exact ODE solution",
                           xticks=budgets)
    left.set_title("Deterministic rules: error vs NFE")
    viz.plot_metric_vs_nfe(right, flat, "sw", group="label", groups=labels, styles=styles,
                           legend=False, floor=ref["sw_floor"],
                           floor_label="exact vs exact samples (floor)", xticks=budgets,
                           ylabel="sliced Wasserstein distance to exact samples")
    right.axhline(ref["sw_ode"], color="k", lw=1, ls="-.", label="exact ODE solution")
    right.set_title("All rules (dashed: stochastic): SW vs NFE")
    handles, names = right.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right center", fontsize="small")
    viz.save_figure(fig, path, dpi=130)
