"""Every rule against exact answers, by model calls: a 2-D mixture and a 784-d Gaussian.

    python -m experiments exact_error_vs_nfe [--fast]

Models, both exact denoisers in float64 (:mod:`lab.data`):

- ``mixture``: the 8-component 2-D ring mixture (:func:`lab.data.ring_mixture`); its
  exact ODE solution is a tight-tolerance solve (:func:`lab.metrics.ode_reference`).
- ``gaussian``: a 784-dimensional Gaussian with an image-like spectrum, variances
  ``80 k^-1.3`` in a random basis (:func:`lab.data.image_gaussian`); closed-form solution.

Rules: every rule of the registry at the time of the run (:data:`RULE_NAMES`) with
default parameters (wrappers around euler), plus momentum at two more betas, each at the
largest number of Karras steps (sigma 80 -> 0.002) whose model calls fit the budget; the
NFE reported is the counted one.

Metrics per cell: ``error_rms`` (deterministic rules: RMS distance of the final samples
to the exact ODE solution from the same noise), ``sw`` (sliced Wasserstein distance to
as many exact samples of the model), and two references of the cell's model and seed:
``sw_floor`` (exact samples against an independent exact set: what a perfect sampler
scores) and ``sw_ode`` (the exact ODE solution: the limit of every deterministic rule).
``--fast``: 128 samples, budgets 5 and 10, six rules, one seed.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

import lab
from lab import io, study, viz
from lab.metrics import exact_solution, rms_distance, sliced_wasserstein

NAME = "exact_error_vs_nfe"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
schedule = functools.partial(lab.schedules.karras, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
MODELS = {"mixture": lab.data.ring_mixture, "gaussian": lab.data.image_gaussian}
# every rule the registry held when the study ran, named so that a newly registered rule
# joins the grid by an edit here (and a resumed run of its cells), not silently
RULE_NAMES = ["adam", "ancestral", "annealed_langevin", "churn", "dpmpp_2m", "euler", "heun",
              "langevin", "lms", "midpoint", "momentum", "nesterov", "optim", "plain", "rk4"]
RULES = ([{"rule": name, "params": {}} for name in RULE_NAMES]
         + [{"rule": "momentum", "params": {"beta": b}} for b in (0.5, 0.99)])
FAST_RULES = ["euler", "plain", "heun", "rk4", "dpmpp_2m", "ancestral"]
SAMPLES = {"mixture": 2000, "gaussian": 1000}  # full run; the SW floor falls as 1/sqrt(samples)
DATA_SEED, FLOOR_SEED = 1000, 2000  # offsets: exact sets disjoint from each other per seed


def cells(fast: bool = False) -> list[dict]:
    if fast:
        rules = [r for r in RULES if r["rule"] in FAST_RULES]
        return study.grid([{"model": m} for m in MODELS], rules, budget=[5, 10], seed=[0],
                          samples=128)
    return [cell for m, samples in SAMPLES.items() for cell in study.grid(
        [{"model": m}], RULES, budget=[5, 10, 20, 50], seed=[0, 1], samples=samples)]


model = study.model_loader(**MODELS)


@functools.lru_cache(maxsize=4)
def reference(name: str, samples: int, seed: int) -> SimpleNamespace:
    """What every cell of one model and seed compares against (cached: cells that differ
    only in rule or budget share it): the starting noise, its exact ODE solution, exact
    samples and the two SW references."""
    m = model(name)
    x = study.start_noise(m, samples, seed, SIGMA_MAX, torch.float64)
    solution = exact_solution(m, x, SIGMA_MAX, 0.0)
    exact = m.sample(samples, seed=DATA_SEED + seed, dtype=torch.float64)
    other = m.sample(samples, seed=FLOOR_SEED + seed, dtype=torch.float64)
    return SimpleNamespace(x=x, solution=solution, exact=exact,
                           sw_floor=sliced_wasserstein(other, exact),
                           sw_ode=sliced_wasserstein(solution, exact))


def run_cell(cell: dict) -> dict:
    rule = lab.rules.get(cell["rule"], **cell["params"])
    ref = reference(cell["model"], cell["samples"], cell["seed"])
    out = {"label": rule.config_name, "stochastic": rule.stochastic,
           "sw_floor": ref.sw_floor, "sw_ode": ref.sw_ode}
    traj, status = study.sample_cell(model(cell["model"]), cell, schedule, sigma_max=SIGMA_MAX,
                                     rule=rule, dtype=torch.float64)
    if traj is None:
        return {**out, "status": status}
    return {**out, "steps": traj.steps, "nfe": traj.nfe, "status": status,
            "error_rms": None if rule.stochastic else rms_distance(traj.x, ref.solution),
            "sw": sliced_wasserstein(traj.x, ref.exact)}


PLOTS = {"error_rms": "RMS distance to the exact ODE solution",
         "sw": "sliced Wasserstein distance to exact samples"}


NOTEBOOK, PLOT = "03_ode_solvers.ipynb", "error_rms_vs_nfe.png"  # for results/README.md


def means_of(flat: list[dict]) -> list[dict]:
    return study.aggregate(flat, ["model", "label", "stochastic", "budget", "steps", "nfe"],
                           ["error_rms", "sw"])


def headline(rows: list[dict]) -> list[str]:
    """For results/README.md: per model, the best rule at each budget and the error table."""
    means = means_of([study.flat(r) for r in rows])
    out = []
    for m in dict.fromkeys(r["model"] for r in means):
        at = [r for r in means if r["model"] == m]
        out += [f"**{m}**, RMS error to the exact ODE solution (deterministic rules):", "",
                *study.best_per_budget(at, {m: m for m in PLOTS}), "",
                table([dict(e, order=order(at, e["label"]))
                       for e in pivot(at, "error_rms", stochastic=False)])]
    return out


def render(rows: list[dict], out_dir) -> None:
    flat = [study.flat(r) for r in rows]
    means = means_of(flat)
    models = list(dict.fromkeys(r["model"] for r in flat))
    budgets = sorted({r["budget"] for r in flat})
    per_seed = {(r["model"], r["seed"]): r for r in flat}.values()  # references: one per seed
    floors = {m: study.aggregate([r for r in per_seed if r["model"] == m], [],
                                 ["sw_floor", "sw_ode"])[0] for m in models}
    study.write_csv(out_dir / "means.csv", means)
    references = {m: {"exact vs exact (floor)": f["sw_floor"], "exact ODE solution": f["sw_ode"]}
                  for m, f in floors.items()}
    for metric, ylabel in PLOTS.items():
        fig = viz.metric_vs_nfe_panels(means, metric, group="label", ylabel=ylabel, xticks=budgets,
                                       references=references if metric == "sw" else None)
        viz.save_figure(fig, out_dir / f"{metric}_vs_nfe.png", dpi=110)

    lines = [f"# Every rule against exact answers: {', '.join(models)}", "",
             study.generated_note(rows, NAME), "",
             f"Karras schedule sigma {SIGMA_MAX:g} -> {SIGMA_MIN:g}; each rule at the largest "
             "step count whose model calls fit the budget B (NFE: counted calls). "
             "error_rms: RMS distance of the final samples to the exact ODE solution from the "
             "same noise (deterministic rules); sw: sliced Wasserstein distance to exact "
             "samples. Tables: means over seeds; n/a: the rule does not fit the budget, or "
             "failed (status in the last table). Order: the slope of log error against log "
             "NFE between the two largest budgets.", "",
             "![error vs NFE](error_rms_vs_nfe.png)", "", "![SW vs NFE](sw_vs_nfe.png)", "",
             "## Rules", "", study.markdown_table(study.rule_parameters(rows))]
    for m in models:
        at = [r for r in means if r["model"] == m]
        of_m = [r for r in flat if r["model"] == m]
        f = floors[m]
        spread = f" (sd {f['sw_floor_std']:.2g} over seeds)" if f["sw_floor_std"] else ""
        lines += [f"## {m}", "",
                  f"{', '.join(map(str, sorted({r['samples'] for r in of_m})))} samples a cell, "
                  f"seeds {sorted({r['seed'] for r in of_m})}.", "",
                  f"- SW floor, exact samples against an independent exact set: "
                  f"**{f['sw_floor']:.3g}**{spread}; SW of the exact ODE solution from the "
                  f"cells' noise: **{f['sw_ode']:.3g}**.",
                  *study.best_per_budget(at, {m: m for m in PLOTS}),
                  *(f"- Same error_rms in every cell: {' = '.join(g)}." for g in study.identical(
                      of_m, "label", "error_rms", ["budget", "seed"])), "",
                  "### RMS error (deterministic rules)", "",
                  table([dict(e, order=order(at, e["label"]))
                         for e in pivot(at, "error_rms", stochastic=False)]),
                  f"### SW distance (floor {f['sw_floor']:.3g})", "",
                  table(pivot(at, "sw")),
                  "### Steps / NFE", "",
                  table(study.pivot(at, "label", "budget", lambda r: (
                      f"{r['steps']} / {r['nfe']}" if r["nfe"] is not None else "n/a"), "B={}"))]
    lines += ["## Every cell", "", study.markdown_table(
        flat, ["key", "model", "label", "budget", "seed", "samples", "steps", "nfe",
               "error_rms", "sw", "seconds", "status"],
        {"error_rms": "{:.3g}", "sw": "{:.3g}", "seconds": "{:.2f}"}, headers={"label": "rule"})]
    io.write_text(out_dir / "summary.md", "\n".join(lines))


def pivot(means, metric, stochastic=None) -> list[dict]:
    """Rules x budgets of ``metric``; ``stochastic`` False keeps the deterministic rules."""
    rows = [r for r in means if stochastic is None or r["stochastic"] == stochastic]
    return study.pivot(rows, "label", "budget",
                       lambda r: f"{r[metric]:.3g}" if r[metric] is not None else "n/a", "B={}")


def order(means, label) -> str:
    """Observed order of convergence between the two largest budgets:
    ``-d log(error) / d log(NFE)`` (1 for Euler, 2 for Heun, asymptotically)."""
    pts = sorted((r["nfe"], r["error_rms"]) for r in means if r["label"] == label
                 and r["error_rms"] is not None and r["nfe"] is not None)
    return f"{-viz.loglog_slope(*zip(*pts[-2:])):.2f}" if len(pts) > 1 else "n/a"


def table(entries: list[dict]) -> str:
    return study.markdown_table(entries, headers={"label": "rule"}, right=list(entries[0])[1:])
