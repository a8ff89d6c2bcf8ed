"""Where momentum pays: classifier-free guidance at growing scales, by update rule.

    python -m experiments guidance_momentum [--fast] [--workers 2]

Model ``fashion-edm-cond``, guided by :func:`lab.guidance.cfg` (the null class as the
negative), 1,024 class-balanced samples a cell (sample k asks for class k mod 10), every
cell of a seed from the same noise, Karras sigmas 80 -> 0.002 (rho 7) at 10 and 20 model
calls. Scales 1, 2, 4, 8 (12 was to follow if 8 showed no artifacts; it shows them).
Rules: Euler and DPM-Solver++(2M); heavy ball on DPM-Solver++(2M) at beta 0.2 and 0.5
(Wizadwongsa et al. 2023's HB, their ``b = 1 - beta``); ``ghvb`` at r 0.8 (heavy ball
on Euler) and 1.5 (between Euler and AB2); and ``extrapolate`` at gamma 2, its best in
``few_step_frontier``.

Per cell: FID and KID against the 10,000 test images (clamped samples), the share of
samples ``fashion-classifier`` labels as the class asked for, and the divergence
artifacts guidance causes, before clamping: the share of pixels beyond [-1, 1] and of
samples with any, the same beyond ±1.5 (every 10-call sample of DPM-Solver++(2M)
overshoots ±1 somewhere, at scale 1 too), and the mean largest |pixel|. Rows carry 16
samples for the grids.

Beside the grid, the checks the issue's targets need: DPM-Solver++(2M) at scale 3;
"anything but class k" (``cond=None, negative=k``) at scales 1 and 3, scored by the share
labelled k; seeds 1 and 2 at the headline cells (scale 8, 10 calls); the other fix for
strong guidance, guidance only for sigma in [0.28, 5.42] (Kynkaanniemi et al. 2024's
interval for EDM2), with and without heavy ball at scales 4 and 8; and img2img with
the unconditional ``fashion-edm`` on test images at strengths 0.1 to 1, scored by the rms
change and the share whose label changed. ``--fast``: 64 samples, scales 1 and 4, 10
calls, two rules and two img2img cells.
"""

from __future__ import annotations

from pathlib import Path

import torch

import lab
from lab import io, study, viz

NAME = "guidance_momentum"
MODEL, UNCONDITIONAL = "fashion-edm-cond", "fashion-edm"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
SCALES, BUDGETS = [1.0, 2.0, 4.0, 8.0], [10, 20]
HEADLINE_SCALE, HEADLINE_BUDGET, SEEDS = 8.0, 10, [1, 2]
CLASSES = 10
FAR = 1.5  # |x| beyond it: a visible artifact (the data end at 1; unguided 10-call runs reach 1.9)
STRENGTHS = [0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
PREVIEW = 16
INTERVAL = [0.28, 5.42]  # Kynkaanniemi et al. 2024, EDM2-S on ImageNet-512
RESULTS = Path(__file__).resolve().parents[2] / "results" / NAME


def rule(name: str, **params) -> dict:
    return {"rule": name, "params": params}


RULES = [rule("euler"), rule("dpmpp_2m"),
         *(rule("heavy_ball", rule="dpmpp_2m", beta=b) for b in (0.2, 0.5)),
         rule("ghvb", r=0.8), rule("ghvb", r=1.5), rule("extrapolate", gamma=2.0)]
HEADLINE_RULES = RULES[1:4]  # DPM-Solver++(2M) with and without heavy ball


def cells(fast: bool = False) -> list[dict]:
    if fast:
        grid = study.grid([RULES[1], RULES[2]], model=MODEL, scale=[1.0, 4.0],
                          budget=10, seed=0, samples=64)
        grid += study.grid([{"img2img": s} for s in (0.1, 0.9)], model=UNCONDITIONAL,
                           rule="dpmpp_2m", budget=10, seed=0, samples=64)
        return study.pin_weights(grid)
    # the targets' checks first (cheap), then the grid, then the seeds of the headline
    grid = study.grid([RULES[1]], model=MODEL, scale=3.0, budget=BUDGETS, seed=0, samples=1024)
    grid += study.grid([{**RULES[1], "negative": True}], model=MODEL, scale=[1.0, 3.0],
                       budget=20, seed=0, samples=1024)
    grid += study.grid([{"img2img": s} for s in STRENGTHS], model=UNCONDITIONAL,
                       rule="dpmpp_2m", budget=20, seed=0, samples=1024)
    grid += study.grid(RULES, model=MODEL, scale=SCALES, budget=BUDGETS, seed=0, samples=1024)
    grid += study.grid(HEADLINE_RULES, model=MODEL, scale=HEADLINE_SCALE, budget=HEADLINE_BUDGET,
                       seed=SEEDS, samples=1024)
    grid += study.grid([{**r, "interval": INTERVAL} for r in (RULES[1], RULES[3])], model=MODEL,
                       scale=[4.0, HEADLINE_SCALE], budget=HEADLINE_BUDGET, seed=0, samples=1024)
    return study.pin_weights(grid)


model = study.model_loader()


def karras(n: int) -> torch.Tensor:
    return lab.schedules.karras(n, SIGMA_MIN, SIGMA_MAX)


def label_of(cell: dict) -> str:
    if "img2img" in cell:
        return f"img2img {cell['img2img']:g}"
    lab.rules.get(cell["rule"], **cell["params"])  # a clear error for a bad cell
    params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in cell["params"].items())
    name = f"{cell['rule']}({params})" if params else cell["rule"]
    if "interval" in cell:
        name += ", interval [{:g}, {:g}]".format(*cell["interval"])
    return f"{name}, not k" if cell.get("negative") else name


def run_cell(cell: dict) -> dict:
    if "img2img" in cell:
        return _img2img_cell(cell)
    out = {"label": label_of(cell), "kind": "not k" if cell.get("negative") else "cfg",
           "nfe": None, "fid": None, "accuracy": None}
    m = model(cell["model"])
    wanted = lab.guidance.balanced_classes(cell["samples"], CLASSES)
    if cell.get("negative"):  # "anything but k": no class asked, class k pushed away
        guided = lab.guidance.cfg(m, None, cell["scale"], negative=wanted)
    else:
        guided = lab.guidance.cfg(m, wanted, cell["scale"], interval=cell.get("interval"))
    traj, status = study.sample_cell(guided, cell, karras, sigma_max=SIGMA_MAX)
    if traj is None:
        return {**out, "status": status}
    x = traj.x
    out.update(nfe=traj.nfe, steps=traj.steps,
               network_evaluations=traj.meta.get("network_evaluations"))
    if not bool(torch.isfinite(x).all()):
        return {**out, "status": "non-finite samples"}
    labels = lab.metrics.classify(x)
    if cell.get("negative"):
        out["share_k"] = float((labels == wanted).double().mean())
    else:
        out["accuracy"] = float((labels == wanted).double().mean())
    return {**out, "status": "ok", **lab.metrics.out_of_range(x, far=FAR),
            **lab.metrics.image_scores(x), "preview": viz.images_to_text(x[:PREVIEW].clamp(-1, 1))}


def _img2img_cell(cell: dict) -> dict:
    """img2img on the first test images: how far the result moves (rms) and whether the
    classifier still sees the same garment."""
    images, _ = lab.data.fashion_mnist("test")
    images = images[:cell["samples"]]
    traj = lab.img2img(model(cell["model"]), images, cell["img2img"], cell["rule"],
                       steps=cell["budget"], seed=cell["seed"], record="final")
    x = traj.x.clamp(-1, 1)
    before, after = lab.metrics.classify(images), lab.metrics.classify(x)
    return {"label": label_of(cell), "kind": "img2img", "nfe": traj.nfe, "status": "ok",
            "rms_change": float(lab.tensors.rms(x - images).mean()),
            "label_changed": float((before != after).double().mean()),
            "preview": viz.images_to_text(torch.cat([images[:PREVIEW // 2], x[:PREVIEW // 2]]))}


NOTEBOOK, PLOT = "09_guidance.ipynb", "guidance.png"  # for results/README.md
FMT = {"fid": "{:.2f}", "fid_std": "{:.2f}", "kid": "{:.4f}", "accuracy": "{:.3f}",
       "accuracy_std": "{:.3f}", "pixels_out": "{:.4f}", "samples_out": "{:.3f}",
       "pixels_far": "{:.5f}", "samples_far": "{:.3f}", "max_abs": "{:.2f}",
       "share_k": "{:.3f}", "rms_change": "{:.3f}", "label_changed": "{:.3f}",
       "seconds": "{:.0f}"}


def _grid_rows(rows: list[dict], seed: int = 0) -> list[dict]:
    return [study.flat(r) for r in rows
            if r["metrics"]["kind"] == "cfg" and r["cell"]["seed"] == seed]


def headline(rows: list[dict]) -> list[str]:
    flat = _grid_rows(rows)
    if not flat:
        return []
    lines = []
    for budget in sorted({r["budget"] for r in flat}):
        at = [r for r in flat if r["budget"] == budget]
        for metric in ("samples_far", "max_abs", "accuracy", "fid"):
            table = study.pivot(at, "label", "scale", lambda r, m=metric: r.get(m),
                                "scale {:g}", sort_columns=True)
            formats = dict.fromkeys(list(table[0])[1:], FMT[metric])
            lines += [f"`{metric}` at {budget} model calls, by guidance scale:", "",
                      study.markdown_table(table, formats=formats), ""]
    return lines


def render(rows: list[dict], out_dir) -> None:
    out_dir = Path(out_dir)
    flat = _grid_rows(rows)
    budgets = sorted({r["budget"] for r in flat})
    if flat:
        fig, axes = viz.new_figure(len(budgets), 3, panel_size=(4.2, 3.2), squeeze=False)
        groups = list(dict.fromkeys(r["label"] for r in flat))
        styles = viz.rule_styles(groups)  # one colour per rule in every panel
        for j, budget in enumerate(budgets):
            at = [r for r in flat if r["budget"] == budget and r["status"] == "ok"]
            for i, (metric, name, logy) in enumerate([
                    ("samples_far", f"share of samples beyond ±{FAR:g}", False),
                    ("accuracy", "share classified as asked", False), ("fid", "FID", True)]):
                ax = axes[j, i]
                viz.plot_metric_vs_nfe(ax, at, metric, x="scale", group="label", logy=logy,
                                       groups=groups, styles=styles, legend=False, ylabel=name,
                                       xticks=sorted({r["scale"] for r in at}))
                ax.set_xlabel("guidance scale")
                ax.set_title(f"{budget} model calls")
        handles = {lab_: h for ax in axes.flat for h, lab_ in zip(*ax.get_legend_handles_labels())}
        fig.legend(list(handles.values()), list(handles), loc="outside right center",
                   fontsize="small")
        viz.save_figure(fig, out_dir / PLOT, dpi=110)
    _sample_grids(rows, out_dir)

    table = study.aggregate([study.flat(r) for r in rows],
                            ["label", "kind", "scale", "budget", "nfe", "status"],
                            ["fid", "kid", "accuracy", "pixels_out", "samples_out", "pixels_far",
                             "samples_far", "max_abs", "share_k",
                             "rms_change", "label_changed", "seconds"])
    lines = [
        f"# Guidance and momentum on {MODEL}", "",
        study.generated_note(rows, NAME), "",
        "Classifier-free guidance (`lab.guidance.cfg`, the null class as the negative), "
        f"class-balanced samples, Karras sigmas ({SIGMA_MAX:g} -> {SIGMA_MIN:g}, rho 7). "
        "FID and KID against the 10,000 test images on clamped samples; accuracy: the share "
        "`fashion-classifier` labels as the class asked for; before clamping, `pixels_out`: "
        f"the share of pixels beyond [-1, 1], `samples_far`: the share of samples with a "
        f"pixel beyond ±{FAR:g} (a visible artifact; at 10 calls every DPM-Solver++(2M) "
        "sample has some pixel beyond ±1, at scale 1 too), `max_abs`: the mean over "
        "samples of the largest |pixel|. Std over seeds 0, 1, 2 where measured.", "",
        f"![guidance]({PLOT})", "",
        *headline(rows),
        "## Every cell", "",
        study.markdown_table(table, ["label", "kind", "scale", "budget", "nfe", "fid", "fid_std",
                                     "accuracy", "accuracy_std", "pixels_out", "samples_far",
                                     "max_abs",
                                     "share_k", "rms_change", "label_changed", "seconds",
                                     "status"], FMT), "",
        "## Cells", "",
        study.markdown_table([study.flat(r) for r in rows],
                             ["key", "label", "scale", "budget", "seed", "samples", "seconds"],
                             FMT),
    ]
    io.write_text(out_dir / "summary.md", "\n".join(lines))


def _sample_grids(rows: list[dict], out_dir: Path) -> None:
    """Per scale, the first samples of every rule at every budget (classes 0-9, 0-5)."""
    ok = [r for r in rows if r["metrics"]["kind"] == "cfg" and r["cell"]["seed"] == 0
          and r["metrics"].get("preview")]
    for scale in sorted({r["cell"]["scale"] for r in ok}):
        at = sorted((r for r in ok if r["cell"]["scale"] == scale),
                    key=lambda r: (r["cell"]["budget"], label_of(r["cell"])))
        fig, axes = viz.new_figure(len(at), 1, panel_size=(8.0, 0.9), squeeze=False)
        for ax, r in zip(axes[:, 0], at):
            viz.plot_image_grid(ax, viz.images_from_text(r["metrics"]["preview"]), nrow=PREVIEW,
                                title=f"{r['metrics']['label']}, {r['cell']['budget']} calls")
        viz.save_figure(fig, out_dir / f"samples_scale_{scale:g}.png", dpi=110)
