"""Which update rule gives the best Fashion-MNIST images for a budget of model calls,
beside diffusers' own schedulers on the same model.

    python -m experiments rules_vs_nfe [--fast]

Model ``fashion-edm``. Lab rules: euler, heun, midpoint, lms, dpmpp_2m, plain,
momentum (beta 0.3, 0.5, 0.7), nesterov (beta 0.5), adam and ancestral euler (eta 1),
each at the largest number of Karras steps (sigma 80 -> 0.002) whose model calls fit
the budget (5, 10, 20, 50). Peers: the same model through ``lab.models.to_diffusers``
under diffusers' DDIM (trailing spacing, so that it starts at sigma 80 like the rest),
Euler, Heun, LMS, DPMSolverMultistep and UniPC at their defaults, driven by their
public ``set_timesteps`` / ``step`` (:func:`lab.models.sample_with_scheduler`) at the
largest number of inference steps that fits. Every cell starts from the same noise
(``lab.noise``, seed 0); NFE is counted, not assumed.

Metrics per cell, on 1,024 samples clamped to [-1, 1]: FID and KID against the 10,000
test images (``lab.metrics.fid`` / ``kid``), seconds. heun and dpmpp_2m at 20 calls
also run on seeds 1 and 2 (disjoint noise): their FID spread is the error bar. No
sample grids: a row holds numbers only and the runner gives a cell no folder of its
own (``experiments.demo`` draws grids at 20 calls).

``--fast``: 16 samples, budgets 5 and 10, euler, heun and dpmpp_2m against diffusers'
DDIM and DPMSolverMultistep, seeds 1 and 2 for heun at 10 calls: 12 cells. Full: 76
cells, 1,599 model calls on 1,024 samples each, hours on a CPU: run it in the
background, it resumes.
"""

from __future__ import annotations

import torch

import lab
from lab import io, study, viz

NAME = "rules_vs_nfe"
MODEL = "fashion-edm"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def rule(name: str, **params) -> dict:
    return {"rule": name, "params": params}


def peer(scheduler: str, **params) -> dict:
    return {"peer": scheduler, "params": params}


RULES = [rule("euler"), rule("heun"), rule("midpoint"), rule("lms"), rule("dpmpp_2m"),
         rule("plain"), *(rule("momentum", beta=b) for b in (0.3, 0.5, 0.7)),
         rule("nesterov", beta=0.5), rule("adam"), rule("ancestral", rule="euler", eta=1.0)]
PEERS = [peer("DDIMScheduler", timestep_spacing="trailing"), peer("EulerDiscreteScheduler"),
         peer("HeunDiscreteScheduler"), peer("LMSDiscreteScheduler"),
         peer("DPMSolverMultistepScheduler"), peer("UniPCMultistepScheduler")]
HEADERS = {"label": "rule / peer", "nfe": "NFE", "fid": "FID", "fid_std": "FID std",
           "kid": "KID", "kid_std": "KID std"}
SPREAD_SEEDS = [1, 2]  # beside seed 0: three disjoint noise sets
FULL = {"samplers": RULES + PEERS, "budgets": [5, 10, 20, 50], "samples": 1024,
        "spread": [("heun", 20), ("dpmpp_2m", 20)]}
FAST = {"samplers": [r for r in RULES if r["rule"] in ("euler", "heun", "dpmpp_2m")]
        + [p for p in PEERS if p["peer"] in ("DDIMScheduler", "DPMSolverMultistepScheduler")],
        "budgets": [5, 10], "samples": 16, "spread": [("heun", 10)]}


def cells(fast: bool = False) -> list[dict]:
    size = FAST if fast else FULL
    main = study.grid(size["samplers"], model=MODEL, budget=size["budgets"], seed=0,
                      samples=size["samples"])
    return study.pin_weights(main + [{**c, "seed": s} for c in main for s in SPREAD_SEEDS
                                     if (c.get("rule"), c["budget"]) in size["spread"]])


model = study.model_loader()


def schedule(n: int) -> torch.Tensor:
    return lab.schedules.karras(n, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)


def peer_steps(scheduler, budget: int) -> int | None:
    """The most inference steps whose model calls fit ``budget``: one call per listed
    timestep (Heun lists its interior ones twice), so 2n - 1 for Heun, n for the rest."""
    best = None
    for n in range(1, budget + 1):
        scheduler.set_timesteps(n)
        if len(scheduler.timesteps) > budget:
            break
        best = n
    return best


def sample_peer(cell: dict, noise: torch.Tensor, denoiser=None):
    """diffusers' scheduler of ``cell`` on ``denoiser`` (default: the cell's shipped model)
    from ``noise`` (unit scale), in the noise's dtype."""
    import diffusers

    # "linear": Euler/Heun/LMS timesteps are fractional, their sigma linear in t; the
    # others sit on whole timesteps, where every map gives the table's sigma
    unet = lab.models.to_diffusers(model(cell["model"]) if denoiser is None else denoiser,
                                   timestep="linear", dtype=noise.dtype)
    sched = unet.make_scheduler(getattr(diffusers, cell["peer"]), **cell["params"])
    steps = peer_steps(sched, cell["budget"])
    if steps is None:
        return None, None, None
    sched.set_timesteps(steps)
    start = noise * float(lab.models.scheduler_sigmas(sched)[0])
    return (*lab.models.sample_with_scheduler(unet, sched, start), steps)


def sample_rule(cell: dict, noise: torch.Tensor):
    r = lab.rules.get(cell["rule"], **cell["params"])
    traj = lab.sample_at_budget(model(cell["model"]), noise * SIGMA_MAX, r, cell["budget"],
                                schedule, seed=cell["seed"], record="final")
    return (None, None, None) if traj is None else (traj.x, traj.nfe, traj.steps)


def run_cell(cell: dict) -> dict:
    if "peer" in cell:
        out = {"label": f"{cell['peer'].removesuffix('Scheduler')} (diffusers)",
               "kind": "diffusers", "stochastic": False}
    else:
        r = lab.rules.get(cell["rule"], **cell["params"])
        out = {"label": r.config_name, "kind": "lab", "stochastic": r.stochastic}
    out.update(steps=None, nfe=None, fid=None, kid=None, kid_std=None)
    noise = study.start_noise(model(cell["model"]), cell["samples"], cell["seed"], 1.0)
    try:
        x, nfe, steps = (sample_peer if "peer" in cell else sample_rule)(cell, noise)
    except lab.NonFiniteError as err:
        return {**out, "status": f"non-finite: {err}"}
    if x is None:
        return {**out, "status": "does not fit the budget"}
    if not bool(torch.isfinite(x).all()):
        return {**out, "steps": steps, "nfe": nfe, "status": "non-finite samples"}
    return {**out, "steps": steps, "nfe": nfe, **lab.metrics.image_scores(x), "status": "ok"}


NOTEBOOK, PLOT = "02_optimizers_as_samplers.ipynb", "fid_vs_nfe.png"  # for results/README.md


def table_of(rows: list[dict]) -> list[dict]:
    return study.aggregate([study.flat(r) for r in rows], ["label", "budget", "steps", "nfe",
                                                           "status"], ["fid", "kid", "seconds"])


def headline(rows: list[dict]) -> list[str]:
    """For results/README.md: FID (± its spread over seed sets, where measured) of each
    rule and peer at each budget."""
    def entry(r):
        if r["fid"] is None:
            return "n/a"
        return f"{r['fid']:.2f}" + (f" ± {r['fid_std']:.2f}" if r["fid_std"] else "")

    wide = study.pivot(table_of(rows), "label", "budget", entry, "B={}")
    return [f"FID at {rows[0]['cell']['samples']} samples, by model-call budget B:", "",
            study.markdown_table(wide, headers=HEADERS, right=list(wide[0])[1:])]


def render(rows: list[dict], out_dir) -> None:
    flat = [study.flat(r) for r in rows]
    table = table_of(rows)
    labels = list(dict.fromkeys(r["label"] for r in flat))
    peers = {r["label"] for r in flat if r["kind"] == "diffusers"}
    styles = viz.rule_styles(labels, dashed=[r["label"] for r in flat if r["stochastic"]])
    for lb in peers:  # the field's implementations: dotted, crosses
        styles[lb].update(linestyle=":", marker="x")
    budgets = sorted({r["budget"] for r in flat})

    fig, axes = viz.new_figure(1, 2, panel_size=(5.5, 4.4))
    for ax, metric, err in ((axes[0], "fid", "fid_std"), (axes[1], "kid", None)):
        viz.plot_metric_vs_nfe(ax, table, metric, group="label", groups=labels, styles=styles,
                               legend=False, xticks=budgets, ylabel=metric.upper(), yerr=err)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center",
               fontsize="x-small")  # 19 lines: outside, off the curves
    viz.save_figure(fig, out_dir / "fid_vs_nfe.png", dpi=110)

    seeds = sorted({r["seed"] for r in flat})
    samples = sorted({r["samples"] for r in flat})
    spread = sorted({(r["label"], r["budget"]) for r in table if r["fid_n"] > 1})
    fmt = {"fid": "{:.2f}", "fid_std": "{:.2f}", "kid": "{:.4f}", "kid_std": "{:.4f}",
           "seconds": "{:.0f}"}
    lines = [
        f"# Rules against model calls on {MODEL}, beside diffusers' schedulers",
        "",
        study.generated_note(rows, NAME),
        "",
        f"Budgets {budgets} model calls; each lab rule at the most Karras steps (sigma "
        f"{SIGMA_MAX:g} -> {SIGMA_MIN:g}) that fit, each diffusers scheduler (through "
        "`lab.models.to_diffusers`, its own timesteps) at the most inference steps that fit; "
        f"NFE counted. {', '.join(map(str, samples))} samples a cell, clamped to [-1, 1], "
        "FID and KID against the 10,000 Fashion-MNIST test images in `fashion-classifier` "
        "features. FID at this sample count is biased upward: compare rows with each other. "
        f"FID std: over {len(seeds)} disjoint noise sets (seeds {seeds}) for "
        f"{', '.join(f'{lb} at {b}' for lb, b in spread) or 'no cell'}, where FID and KID "
        "are their mean; other cells use seed 0.",
        "",
        "![FID and KID vs NFE](fid_vs_nfe.png)",
        "",
        "## By rule and budget",
        "",
        study.markdown_table(table, ["label", "budget", "steps", "nfe", "fid", "fid_std", "kid",
                                     "seconds", "status"], fmt, HEADERS),
        "## Every cell",
        "",
        study.markdown_table(flat, ["key", "label", "budget", "seed", "samples", "steps", "nfe",
                                    "fid", "kid", "kid_std", "seconds", "status"], fmt, HEADERS),
    ]
    io.write_text(out_dir / "summary.md", "\n".join(lines))
