"""Every rule on a 2-D Gaussian mixture at budgets of 5, 10, 20 and 50 model calls.

    python -m experiments.mixture_2d
    python -m experiments.mixture_2d --n 512 --budgets 5 10 --out /tmp/demo

Each rule gets the largest number of steps whose model calls (NFE) fit the budget on
a Karras schedule (sigma 80 -> 0.002, rho 7: the EDM defaults; the mixture's spread
is about 5, so sigma_max = 80 makes the starting noise N(0, 80^2 I) indistinguishable
from the noised data). All rules start from the same noise, in float64.

Measured per rule and budget:

- deterministic rules: distance of each final sample to a tight-tolerance solution
  of the probability-flow ODE from the same noise (RMS and max over samples);
- every rule: sliced Wasserstein distance to a fixed set of exact mixture samples,
  beside the same distance for independent exact sets of equal size (the floor).

Writes ``results/mixture_2d/``: rows.csv and rows.jsonl (one row per rule and budget),
setup.json, summary.md (generated from the rows), paths.png and metrics_vs_nfe.png.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

import lab
from lab import io, study, viz
from lab.metrics import ode_reference, sample_distances, sliced_wasserstein

RESULTS = Path(__file__).resolve().parents[1] / "results" / "mixture_2d"
BUDGETS = (5, 10, 20, 50)
N_SAMPLES = 2000
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
NOISE_SEED = 0  # starting noise, and the stochastic rules' noise streams
DATA_SEED = 1  # the exact samples every rule is compared to
FLOOR_SEEDS = (2, 3, 4, 5, 6)  # independent exact sets: the SW floor
PATH_RULES = ("euler", "heun", "dpmpp_2m", "momentum", "adam", "langevin")
PATH_SAMPLES = 14
PATH_BUDGET = 10
SW_PROJECTIONS = 128  # plenty of directions in 2-D; the sort dominates the demo's time


def mixture():
    """The 8-component 2-D ring mixture (:func:`lab.data.ring_mixture`)."""
    return lab.data.ring_mixture()


def schedule(n: int) -> torch.Tensor:
    return lab.schedules.karras(n, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO)


def rule_factories() -> dict[str, Callable[[], lab.rules.Rule]]:
    """Label -> factory: every registered rule with default parameters, then variants."""
    makers = [partial(lab.rules.get, name) for name in lab.rules.available()]
    makers += [partial(lab.rules.get, "lms", order=2),
               partial(lab.rules.get, "momentum", beta=0.5),
               partial(lab.rules.get, "nesterov", beta=0.5),
               partial(lab.rules.optim, "SGD", momentum=0.9, dampening=0.9),
               partial(lab.rules.ancestral, "heun"),
               partial(lab.rules.churn, "heun"),
               partial(lab.rules.langevin, "heun")]
    return {make().config_name: make for make in makers}


def sw(a, b) -> float:
    return sliced_wasserstein(a, b, projections=SW_PROJECTIONS)


def run_rule(model, x, reference, exact, label, make, budget, seed=NOISE_SEED):
    """One rule at one budget: ``(row, trajectory or None)``."""
    rule = make()
    row = {"rule": label, "family": rule.name, "stochastic": rule.stochastic,
           "budget": budget, "steps": None, "nfe": None, "error_rms": None,
           "error_max": None, "sw": None, "seconds": None, "status": "ok"}
    steps = lab.rules.steps_for_budget(rule, budget, schedule)
    if steps is None:
        row["status"] = f"does not fit (needs {lab.rules.nfe(rule, schedule(1))} NFE for 1 step)"
        return row, None
    sig = schedule(steps)
    start = time.perf_counter()
    try:
        traj = lab.sample(model, x, sig, rule, seed=seed)
    except lab.NonFiniteError as err:
        row.update(steps=steps, status=f"non-finite: {err}")
        return row, None
    row.update(steps=steps, nfe=traj.nfe, seconds=time.perf_counter() - start,
               sw=sw(traj.x, exact))
    predicted = lab.rules.nfe(rule, sig)
    if traj.nfe != predicted:
        row["status"] = f"NFE mismatch: counted {traj.nfe}, lab.rules.nfe says {predicted}"
    if not rule.stochastic:
        d = sample_distances(traj.x, reference)
        row.update(error_rms=float(d.pow(2).mean().sqrt()), error_max=float(d.max()))
    return row, traj


def identical_groups(finals: dict[str, list], atol=1e-9) -> list[list[str]]:
    """Labels whose final samples agree at every budget (to ``atol``), two or more a group."""
    return study.groups_of(finals, lambda xs, ys: all(
        a is not None and b is not None and torch.allclose(a, b, rtol=0, atol=atol)
        for a, b in zip(xs, ys)))


def run(out_dir=RESULTS, budgets: Sequence[int] = BUDGETS, n: int = N_SAMPLES,
        seed: int = NOISE_SEED, verbose: bool = True) -> list[dict]:
    """Run the comparison, write ``out_dir``, return the rows.

    Runs torch on one thread: the 2-D tensors are tiny, and on a busy machine two
    threads made each model call about ten times slower.
    """
    with study.threads(1):
        return _run(Path(out_dir), tuple(sorted(budgets)), n, seed, verbose)


def _run(out_dir: Path, budgets: tuple[int, ...], n: int, seed: int, verbose: bool):
    t0 = time.perf_counter()
    say = print if verbose else (lambda *a, **k: None)
    model = mixture()
    x = lab.noise((n, 2), seed=seed, dtype=torch.float64) * SIGMA_MAX
    say(f"reference ODE solve for {n} samples ...")
    # In two legs, so the state at sigma_min gives the schedule's own error floor.
    at_min = ode_reference(model, x, SIGMA_MAX, SIGMA_MIN)
    reference = ode_reference(model, at_min, SIGMA_MIN, 0.0)
    with torch.inference_mode():
        truncated = sample_distances(model(at_min, SIGMA_MIN), reference)
    exact = model.sample(n, DATA_SEED, dtype=torch.float64)
    floor_sw = [sw(exact, model.sample(n, s, dtype=torch.float64)) for s in FLOOR_SEEDS]
    setup = {
        "mixture": {"means": model.means.tolist(), "covs": model.covs.tolist(),
                    "weights": model.weights.tolist()},
        "schedule": {"kind": "karras", "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX,
                     "rho": RHO},
        "budgets": list(budgets), "n": n, "noise_seed": seed, "data_seed": DATA_SEED,
        "floor_seeds": list(FLOOR_SEEDS), "dtype": "float64",
        "reference": {"solver": "scipy DOP853", "rtol": 1e-10, "atol": 1e-10},
        "sw_projections": SW_PROJECTIONS,
        "sw_floor": floor_sw, "sw_floor_mean": sum(floor_sw) / len(floor_sw),
        "sw_reference": sw(reference, exact),
        "schedule_floor_rms": float(truncated.pow(2).mean().sqrt()),
        "schedule_floor_max": float(truncated.max()),
    }

    path_budget = PATH_BUDGET if PATH_BUDGET in budgets else budgets[0]
    rows, finals, paths = [], {}, {}
    for label, make in rule_factories().items():
        finals[label] = []
        for budget in budgets:
            row, traj = run_rule(model, x, reference, exact, label, make, budget, seed)
            rows.append(row)
            finals[label].append(None if traj is None else traj.x)
            if traj is not None and label in PATH_RULES and budget == path_budget:
                paths[label] = (traj.xs[:, :PATH_SAMPLES], row)
        say(f"  {label:42s} " + "  ".join(
            f"B{r['budget']}: " + (f"sw {r['sw']:.3g}" if r["sw"] is not None else r["status"][:12])
            for r in rows if r["rule"] == label))
        for r in rows[-len(budgets):]:
            if r["status"] != "ok" and not r["status"].startswith("does not fit"):
                say(f"  !! {label} at B={r['budget']}: {r['status']}")
    setup["identical"] = identical_groups(finals)
    setup["seconds"] = time.perf_counter() - t0

    study.write_csv(out_dir / "rows.csv", rows)
    study.write_jsonl(out_dir / "rows.jsonl", rows)
    io.write_json(out_dir / "setup.json", setup)
    _plot_paths(out_dir / "paths.png", model, paths, reference, path_budget)
    _plot_metrics(out_dir / "metrics_vs_nfe.png", rows, setup)
    io.write_text(out_dir / "summary.md", summary(rows, setup))
    say(f"wrote {out_dir}/ (summary.md, rows.csv, rows.jsonl, setup.json, paths.png, "
        f"metrics_vs_nfe.png) in {time.perf_counter() - t0:.1f} s")
    return rows


def _plot_paths(path, model, paths, reference, budget):
    cols = 3
    fig, axes = viz.new_figure(math.ceil(len(paths) / cols), cols, panel_size=(4.6, 4.2),
                               squeeze=False)
    xlim, ylim = viz.bounds_2d(model, margin=4.0)
    grid = viz.density_grid(model, 0.0, xlim, ylim, resolution=160)
    for ax, label in zip(axes.flat, [lb for lb in PATH_RULES if lb in paths]):
        xs, row = paths[label]
        viz.plot_density_2d(ax, None, grid=grid)
        ref = reference[:PATH_SAMPLES]
        ax.plot(ref[:, 0], ref[:, 1], "x", color="k", markersize=6, mew=1.5,
                label="exact ODE end point")
        viz.plot_paths_2d(ax, xs, samples=None, color="tab:red", label="path (dots: steps)")
        err = f", RMS error {row['error_rms']:.2g}" if row["error_rms"] is not None else ""
        ax.set_title(f"{label}: {row['steps']} steps, {row['nfe']} NFE{err}", fontsize=10)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    for ax in list(axes.flat)[len(paths):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small", loc="lower left")
    fig.suptitle(f"Paths of {PATH_SAMPLES} samples at a budget of {budget} model calls, over "
                 f"the data density (log scale); paths enter from sigma = {SIGMA_MAX:g}, "
                 "outside the view")
    viz.save_figure(fig, path, dpi=130)


def _plot_metrics(path, rows, setup):
    labels = list(dict.fromkeys(r["rule"] for r in rows))
    stochastic = [r["rule"] for r in rows if r["stochastic"]]
    styles = viz.rule_styles(labels, dashed=stochastic)
    fig, (left, right) = viz.new_figure(1, 2, panel_size=(5.2, 5.0))
    det = [lab_ for lab_ in labels if lab_ not in stochastic]
    budgets = setup["budgets"]
    viz.plot_metric_vs_nfe(left, rows, "error_rms", groups=det, styles=styles, legend=False,
                           ylabel="RMS distance to the exact ODE solution", xticks=budgets)
    left.set_title("Deterministic rules: error vs NFE")
    viz.plot_metric_vs_nfe(right, rows, "sw", groups=labels, styles=styles, legend=False,
                           floor=setup["sw_floor_mean"],
                           floor_label="exact vs exact samples (floor)", xticks=budgets,
                           ylabel="sliced Wasserstein distance to exact samples")
    right.axhline(setup["sw_reference"], color="k", lw=1, ls="-.",
                  label="exact ODE solution")
    right.set_title("All rules (dashed: stochastic): SW vs NFE")
    handles, names = right.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right center", fontsize="small")
    viz.save_figure(fig, path, dpi=130)


def summary(rows: list[dict], setup: dict) -> str:
    """summary.md, every number taken from ``rows`` and ``setup``."""
    budgets = setup["budgets"]
    labels = list(dict.fromkeys(r["rule"] for r in rows))
    det = [lb for lb in labels if not next(r for r in rows if r["rule"] == lb)["stochastic"]]

    def table(key, names, fmt):
        entries = study.pivot([r for r in rows if r["rule"] in names], "rule", "budget",
                              lambda r: fmt(r) if r[key] is not None else (
                                  "n/a" if r["status"].startswith("does not fit") else "failed"),
                              "B={}")
        return study.markdown_table(entries, right=list(entries[0])[1:])

    sched = setup["schedule"]
    fl = setup["sw_floor"]
    lines = [
        "# Every rule on a 2-D Gaussian mixture at fixed budgets of model calls",
        "",
        f"Generated by `python -m experiments.mixture_2d` in {setup['seconds']:.1f} s. Every "
        "number below comes from `rows.csv` / `setup.json`.",
        "",
        "## Set-up",
        "",
        f"- Data: a mixture of {len(setup['mixture']['weights'])} Gaussians in 2-D (a ring of six "
        "stretched components of unequal weight, a broad tilted one in the middle, a small "
        "tight mode far out); exact denoiser, float64. Parameters in `setup.json`.",
        f"- Schedule: Karras, sigma {sched['sigma_max']:g} -> {sched['sigma_min']:g}, rho "
        f"{sched['rho']:g}, then 0. Each rule gets the largest step count whose NFE fits the "
        "budget B; the NFE shown is the counted `traj.nfe`, checked against `lab.rules.nfe`.",
        f"- {setup['n']} samples from the same starting noise (seed {setup['noise_seed']}); "
        "stochastic rules draw their noise from the same seed.",
        "- Error: per-sample distance of the final samples to a reference solution of the "
        f"probability-flow ODE ({setup['reference']['solver']}, rtol = atol = "
        f"{setup['reference']['rtol']:g}, float64) from the same noise; deterministic rules only.",
        f"- SW: sliced Wasserstein-2 distance ({setup['sw_projections']} projections) to "
        f"{setup['n']} exact mixture samples (seed {setup['data_seed']}).",
        "",
        "## Floors",
        "",
        f"- SW between the exact set and independent exact sets of the same size: mean "
        f"**{setup['sw_floor_mean']:.3g}** (range {min(fl):.3g} to {max(fl):.3g} over "
        f"{len(fl)} sets). Differences below this are sampling noise.",
        f"- SW of the exact ODE solution (the limit of every deterministic rule): "
        f"**{setup['sw_reference']:.3g}**.",
        f"- Error floor of the schedule itself (exact flow to sigma_min = {sched['sigma_min']:g}, "
        "then one denoiser call, vs the flow to 0): "
        f"RMS {setup['schedule_floor_rms']:.2g}, max {setup['schedule_floor_max']:.2g}.",
        "",
        "## Headlines",
        "",
    ]
    for b in budgets:
        at = [r for r in rows if r["budget"] == b]
        best_err = min((r for r in at if r["error_rms"] is not None),
                       key=lambda r: r["error_rms"], default=None)
        best_sw = min((r for r in at if r["sw"] is not None), key=lambda r: r["sw"], default=None)
        parts = []
        if best_err:
            parts.append(f"lowest error **{best_err['rule']}** (RMS {best_err['error_rms']:.3g}, "
                         f"{best_err['nfe']} NFE)")
        if best_sw:
            parts.append(f"lowest SW **{best_sw['rule']}** ({best_sw['sw']:.3g}, "
                         f"{best_sw['nfe']} NFE)")
        lines.append(f"- B = {b}: " + "; ".join(parts) + ".")
    bad = [r for r in rows if r["status"] != "ok" and not r["status"].startswith("does not fit")]
    unfit = sorted({(r["rule"], r["budget"]) for r in rows
                    if r["status"].startswith("does not fit")})
    if unfit:
        lines.append("- Did not fit a budget (one step costs more): "
                     + ", ".join(f"{lb} at B={b}" for lb, b in unfit) + ".")
    for r in bad:
        lines.append(f"- **{r['rule']} at B={r['budget']}: {r['status']}**")
    if setup["identical"]:
        lines.append("- Same final samples (to 1e-9) at every budget: "
                     + "; ".join(" = ".join(g) for g in setup["identical"]) + ".")
    lines += [
        "",
        "![paths](paths.png)",
        "",
        "![metrics vs NFE](metrics_vs_nfe.png)",
        "",
        "## Steps / NFE used at each budget",
        "",
        table("nfe", labels, lambda r: f"{r['steps']} / {r['nfe']}"),
        "## RMS distance to the exact ODE solution (deterministic rules)",
        "",
        table("error_rms", det, lambda r: f"{r['error_rms']:.3g}"),
        "## Max distance to the exact ODE solution (deterministic rules)",
        "",
        table("error_max", det, lambda r: f"{r['error_max']:.3g}"),
        f"## Sliced Wasserstein distance to exact samples (floor {setup['sw_floor_mean']:.3g})",
        "",
        table("sw", labels, lambda r: f"{r['sw']:.3g}"),
    ]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    p.add_argument("--n", type=int, default=N_SAMPLES, help="samples per run")
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    args = p.parse_args(argv)
    rows = run(args.out, args.budgets, args.n)
    print()
    print(study.markdown_table(
        [r for r in rows if r["budget"] == max(args.budgets)],
        ["rule", "steps", "nfe", "error_rms", "error_max", "sw"],
        {"error_rms": "{:.3g}", "error_max": "{:.3g}", "sw": "{:.3g}"}))
    print(f"results: {args.out}/summary.md")


if __name__ == "__main__":
    main()
