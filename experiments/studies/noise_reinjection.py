"""Deterministic vs re-injected noise (ancestral eta, EDM churn, Langevin) at matched NFE.

    python -m experiments noise_reinjection [--fast]

Rules (:mod:`lab.rules.noise`, default parameters unless named): euler; ancestral euler
at eta 0 (which must equal euler: the summary lists rules with the same metric in every
cell), 0.5 and 1; EDM churn around euler and around heun (the EDM paper's stochastic
sampler); heun; a Langevin corrector after each euler or heun step. Each at the largest
number of Karras steps (sigma 80 -> 0.002) whose model calls fit the budget, so
stochastic and deterministic rules are compared at matched NFE. Fashion images are
clamped to [-1, 1] before scoring, as ``rules_vs_nfe`` does.

Models and metrics:

- ``mixture``: the 8-component 2-D ring mixture (:func:`lab.data.ring_mixture`), exact
  denoiser; ``sw``, the sliced Wasserstein distance to as many exact samples, over
  several seeds, beside ``sw_floor`` (an independent exact set: a perfect sampler's score).
- ``fashion-edm``: the shipped Fashion-MNIST model; ``fid`` and ``kid`` against the test
  set (:func:`lab.metrics.fid`, :func:`lab.metrics.kid`), 1,024 samples, seed 0; at 50
  calls heun, churn around heun, euler and ancestral eta 0.5 (and eta 0, which must
  stay equal to euler) also on seeds 1 and 2: the error bar of noise against no noise.

``--fast``: the mixture with 256 samples at budgets 10 and 20, two seeds; Fashion with 16
samples at budget 10, the rules around euler only (an FID of 16 samples is a smoke test,
not a measurement).
"""

from __future__ import annotations

import functools

import torch

import lab
from lab import io, study, viz
from lab.metrics import sliced_wasserstein

NAME = "noise_reinjection"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
schedule = functools.partial(lab.schedules.karras, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
FASHION = "fashion-edm"
ETAS = (0.0, 0.5, 1.0)
EULER_RULES = ([{"rule": "euler", "params": {}}]  # the wrappers' inner rule is euler by default
               + [{"rule": "ancestral", "params": {"eta": eta}} for eta in ETAS]
               + [{"rule": "churn", "params": {}}, {"rule": "langevin", "params": {}}])
HEUN_RULES = [{"rule": "heun", "params": {}}, {"rule": "churn", "params": {"rule": "heun"}},
              {"rule": "langevin", "params": {"rule": "heun"}}]
RULES = EULER_RULES + HEUN_RULES
# Fashion at 50 calls, where noise helps most: the best stochastic rule of each family and
# its deterministic base on two more disjoint noise sets, so the gap has an error bar
SPREAD_BUDGET, SPREAD_SEEDS = 50, [1, 2]
SPREAD_RULES = [("heun", {}), ("churn", {"rule": "heun"}), ("euler", {}),
                ("ancestral", {"eta": 0.5}), ("ancestral", {"eta": 0.0})]  # eta 0: = euler
DATA_SEED, FLOOR_SEED = 1000, 2000  # offsets: exact sets disjoint from each other per seed


def cells(fast: bool = False) -> list[dict]:
    return study.pin_weights(_grid(fast))


def _grid(fast: bool) -> list[dict]:
    if fast:  # on Fashion the rules around euler only: a network call costs the most
        return (study.grid([{"model": "mixture"}], RULES, budget=[10, 20], seed=[0, 1],
                           samples=256)
                + study.grid([{"model": FASHION}], EULER_RULES,
                             budget=[10], seed=[0], samples=16))
    fashion = study.grid([{"model": FASHION}], RULES, budget=[10, 20, 50], seed=[0],
                         samples=1024)
    spread = [{**c, "seed": s} for c in fashion for s in SPREAD_SEEDS
              if c["budget"] == SPREAD_BUDGET and (c["rule"], c["params"]) in SPREAD_RULES]
    return (study.grid([{"model": "mixture"}], RULES, budget=[10, 20, 50], seed=[0, 1, 2, 3, 4],
                       samples=2000)
            + fashion + spread)


model = study.model_loader(mixture=lab.data.ring_mixture)


@functools.lru_cache(maxsize=4)
def exact(samples: int, seed: int) -> tuple[torch.Tensor, float]:
    """Exact mixture samples for a seed, and the SW floor: an independent exact set's distance."""
    m = model("mixture")
    data = m.sample(samples, seed=DATA_SEED + seed, dtype=torch.float64)
    other = m.sample(samples, seed=FLOOR_SEED + seed, dtype=torch.float64)
    return data, sliced_wasserstein(other, data)


def run_cell(cell: dict) -> dict:
    mixture = cell["model"] == "mixture"
    rule = lab.rules.get(cell["rule"], **cell["params"])
    out = {"label": rule.config_name, "stochastic": rule.stochastic}
    traj, status = study.sample_cell(model(cell["model"]), cell, schedule, sigma_max=SIGMA_MAX,
                                     rule=rule, dtype=torch.float64 if mixture else torch.float32)
    if traj is None:
        return {**out, "status": status}
    out.update(steps=traj.steps, nfe=traj.nfe, status=status)
    if mixture:
        data, floor = exact(cell["samples"], cell["seed"])
        return {**out, "sw": sliced_wasserstein(traj.x, data), "sw_floor": floor}
    return {**out, **lab.metrics.image_scores(traj.x)}


METRICS = {"sw": "sliced Wasserstein distance to exact samples", "fid": "FID", "kid": "KID"}


NOTEBOOK, PLOT = "07_noise_or_not.ipynb", "fid_vs_nfe.png"  # for results/README.md


def means_of(flat: list[dict], present: list[str]) -> list[dict]:
    return study.aggregate(flat, ["model", "label", "stochastic", "budget", "steps", "nfe"],
                           [*present, "sw_floor"])


def headline(rows: list[dict]) -> list[str]:
    """For results/README.md: per model, its main metric by rule and budget."""
    flat = [study.flat(r) for r in rows]
    means = means_of(flat, [m for m in METRICS if any(r.get(m) is not None for r in flat)])
    out = []
    for m in dict.fromkeys(r["model"] for r in flat):
        at = [r for r in means if r["model"] == m]
        metric = "sw" if m == "mixture" else "fid"
        out += [f"**{m}**, {METRICS[metric]}:", "", pivot_table(at, metric), *best(at, metric), ""]
    return out


def render(rows: list[dict], out_dir) -> None:
    flat = [study.flat(r) for r in rows]
    present = [m for m in METRICS if any(r.get(m) is not None for r in flat)]
    means = means_of(flat, present)
    study.write_csv(out_dir / "means.csv", means)
    budgets = sorted({r["budget"] for r in flat})
    floors = {m: study.aggregate([r for r in {(r["model"], r["seed"]): r for r in flat}.values()
                                  if r["model"] == m], [], ["sw_floor"])[0]["sw_floor"]
              for m in {r["model"] for r in flat if r.get("sw_floor") is not None}}
    for metric in present[:2]:  # KID can be negative: no log plot; it is in the tables
        fig = viz.metric_vs_nfe_panels(
            [r for r in means if r[metric] is not None], metric, group="label",
            ylabel=METRICS[metric], xticks=budgets, yerr=f"{metric}_std",
            references={m: {"exact vs exact (floor)": f} for m, f in floors.items()})
        viz.save_figure(fig, out_dir / f"{metric}_vs_nfe.png", dpi=110)

    lines = ["# Noise re-injection at matched model calls", "",
             study.generated_note(rows, NAME), "",
             f"Karras schedule sigma {SIGMA_MAX:g} -> {SIGMA_MIN:g}; each rule at the largest "
             "step count whose model calls fit the budget B (NFE: counted calls). Every rule "
             "of a seed starts from the same noise. Tables: mean (± sd over seeds where there "
             "are several); n/a: does not fit the budget, or failed (status in the last table).",
             "", *(f"![{m} vs NFE]({m}_vs_nfe.png)" for m in present[:2]), "",
             "## Rules", "", study.markdown_table(study.rule_parameters(rows))]
    for m in dict.fromkeys(r["model"] for r in flat):
        at = [r for r in means if r["model"] == m]
        of_m = [r for r in flat if r["model"] == m]
        lines += [f"## {m}", "", f"{', '.join(map(str, sorted({r['samples'] for r in of_m})))} "
                  f"samples a cell, seeds {sorted({r['seed'] for r in of_m})}.", ""]
        if m in floors:
            lines += [f"SW floor, exact samples against an independent exact set: "
                      f"**{floors[m]:.3g}**.", ""]
        if m == FASHION:
            lines += fid_floor(sorted({r["samples"] for r in of_m}))
        for metric in present:
            if any(r[metric] is not None for r in at):
                lines += [f"### {metric}", "", pivot_table(at, metric), *best(at, metric),
                          *(f"- Same {metric} in every cell: {' = '.join(g)}."
                            for g in study.identical(of_m, "label", metric, ["budget", "seed"])),
                          ""]
    lines += ["## Every cell", "", study.markdown_table(
        flat, ["key", "model", "label", "budget", "seed", "samples", "steps", "nfe", *present,
               "seconds", "status"],
        {"sw": "{:.3g}", "fid": "{:.2f}", "kid": "{:.4f}", "seconds": "{:.1f}"},
        headers={"label": "rule"})]
    io.write_text(out_dir / "summary.md", "\n".join(lines))


def pivot_table(means, metric) -> str:
    def entry(r):
        if r[metric] is None:
            return "n/a"
        sd = r[f"{metric}_std"]
        fmt = "{:.4f}" if metric == "kid" else "{:.3g}"
        return fmt.format(r[metric]) + ("" if sd is None else " ± " + fmt.format(sd))

    entries = study.pivot(means, "label", "budget", entry, "B={}")
    return study.markdown_table(entries, headers={"label": "rule"}, right=list(entries[0])[1:])


def best(means, metric) -> list[str]:
    out = []
    for b in sorted({r["budget"] for r in means}):
        at = [r for r in means if r["budget"] == b and r[metric] is not None]
        if at:
            top = min(at, key=lambda r: r[metric])
            det = min((r for r in at if not r["stochastic"]), key=lambda r: r[metric], default=None)
            out.append(f"- B = {b}: lowest {metric} **{top['label']}** ({top[metric]:.3g})"
                       + (f"; best deterministic **{det['label']}** ({det[metric]:.3g})"
                          if det else "") + ".")
    return ["", *out] if out else []


def fid_floor(counts) -> list[str]:
    from lab.fid import floor as measured

    floor = measured()  # measured with the reference features, per sample count
    parts = [f"FID {v['train_vs_reference']['fid']['mean']:.2f} and KID "
             f"{v['train_vs_reference']['kid']['mean']:.4f} at {n} samples"
             for n, v in sorted(floor.items(), key=lambda kv: int(kv[0]))]
    if not parts:
        return []
    return [f"Real-vs-real floor (training images against the test reference, recorded with "
            f"the reference features): {'; '.join(parts)}. This study's cells use "
            f"{', '.join(map(str, counts))} samples; FID is biased upward at small counts.", ""]
