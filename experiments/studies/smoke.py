"""A few rules on two exact 2-D models at small budgets: the runner's example and CI check.

    python -m experiments smoke [--fast]

Models: a correlated 2-D Gaussian (closed-form ODE solution) and a three-component 2-D
Gaussian mixture (tight-tolerance numerical ODE solution, :func:`lab.metrics.ode_reference`).
Rules: euler, heun, dpmpp_2m and momentum(beta=0.5), each at the largest number of Karras
steps (sigma 80 -> 0.002) whose model calls fit the budget, from per-seed noise.

Metrics per cell: ``steps``, ``nfe`` (counted), ``error_rms`` (distance of the final
samples to the exact ODE solution from the same noise) and ``sw`` (sliced Wasserstein
distance to as many exact samples of the model). ``--fast``: 64 samples, budgets 5 and
10, one seed, three rules.
"""

from __future__ import annotations

import functools

import torch

import lab
from lab import io, study, viz
from lab.metrics import exact_solution, rms_distance, sliced_wasserstein

NAME = "smoke"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
RULES = [{"rule": "euler", "params": {}}, {"rule": "heun", "params": {}},
         {"rule": "dpmpp_2m", "params": {}}, {"rule": "momentum", "params": {"beta": 0.5}}]
SW_PROJECTIONS = 64
METRICS = ("error_rms", "sw")


def cells(fast: bool = False) -> list[dict]:
    if fast:
        return study.grid(RULES[:3], model=["gaussian", "mixture"], budget=[5, 10], seed=[0],
                          samples=64)
    return study.grid(RULES, model=["gaussian", "mixture"], budget=[5, 10, 20], seed=[0, 1],
                      samples=512)


def gaussian() -> lab.Denoiser:
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    return lab.models.Gaussian(torch.tensor([1.0, -0.5], dtype=torch.float64), cov)


def mixture() -> lab.Denoiser:
    means = torch.tensor([[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]], dtype=torch.float64)
    covs = torch.stack([torch.diag(torch.tensor(v, dtype=torch.float64))
                        for v in ([0.3, 0.1], [0.2, 0.4], [0.25, 0.25])])
    return lab.models.GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2]))


model = study.model_loader(gaussian=gaussian, mixture=mixture)


def schedule(n: int) -> torch.Tensor:
    return lab.schedules.karras(n, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)


@functools.lru_cache(maxsize=8)
def reference(name: str, samples: int, seed: int) -> torch.Tensor:
    """The exact probability-flow ODE solution from the cell's starting noise (cached:
    cells that differ only in rule or budget share it)."""
    m = model(name)
    return exact_solution(m, study.start_noise(m, samples, seed, SIGMA_MAX, torch.float64),
                          SIGMA_MAX, 0.0)


def label(cell) -> str:
    return lab.rules.get(cell["rule"], **cell["params"]).config_name


def run_cell(cell: dict) -> dict:
    m = model(cell["model"])
    rule = lab.rules.get(cell["rule"], **cell["params"])
    traj, status = study.sample_cell(m, cell, schedule, sigma_max=SIGMA_MAX, rule=rule,
                                     dtype=torch.float64)
    if traj is None:
        return {"label": rule.config_name, "steps": None, "nfe": None, "error_rms": None,
                "sw": None, "status": status}
    exact = m.sample(cell["samples"], seed=10_000 + cell["seed"], dtype=torch.float64)
    error = None if rule.stochastic else rms_distance(
        traj.x, reference(cell["model"], cell["samples"], cell["seed"]))
    return {"label": rule.config_name, "steps": traj.steps, "nfe": traj.nfe, "error_rms": error,
            "sw": sliced_wasserstein(traj.x, exact, projections=SW_PROJECTIONS), "status": status}


def render(rows: list[dict], out_dir) -> None:
    flat = [study.flat(r) for r in rows]
    means = study.aggregate(flat, ["model", "label", "budget", "steps", "nfe"], METRICS)
    models = list(dict.fromkeys(r["model"] for r in flat))
    labels = list(dict.fromkeys(r["label"] for r in flat))
    styles = viz.rule_styles(labels)
    budgets = sorted({r["budget"] for r in flat})

    fig, axes = viz.new_figure(len(METRICS), len(models), panel_size=(4.4, 3.6), squeeze=False)
    for j, name in enumerate(models):
        at = [r for r in means if r["model"] == name and r["nfe"] is not None]
        for i, metric in enumerate(METRICS):
            viz.plot_metric_vs_nfe(axes[i, j], at, metric, group="label", groups=labels,
                                   styles=styles, legend=(i, j) == (0, 0), xticks=budgets,
                                   ylabel=metric)
            axes[i, j].set_title(f"{name}: {metric}", fontsize=10)
    viz.save_figure(fig, out_dir / "metrics_vs_nfe.png", dpi=110)

    seeds = sorted({r["seed"] for r in flat})
    fmt = {"error_rms": "{:.3g}", "sw": "{:.3g}", "error_rms_std": "{:.2g}",
           "sw_std": "{:.2g}", "seconds": "{:.2f}"}
    lines = [
        "# Smoke study: four rules on two exact 2-D models",
        "",
        study.generated_note(rows, NAME),
        "",
        f"Karras schedule sigma {SIGMA_MAX:g} -> {SIGMA_MIN:g}; budgets {budgets}; seeds {seeds}; "
        f"{', '.join(str(s) for s in sorted({r['samples'] for r in flat}))} samples a cell. "
        "error_rms: distance to the exact ODE solution from the same noise; sw: sliced "
        "Wasserstein distance to exact samples.",
        "",
        "![metrics vs NFE](metrics_vs_nfe.png)",
        "",
        f"## Mean over seeds ({len(seeds)})",
        "",
        study.markdown_table(means, ["model", "label", "budget", "steps", "nfe", "error_rms",
                                     "error_rms_std", "sw", "sw_std"], fmt,
                             headers={"label": "rule"}),
        "## Every cell",
        "",
        study.markdown_table(flat, ["key", "model", "label", "budget", "seed", "samples",
                                    "steps", "nfe", "error_rms", "sw", "seconds", "status"],
                             fmt, headers={"label": "rule"}),
    ]
    io.write_text(out_dir / "summary.md", "\n".join(lines))
