"""Does the model need the noise level? Seeing and blind Fashion-MNIST models, sampled on
the schedule's sigma and on a sigma read off the image.

    python -m experiments dropping_timestep [--fast]

Models (the model zoo):

- ``fashion-edm``: EDM preconditioning, the network sees ``c_noise(sigma)``;
- ``fashion-edm-blind``: the same network and recipe with a constant in place of
  ``c_noise`` (Sun et al. 2025): the preconditioning still uses the sampler's sigma;
- ``fashion-noise-blind``: predicts the added noise from ``x / rms(x)``; sigma appears
  nowhere, the rule's step alone uses it (fast.ai's lesson-9 model).

Sigma sources (``lab.sample(..., sigma_estimate=...)``): ``schedule``; ``fashion-sigma``,
the trained x -> log sigma regressor; ``rms``, ``sqrt(rms(x)^2 - data_rms^2)``, for the
EDM-blind model; ``noise``, ``rms(noise_hat)``, for the noise-predicting model. The
seeing model also runs on the regressor's estimate: what a wrong sigma costs a model that
trusts it. Rules euler (= DDIM), heun and dpmpp_2m at budgets of 10 and 20 model calls
(Karras sigmas 80 -> 0.002, the most steps that fit); the estimate replaces the step's
current sigma, the rule still steps to the schedule's next one.

Metrics per cell: FID and KID of 1,024 samples (clamped to [-1, 1]) against the test
set, and ``sigma_error``, the median over steps and samples of ``|sigma_hat / sigma - 1|``
against the schedule's sigma the step would have used (estimated sources only).

``--fast``: 16 samples (the preview's), budget 10, euler only.
"""

from __future__ import annotations

import functools

import torch

import lab
from lab import io, study, viz

NAME = "dropping_timestep"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
schedule = functools.partial(lab.schedules.karras, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
REGRESSOR = "fashion-sigma"
SOURCES = {"fashion-edm": ["schedule", REGRESSOR],
           "fashion-edm-blind": ["schedule", REGRESSOR, "rms"],
           "fashion-noise-blind": ["schedule", REGRESSOR, "noise"]}
RULES = ["euler", "heun", "dpmpp_2m"]
PREVIEW = 16  # samples a row carries, for the grids


def cells(fast: bool = False) -> list[dict]:
    models = [{"model": m, "sigma_from": s} for m, sources in SOURCES.items() for s in sources]
    if fast:
        return study.pin_weights(study.grid(models, rule=["euler"], budget=[10], seed=0,
                                            samples=PREVIEW))
    return study.pin_weights(study.grid(models, rule=RULES, budget=[10, 20], seed=0,
                                        samples=1024))


model = study.model_loader()


def sigma_error(traj, sigmas: torch.Tensor) -> float | None:
    if traj.sigma_hats is None:
        return None
    truth = sigmas[: len(traj.sigma_hats)].to(traj.sigma_hats.dtype)[:, None]
    return float((traj.sigma_hats / truth - 1).abs().median())


def run_cell(cell: dict) -> dict:
    traj, status = study.sample_cell(model(cell["model"]), cell, schedule, sigma_max=SIGMA_MAX,
                                     sigma_estimate=cell["sigma_from"])
    label = f"{cell['model']}, {cell['sigma_from']}, {cell['rule']}"
    if traj is None:
        return {"label": label, "status": status}
    return {"label": label, "steps": traj.steps, "nfe": traj.nfe, "status": status,
            "sigma_error": sigma_error(traj, schedule(traj.steps)),
            **lab.metrics.image_scores(traj.x), "preview": viz.images_to_text(traj.x[:PREVIEW])}


NOTEBOOK, PLOT = "05_dropping_the_timestep.ipynb", "fid_by_sigma_source.png"


def flat_of(rows: list[dict]) -> list[dict]:
    return [{**study.flat(r), "run": f"{r['cell']['model']}, {r['cell']['sigma_from']}",
             "rule_budget": f"{r['cell']['rule']} B={r['cell']['budget']}"} for r in rows]


def headline(rows: list[dict]) -> list[str]:
    """For results/README.md and the summary: FID, (model, sigma source) x (rule, budget)."""
    wide = study.pivot(flat_of(rows), "run", "rule_budget",
                       lambda r: "n/a" if r.get("fid") is None else f"{r['fid']:.2f}")
    return [f"FID at {rows[0]['cell']['samples']} samples:", "",
            study.markdown_table(wide, headers={"run": "model, sigma from"},
                                 right=list(wide[0])[1:])]


def render(rows: list[dict], out_dir) -> None:
    flat = flat_of(rows)
    budgets = sorted({r["budget"] for r in flat})
    runs = list(dict.fromkeys(r["run"] for r in flat))
    styles = viz.rule_styles(runs, dashed=[r for r in runs if not r.endswith("schedule")])
    rules = list(dict.fromkeys(r["rule"] for r in flat))
    fig, axes = viz.new_figure(1, len(rules), panel_size=(4.6, 3.8), squeeze=False)
    for ax, rule in zip(axes[0], rules):
        viz.plot_metric_vs_nfe(ax, [r for r in flat if r["rule"] == rule], "fid", group="run",
                               groups=runs, styles=styles, legend=rule == rules[0],
                               xticks=budgets, ylabel="FID")
        ax.set_title(rule, fontsize=10)
    viz.save_figure(fig, out_dir / "fid_by_sigma_source.png", dpi=110)
    shown = max(flat, key=lambda r: (r["rule"] == "heun", r["budget"]))  # heun, most calls
    at = [r for r in flat if (r["rule"], r["budget"]) == (shown["rule"], shown["budget"])
          and r.get("preview")]
    viz.save_figure(viz.preview_figure({r["run"]: r["preview"] for r in at}, ncols=3),
                    out_dir / "samples.png", dpi=110)

    fmt = {"fid": "{:.2f}", "kid": "{:.4f}", "sigma_error": "{:.3f}", "seconds": "{:.0f}"}
    lines = [
        "# Dropping the timestep: seeing and blind models, schedule or estimated sigma", "",
        study.generated_note(rows, NAME), "",
        f"{', '.join(map(str, sorted({r['samples'] for r in flat})))} samples a cell from the "
        f"same noise (seed 0), clamped to [-1, 1]; FID / KID against the 10,000 test images. "
        "`sigma_error`: median |sigma_hat / sigma - 1| over steps and samples, against the "
        "schedule's sigma. Dashed lines: sigma estimated from the image. n/a: failed (status "
        "in the last table).", "",
        "![FID by sigma source](fid_by_sigma_source.png)", "",
        f"Samples ({shown['rule']}, B = {shown['budget']}, the first {PREVIEW} of each run):", "",
        "![samples](samples.png)", "",
        "## FID (model, sigma source) x (rule, budget)", "", *headline(rows), "",
        "## Every cell", "",
        study.markdown_table(flat, ["key", "label", "budget", "steps", "nfe", "fid", "kid",
                                    "sigma_error", "seconds", "status"], fmt,
                             {"label": "model, sigma from, rule"}),
    ]
    io.write_text(out_dir / "summary.md", "\n".join(lines))
