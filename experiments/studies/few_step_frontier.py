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
- Error bars: seeds 1 and 2 beside seed 0 at 5 and 10 calls for the headline rules and
  the tuned ones.

The same frontier on exact models (:mod:`experiments.studies.exact_error_vs_nfe`'s ring
mixture and 784-d Gaussian, float64, its seed-0 noise and sample counts): ``error_rms``
to the exact ODE solution from the same noise and ``sw`` to exact samples. Every rule of
the core and of the optimiser axis at every budget (afs at the model's data rms), each
on Karras sigmas and on its :func:`lab.schedules.optimize` schedule (distance ``"rms"``),
and the same diffusers peers through ``lab.models.to_diffusers``.

``render`` writes ``best.json`` (DESIGN.md section 4: per budget the best lab sampler,
reproducible with ``lab.rules.get`` and ``lab.sample``; read by ``lab.recommend``), the
frontier plot and a sample grid per budget. ``--fast``: 64 samples, budget 5, a handful
of cells; on the exact models 128 samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import lab
from lab import io, study, viz
from lab.metrics import rms_distance, sliced_wasserstein
from lab.recommend import RECOMMENDATIONS

from . import exact_error_vs_nfe, rules_vs_nfe

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

EXACT = exact_error_vs_nfe.MODELS  # name -> factory of the exact float64 model
EXACT_SAMPLES = exact_error_vs_nfe.SAMPLES  # its noise, so Karras cells agree with that study
DATA_RMS = {"mixture": 3.77, "gaussian": 0.60}  # the data's rms, the scale afs assumes
EXACT_OPTIMIZE = {"calibration": 64, "evaluations": 60, "reference_steps": 128,
                  "distance": "rms"}
FAST_EXACT_OPTIMIZE = {"calibration": 16, "evaluations": 12, "reference_steps": 32,
                       "distance": "rms"}
FAST_EXACT = [rule("euler"), rule("extrapolate", gamma=1.0), rule("dpmpp_2m"),
              rule("dpmpp_2m", {"optimized": FAST_EXACT_OPTIMIZE}), PEERS[0]]


def exact_rules(name: str) -> list[dict]:
    """The core and the optimiser axis on exact model ``name`` (afs at its data's rms),
    each on Karras sigmas and on its optimised schedule."""
    rules = [rule("afs", **{**r["params"], "scale": DATA_RMS[name]}) if r["rule"] == "afs"
             else r for r in CORE + AXIS]
    return rules + [{**r, "schedule": {"optimized": EXACT_OPTIMIZE}} for r in rules]


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
        exact = [c for m in EXACT for c in study.grid(FAST_EXACT, model=m, budget=[5], seed=0,
                                                       samples=128)]
        return study.pin_weights(study.grid(samplers, model=MODEL, budget=[5], seed=0,
                                            samples=64) + exact)
    grid = study.grid(CORE + OPTIMIZED + PEERS, model=MODEL, budget=BUDGETS, seed=0,
                      samples=1024)
    grid += study.grid(AXIS, model=MODEL, budget=AXIS_BUDGETS, seed=0, samples=1024)
    for spec in tuned_rules():
        budgets = spec.pop("budgets")
        grid += study.grid([spec], model=MODEL, budget=budgets, seed=0, samples=1024)
        at_axis = [b for b in budgets if b in AXIS_BUDGETS]  # the headline's error bars too
        if at_axis:
            grid += study.grid([spec], model=MODEL, budget=at_axis, seed=SEEDS, samples=1024)
    grid += study.grid(HEADLINE, model=MODEL, budget=AXIS_BUDGETS, seed=SEEDS, samples=1024)
    for name, samples in EXACT_SAMPLES.items():
        grid += study.grid(exact_rules(name) + PEERS, model=name, budget=BUDGETS, seed=0,
                           samples=samples)
    return study.pin_weights(grid)


model = study.model_loader(**EXACT)


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
    exact = cell["model"] in EXACT
    out = {"label": label_of(cell), "kind": "diffusers" if "peer" in cell else "lab",
           "steps": None, "nfe": None,
           **dict.fromkeys(["error_rms", "sw"] if exact else ["fid", "kid", "kid_std"])}
    m = model(cell["model"])
    dtype = torch.float64 if exact else torch.float32
    if "peer" in cell:
        noise = study.start_noise(m, cell["samples"], cell["seed"], 1.0, dtype)
        try:
            x, nfe, steps = rules_vs_nfe.sample_peer(cell, noise, m)
        except lab.NonFiniteError as err:
            return {**out, "status": f"non-finite: {err}"}
        if x is None:
            return {**out, "status": "does not fit the budget"}
        sigmas = None
    else:
        r = lab.rules.get(cell["rule"], **cell["params"])
        schedule, extra = schedule_of(cell, r)
        out.update(extra)
        # noise at the schedule's start (a tuned sigma_max); exact cells are scored
        # against the ODE solution from sigma 80, so theirs must start there
        traj, status = study.sample_cell(m, cell, schedule, rule=r, dtype=dtype,
                                         sigma_max=SIGMA_MAX if exact else None)
        if traj is None:
            return {**out, "status": status}
        x, nfe, steps, sigmas = traj.x, traj.nfe, traj.steps, traj.sigmas.tolist()
    if not bool(torch.isfinite(x).all()):
        return {**out, "steps": steps, "nfe": nfe, "status": "non-finite samples"}
    scores = exact_scores(cell, x) if exact else {
        **lab.metrics.image_scores(x), "preview": viz.images_to_text(x[:PREVIEW].clamp(-1, 1))}
    return {**out, "steps": steps, "nfe": nfe, "sigmas": sigmas, "status": "ok", **scores}


def exact_scores(cell: dict, x: torch.Tensor) -> dict:
    """RMS distance to the exact ODE solution from the cell's noise, SW to exact samples:
    the references of ``exact_error_vs_nfe`` (the same noise, cached per model and seed)."""
    ref = exact_error_vs_nfe.reference(cell["model"], cell["samples"], cell["seed"])
    return {"error_rms": rms_distance(x, ref.solution), "sw": sliced_wasserstein(x, ref.exact)}


NOTEBOOK, PLOT = "08_looking_ahead.ipynb", "frontier.png"  # for results/README.md
FMT = {"fid": "{:.2f}", "fid_std": "{:.2f}", "kid": "{:.4f}", "seconds": "{:.0f}"}


def table_of(rows: list[dict]) -> list[dict]:
    return study.aggregate([study.flat(r) for r in rows], ["label", "kind", "budget", "nfe",
                                                           "status"], ["fid", "kid", "seconds"])


def best_by_budget(rows: list[dict], kind: str, seed: int = 0, model: str = MODEL,
                   metric: str = "fid", schedule=None) -> dict[int, dict]:
    """The row of lowest ``metric`` per budget among ``kind`` ("lab" or "diffusers") on
    ``model``, seed 0; ``schedule`` (e.g. "karras") keeps the lab rows on that schedule."""
    out: dict[int, dict] = {}
    for r in rows:
        m, c = r["metrics"], r["cell"]
        if (m["kind"] != kind or c["model"] != model or c["seed"] != seed
                or m.get(metric) is None or schedule not in (None, c.get("schedule"))):
            continue
        if c["budget"] not in out or m[metric] < out[c["budget"]]["metrics"][metric]:
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


def fid_headline(rows: list[dict]) -> list[str]:
    lab_best, peer_best = best_by_budget(rows, "lab"), best_by_budget(rows, "diffusers")
    table = [{"budget": b, "lab": lab_best[b]["metrics"]["label"],
              "lab FID": lab_best[b]["metrics"]["fid"],
              "best peer": peer_best[b]["metrics"]["label"] if b in peer_best else "n/a",
              "peer FID": peer_best[b]["metrics"]["fid"] if b in peer_best else None}
             for b in sorted(lab_best)]
    samples = next(r["cell"]["samples"] for r in rows if r["cell"]["model"] == MODEL)
    return [f"Best FID at {samples} samples per model-call budget, lab against diffusers' "
            "best:", "",
            study.markdown_table(table, formats={"lab FID": "{:.2f}", "peer FID": "{:.2f}"})]


# ---- the exact side --------------------------------------------------------------------

EXACT_FMT = "{:.3g}"


def axis_position(cell: dict) -> dict[str, float]:
    """Where a cell's rule sits on the optimiser axes: ``gamma`` of the extrapolated
    gradient (Euler is gamma 1) and the GHVB order ``r`` (heavy ball ``momentum(beta)`` is
    r = 1 - beta, Euler r = 1, iPNDM of order 4 r = 4). Empty for other rules."""
    name = cell.get("rule")
    if name not in ("euler", "extrapolate", "ghvb", "momentum", "ipndm"):
        return {}
    config = lab.rules.get(name, **cell["params"]).config
    return {"euler": {"gamma": 1.0, "r": 1.0},
            "extrapolate": {"gamma": config.get("gamma")},
            "ghvb": {"r": config.get("r")},
            "momentum": {"r": round(1 - config.get("beta", 0.0), 9)},
            "ipndm": {"r": 4.0} if config.get("order") == 4 else {}}[name]


def best_on_axis(rows: list[dict], axis: str, budget: int, optimized: bool) -> str:
    """The ``gamma`` or ``r`` of lowest error at ``budget`` among the rows on the axis
    (Karras sigmas, or each rule's optimised schedule), with that error."""
    at = [(axis_position(r["cell"])[axis], r["metrics"]["error_rms"]) for r in rows
          if r["cell"]["budget"] == budget and axis in axis_position(r["cell"])
          and ("optimized" in r["cell"]["schedule"]) == optimized
          and r["metrics"].get("error_rms") is not None]
    if not at:
        return "n/a"
    value, error = min(at, key=lambda a: a[1])
    return f"{value:g} ({EXACT_FMT.format(error)})"


def exact_table(rows: list[dict], name: str, axes: bool = True) -> str:
    """Per budget on exact model ``name``: the lab's best and diffusers' best by
    ``error_rms``, the lab's best on Karras sigmas, DPM-Solver++(2M) on Karras, and with
    ``axes`` the best gamma and r on Karras and on optimised schedules."""
    of = [r for r in rows if r["cell"]["model"] == name]
    best = {k: best_by_budget(of, kind, model=name, metric="error_rms", schedule=sched)
            for k, kind, sched in (("lab", "lab", None), ("karras", "lab", "karras"),
                                   ("peer", "diffusers", None))}
    dpm = {r["cell"]["budget"]: r["metrics"]["error_rms"] for r in of
           if r["cell"].get("rule") == "dpmpp_2m" and r["cell"]["schedule"] == "karras"}

    def named(r):
        return f"{r['metrics']['label']} ({EXACT_FMT.format(r['metrics']['error_rms'])})"

    table = []
    for b in sorted(best["lab"]):
        entry = {"budget": b, "lab best": named(best["lab"][b]),
                 "lab best, Karras": named(best["karras"][b]),
                 "diffusers best": named(best["peer"][b]) if b in best["peer"] else "n/a",
                 "dpmpp_2m, Karras": dpm.get(b)}
        if axes:
            entry |= {f"best {a}, {s}": best_on_axis(of, a, b, s == "optimized")
                      for s in ("Karras", "optimized") for a in ("gamma", "r")}
        table.append(entry)
    return study.markdown_table(table, formats={"dpmpp_2m, Karras": EXACT_FMT})


def exact_models(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["cell"]["model"] for r in rows if r["cell"]["model"] in EXACT))


def exact_headline(rows: list[dict]) -> list[str]:
    out = []
    for name in exact_models(rows):
        out += ["", f"On the exact `{name}` model, RMS distance to the exact ODE solution "
                "(label and error per budget):", "", exact_table(rows, name, axes=False)]
    return out


def headline(rows: list[dict]) -> list[str]:
    return [*fid_headline(rows), *exact_headline(rows)]


def _exact_plot(rows: list[dict], out_dir: Path) -> None:
    """Error against calls per exact model: the lab's best (any schedule, Karras only),
    diffusers' best, and the axis's landmarks on Karras sigmas."""
    named = {"dpmpp_2m": "dpmpp_2m", "euler": "euler", "extrapolate": "extrapolate(gamma=2)",
             "momentum(beta=0.5)": "momentum(beta=0.5)", "ghvb(r=3)": "ghvb(r=3)",
             "ipndm": "ipndm"}  # label -> legend (gamma 2 is extrapolate's default)
    points = []
    for name in exact_models(rows):
        for label, kind, sched in (("lab best", "lab", None),
                                   ("lab best, Karras", "lab", "karras"),
                                   ("diffusers best", "diffusers", None)):
            points += [{"model": name, "label": label, "nfe": b,
                        "error_rms": r["metrics"]["error_rms"]}
                       for b, r in sorted(best_by_budget(rows, kind, model=name,
                                                         metric="error_rms",
                                                         schedule=sched).items())]
        points += [{"model": name, "label": named[r["metrics"]["label"]],
                    "nfe": r["cell"]["budget"],
                    "error_rms": r["metrics"]["error_rms"]} for r in rows
                   if r["cell"]["model"] == name and r["cell"].get("schedule") == "karras"
                   and r["metrics"]["label"] in named]
    fig = viz.metric_vs_nfe_panels(points, "error_rms", group="label", xticks=BUDGETS,
                                   ylabel="RMS distance to the exact ODE solution")
    viz.save_figure(fig, out_dir / "exact_frontier.png", dpi=110)


def _exact_lines(rows: list[dict]) -> list[str]:
    lines = ["## The exact side: the same frontier against exact answers", "",
             f"The ring mixture (2-D) and the 784-d Gaussian of `exact_error_vs_nfe`, float64, "
             "from that study's seed-0 noise: `error_rms` is the RMS distance of the final "
             "samples to the exact ODE solution from the same noise, `sw` the sliced "
             "Wasserstein distance to as many exact samples. Every rule of the core and the "
             "optimiser axis at every budget, on Karras sigmas and on its own schedule from "
             f"`lab.schedules.optimize` ({EXACT_OPTIMIZE}); afs at the model's data rms "
             f"({DATA_RMS}). Parentheses: the error. gamma: Euler is 1, `extrapolate` "
             "the rest; r: `momentum(beta)` is 1 - beta, Euler 1, `ghvb` the rest, iPNDM 4.",
             "", "![exact frontier](exact_frontier.png)", ""]
    for name in exact_models(rows):
        of = [study.flat(r) for r in rows if r["cell"]["model"] == name]
        lines += [f"### {name}, {of[0]['samples']} samples", "", exact_table(rows, name), ""]
        for metric, what in (("error_rms", "RMS error to the exact ODE solution"),
                             ("sw", "SW distance to exact samples")):
            wide = study.pivot(of, "label", "budget", lambda r, m=metric: (
                EXACT_FMT.format(r[m]) if r[m] is not None else r["status"]), "B={}")
            lines += [f"{what}, every sampler:", "",
                      study.markdown_table(wide, right=list(wide[0])[1:]), ""]
    return lines


def render(rows: list[dict], out_dir) -> None:
    out_dir = Path(out_dir)
    fashion = [r for r in rows if r["cell"]["model"] == MODEL]
    flat = [study.flat(r) for r in fashion]
    table = table_of(fashion)
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
                    "fid": r["metrics"]["fid"]} for r in fashion  # seed 0, like the bests
                   if r["metrics"]["label"] in ("dpmpp_2m", "euler") and r["cell"]["seed"] == 0])
    fig, ax = viz.new_figure(1, 1, panel_size=(6.0, 4.4))
    viz.plot_metric_vs_nfe(ax, [{**f, "nfe": f["nfe"]} for f in frontier], "fid", x="nfe",
                           group="label", xticks=budgets, ylabel="FID")
    viz.save_figure(fig, out_dir / "frontier.png", dpi=110)
    _sample_grids(rows, out_dir)
    if exact_models(rows):
        _exact_plot(rows, out_dir)

    lines = [
        f"# The few-step frontier on {MODEL}, and on exact models", "",
        study.generated_note(rows, NAME), "",
        f"Budgets {budgets} model calls. Lab rules on Karras sigmas ({SIGMA_MAX:g} -> "
        f"{SIGMA_MIN:g}, rho 7), on schedules optimised per rule and budget "
        "(`lab.schedules.optimize`, distance in classifier features), and as optuna tuned "
        "them; diffusers' schedulers at their documented best settings through "
        "`lab.models.to_diffusers`. Samples clamped to [-1, 1]; FID and KID against the "
        "10,000 test images in `fashion-classifier` features; FID std over seeds 0, 1, 2 "
        "where measured.", "",
        "![frontier](frontier.png)", "", "![samples](samples.png)", "",
        *fid_headline(rows), "",
        "## Every sampler by budget", "",
        study.markdown_table(table, ["label", "kind", "budget", "nfe", "fid", "fid_std", "kid",
                                     "seconds", "status"], FMT), "",
        *(_exact_lines(rows) if exact_models(rows) else []),
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
