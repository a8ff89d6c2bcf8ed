"""The few-step frontier: the best sampler for 3 to 10 model calls, lab rules (on Karras
sigmas, on schedules tuned for them, and as optuna tuned them) against diffusers' best.

    python -m experiments few_step_frontier [--fast] [--workers 2]

Model ``fashion-edm``, 1,024 samples a cell, FID and KID against the 10,000 test images
(samples clamped to [-1, 1]). Every cell of a seed starts from the same noise.

- Lab rules on Karras sigmas (rho 7, 80 -> 0.002) at every budget: the solvers (euler,
  dpmpp_2m, dpmpp_3m, unipc, ipndm, lms) and the looking-ahead rules (extrapolate at
  gamma 2, ghvb at r 1.5, afs around dpmpp_2m and unipc, Fashion-MNIST's rms 0.83).
- The optimiser axis at 5 and 10 calls: heavy ball (momentum 0.2, 0.5; ghvb r 0.5, 0.8),
  Euler, extrapolation (gamma 1.5, 2.5, 3) and Adams-Bashforth (ghvb r 2, 3; ipndm is
  r 4); heavy ball on DPM-Solver++(2M); Adam with its preconditioner rescaled to mean 1.
- Tuned schedules: :func:`lab.schedules.optimize` per rule and budget (distance in
  ``fashion-classifier`` features, 32 calibration samples from a seed no cell uses).
- Tuned rules: each entry of ``results/tune/best.json`` (``python -m experiments tune``).
- Peers, at their documented best settings through ``lab.models.to_diffusers``:
  DPMSolverMultistep orders 2 and 3 and UniPC (bh2) with Karras sigmas, DEIS on its own
  timesteps (with Karras sigmas its loop skips a noise level), all with lower-order final
  steps. diffusers' IPNDMScheduler brings its own fixed noise schedule and cannot run a
  model's table; the lab's ``ipndm`` is the same algorithm on the study's sigmas.
- Error bars: seeds 1 and 2 beside seed 0 at 5 and 10 calls for the headline rules.

``render`` writes ``best.json`` (DESIGN.md section 4: per budget the best lab sampler,
reproducible with ``lab.rules.get`` and ``lab.sample``; read by ``lab.recommend``), the
frontier plot and a sample grid per budget. ``--fast``: 64 samples, budget 5, a handful
of cells.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import lab
from lab import io, study, viz
from lab.recommend import RECOMMENDATIONS

from . import rules_vs_nfe

NAME = "few_step_frontier"
MODEL = "fashion-edm"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
BUDGETS = [3, 4, 5, 6, 8, 10]
AXIS_BUDGETS = [5, 10]
RESULTS = Path(__file__).resolve().parents[2] / "results" / NAME
TUNED = RESULTS.parent / "tune" / "best.json"
RMS = 0.83  # Fashion-MNIST's rms in [-1, 1], the scale afs assumes


def rule(name: str, schedule="karras", **params) -> dict:
    return {"rule": name, "params": params, "schedule": schedule}


def peer(scheduler: str, **params) -> dict:
    return {"peer": scheduler, "params": params}


CORE = [rule("euler"), rule("lms"), rule("dpmpp_2m"), rule("dpmpp_3m"), rule("unipc"),
        rule("ipndm"), rule("extrapolate", gamma=2.0), rule("ghvb", r=1.5),
        rule("afs", rule="dpmpp_2m", scale=RMS), rule("afs", rule="unipc", scale=RMS)]
AXIS = [rule("momentum", beta=0.5), rule("momentum", beta=0.2), rule("ghvb", r=0.5),
        rule("ghvb", r=0.8), rule("ghvb", r=2.0), rule("ghvb", r=3.0),
        *(rule("extrapolate", gamma=g) for g in (1.5, 2.5, 3.0)),
        rule("heavy_ball", rule="dpmpp_2m", beta=0.2), rule("heavy_ball", rule="dpmpp_2m",
                                                             beta=0.5),
        rule("adam", betas=(0.0, 0.999), normalize="mean"), rule("adam", betas=(0.0, 0.999))]
OPTIMIZE = {"calibration": 32, "evaluations": 40, "distance": "features"}
FAST_OPTIMIZE = {"calibration": 8, "evaluations": 8, "reference_steps": 16,
                 "distance": "features"}
OPTIMIZED = [rule(r["rule"], {"optimized": OPTIMIZE}, **r["params"]) for r in CORE
             if r["rule"] in ("dpmpp_2m", "unipc", "ipndm", "extrapolate")]
KARRAS = {"use_karras_sigmas": True}
PEERS = [peer("DPMSolverMultistepScheduler", solver_order=2, lower_order_final=True, **KARRAS),
         peer("DPMSolverMultistepScheduler", solver_order=3, lower_order_final=True, **KARRAS),
         peer("UniPCMultistepScheduler", solver_type="bh2", lower_order_final=True, **KARRAS),
         peer("DEISMultistepScheduler", lower_order_final=True)]
HEADLINE = [rule("dpmpp_2m"), rule("unipc"), rule("dpmpp_2m", {"optimized": OPTIMIZE}),
            rule("unipc", {"optimized": OPTIMIZE}), PEERS[0], PEERS[2]]
SEEDS = [1, 2]
PREVIEW = 16  # samples a row carries as text, for the grids


def tuned_rules(path: Path = TUNED) -> list[dict]:
    """The configurations ``python -m experiments tune`` found, one cell spec each."""
    if not path.exists():
        return []
    entries = json.loads(path.read_text())
    return [{**rule(e["rule"], {"karras": e["schedule"]}, **e["params"]), "budgets": [e["budget"]]}
            for e in entries.values() if e["model"] == MODEL]


def cells(fast: bool = False) -> list[dict]:
    if fast:
        samplers = [rule("dpmpp_2m"), rule("extrapolate", gamma=2.0),
                    rule("dpmpp_2m", {"optimized": FAST_OPTIMIZE}), PEERS[0]]
        return study.pin_weights(study.grid(samplers, model=MODEL, budget=[5], seed=0,
                                            samples=64))
    grid = study.grid(CORE + OPTIMIZED + PEERS, model=MODEL, budget=BUDGETS, seed=0,
                      samples=1024)
    grid += study.grid(AXIS, model=MODEL, budget=AXIS_BUDGETS, seed=0, samples=1024)
    for spec in tuned_rules():
        budgets = spec.pop("budgets")
        grid += study.grid([spec], model=MODEL, budget=budgets, seed=0, samples=1024)
    grid += study.grid(HEADLINE, model=MODEL, budget=AXIS_BUDGETS, seed=SEEDS, samples=1024)
    return study.pin_weights(grid)


model = study.model_loader()


def karras(n: int) -> torch.Tensor:
    return lab.schedules.karras(n, SIGMA_MIN, SIGMA_MAX)


def schedule_of(cell: dict, rule_obj):
    """``(n -> sigmas, extra metrics)`` for the cell's schedule: ``"karras"`` (rho 7 over
    the study's range), ``{"optimized": options of lab.schedules.optimize}`` or
    ``{"karras": {"sigma_min", "sigma_max", "rho"}}`` (a tuned one)."""
    spec = cell["schedule"]
    if spec == "karras":
        return karras, {}
    if "optimized" in spec:
        found = lab.schedules.optimize(model(cell["model"]), cell["budget"], rule_obj,
                                       sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                                       **spec["optimized"])
        return (lambda n: found.tensor), {"schedule_calls": found.model_calls,
                                          "schedule_error": found.error,
                                          "karras_error": found.karras_error}
    k = spec["karras"]
    return (lambda n: lab.schedules.karras(n, k["sigma_min"], k["sigma_max"], k["rho"])), {}


def label_of(cell: dict) -> str:
    if "peer" in cell:
        order = cell["params"].get("solver_order")
        return f"{cell['peer'].removesuffix('Scheduler')}{order or ''} (diffusers)"
    name = lab.rules.get(cell["rule"], **cell["params"]).config_name
    spec = cell["schedule"]
    if spec == "karras":
        return name
    return f"{name}, {'optimized' if 'optimized' in spec else 'tuned'} schedule"


def run_cell(cell: dict) -> dict:
    out = {"label": label_of(cell), "kind": "diffusers" if "peer" in cell else "lab",
           "steps": None, "nfe": None, "fid": None, "kid": None, "kid_std": None}
    m = model(cell["model"])
    if "peer" in cell:
        noise = study.start_noise(m, cell["samples"], cell["seed"], 1.0)
        try:
            x, nfe, steps = rules_vs_nfe.sample_peer(cell, noise)
        except lab.NonFiniteError as err:
            return {**out, "status": f"non-finite: {err}"}
        if x is None:
            return {**out, "status": "does not fit the budget"}
        sigmas = None
    else:
        r = lab.rules.get(cell["rule"], **cell["params"])
        schedule, extra = schedule_of(cell, r)
        out.update(extra)
        traj, status = study.sample_cell(m, cell, schedule, sigma_max=SIGMA_MAX, rule=r)
        if traj is None:
            return {**out, "status": status}
        x, nfe, steps, sigmas = traj.x, traj.nfe, traj.steps, traj.sigmas.tolist()
    if not bool(torch.isfinite(x).all()):
        return {**out, "steps": steps, "nfe": nfe, "status": "non-finite samples"}
    return {**out, "steps": steps, "nfe": nfe, "sigmas": sigmas, "status": "ok",
            **lab.metrics.image_scores(x), "preview": viz.images_to_text(x[:PREVIEW].clamp(-1, 1))}


NOTEBOOK, PLOT = "08_looking_ahead.ipynb", "frontier.png"  # for results/README.md
FMT = {"fid": "{:.2f}", "fid_std": "{:.2f}", "kid": "{:.4f}", "seconds": "{:.0f}"}


def table_of(rows: list[dict]) -> list[dict]:
    return study.aggregate([study.flat(r) for r in rows], ["label", "kind", "budget", "nfe",
                                                           "status"], ["fid", "kid", "seconds"])


def best_by_budget(rows: list[dict], kind: str, seed: int = 0) -> dict[int, dict]:
    """The row of lowest FID per budget among ``kind`` ("lab" or "diffusers"), seed 0."""
    out: dict[int, dict] = {}
    for r in rows:
        m, c = r["metrics"], r["cell"]
        if m["kind"] != kind or c["seed"] != seed or m.get("fid") is None:
            continue
        if c["budget"] not in out or m["fid"] < out[c["budget"]]["metrics"]["fid"]:
            out[c["budget"]] = r
    return out


def best_record(rows: list[dict]) -> dict:
    """``best.json``: per budget the best lab sampler, as DESIGN.md section 4 writes it."""
    budgets = {}
    for budget, r in sorted(best_by_budget(rows, "lab").items()):
        c, m = r["cell"], r["metrics"]
        budgets[str(budget)] = {"rule": c["rule"], "params": c["params"], "sigmas": m["sigmas"],
                                "nfe": m["nfe"], f"fid_{c['samples']}": m["fid"],
                                "label": m["label"]}
    return {"model": MODEL, "budgets": budgets}


def headline(rows: list[dict]) -> list[str]:
    lab_best, peer_best = best_by_budget(rows, "lab"), best_by_budget(rows, "diffusers")
    table = [{"budget": b, "lab": lab_best[b]["metrics"]["label"],
              "lab FID": lab_best[b]["metrics"]["fid"],
              "best peer": peer_best[b]["metrics"]["label"] if b in peer_best else "n/a",
              "peer FID": peer_best[b]["metrics"]["fid"] if b in peer_best else None}
             for b in sorted(lab_best)]
    return [f"Best FID at {rows[0]['cell']['samples']} samples per model-call budget, lab "
            "against diffusers' best:", "",
            study.markdown_table(table, formats={"lab FID": "{:.2f}", "peer FID": "{:.2f}"})]


def render(rows: list[dict], out_dir) -> None:
    out_dir = Path(out_dir)
    flat = [study.flat(r) for r in rows]
    table = table_of(rows)
    budgets = sorted({r["budget"] for r in flat})
    record = best_record(rows)
    io.write_json(out_dir / "best.json", record)
    if out_dir.resolve() == RESULTS and record["budgets"]:  # the full run's answer ships
        io.write_json(RECOMMENDATIONS, record)

    lab_best, peer_best = best_by_budget(rows, "lab"), best_by_budget(rows, "diffusers")
    frontier = ([{"label": "lab best", "nfe": b, "fid": r["metrics"]["fid"]}
                 for b, r in sorted(lab_best.items())]
                + [{"label": "diffusers best", "nfe": b, "fid": r["metrics"]["fid"]}
                   for b, r in sorted(peer_best.items())]
                + [{"label": r["metrics"]["label"], "nfe": r["cell"]["budget"],
                    "fid": r["metrics"]["fid"]} for r in rows  # seed 0, like the bests
                   if r["metrics"]["label"] in ("dpmpp_2m", "euler") and r["cell"]["seed"] == 0])
    fig, ax = viz.new_figure(1, 1, panel_size=(6.0, 4.4))
    viz.plot_metric_vs_nfe(ax, [{**f, "nfe": f["nfe"]} for f in frontier], "fid", x="nfe",
                           group="label", xticks=budgets, ylabel="FID")
    viz.save_figure(fig, out_dir / "frontier.png", dpi=110)
    _sample_grids(rows, out_dir)

    lines = [
        f"# The few-step frontier on {MODEL}", "",
        study.generated_note(rows, NAME), "",
        f"Budgets {budgets} model calls. Lab rules on Karras sigmas ({SIGMA_MAX:g} -> "
        f"{SIGMA_MIN:g}, rho 7), on schedules optimised per rule and budget "
        "(`lab.schedules.optimize`, distance in classifier features), and as optuna tuned "
        "them; diffusers' schedulers at their documented best settings through "
        "`lab.models.to_diffusers`. Samples clamped to [-1, 1]; FID and KID against the "
        "10,000 test images in `fashion-classifier` features; FID std over seeds 0, 1, 2 "
        "where measured.", "",
        "![frontier](frontier.png)", "", "![samples](samples.png)", "",
        *headline(rows), "",
        "## Every sampler by budget", "",
        study.markdown_table(table, ["label", "kind", "budget", "nfe", "fid", "fid_std", "kid",
                                     "seconds", "status"], FMT),
    ]
    io.write_text(out_dir / "summary.md", "\n".join(lines))


def _sample_grids(rows: list[dict], out_dir: Path) -> None:
    """The first samples of the best lab sampler at each budget, from the rows' previews."""
    best = sorted(best_by_budget(rows, "lab").items())
    if not best:
        return
    fig, axes = viz.new_figure(len(best), 1, panel_size=(8.0, 0.9), squeeze=False)
    for ax, (budget, r) in zip(axes[:, 0], best):
        viz.plot_image_grid(ax, viz.images_from_text(r["metrics"]["preview"]), nrow=PREVIEW,
                            title=f"{budget} calls: {r['metrics']['label']}")
    viz.save_figure(fig, out_dir / "samples.png", dpi=110)
