"""What does a perceptual training loss buy? ``fashion-edm`` against
``fashion-edm-perceptual``, judged by a feature network neither trained against.

    python -m experiments perceptual_loss [--fast]

``fashion-edm-perceptual`` is ``fashion-edm``'s recipe (same UNet, seed, data order and
steps) with ``0.1 x`` the LPIPS-style distance between ``fashion-perceptual`` features of
``x0_hat`` and ``x0`` added to the EDM loss. Both are scored by FID / KID in
``fashion-classifier`` features (another architecture and seed than
``fashion-perceptual``), so the perceptual model cannot have learned the judge.

Per cell (model x rule x budget, Karras sigmas 80 -> 0.002, 1,024 samples from the same
noise): FID and KID of the final samples, and along the trajectory the FID of each step's
prediction ``x0_hat`` (its distance to the data in feature space: how early each model's
predictions look like clothes), with the step's sigma. Rows carry a 16-image preview.

``--fast``: 32 samples, euler at budget 10.
"""

from __future__ import annotations

import functools

import lab
from lab import io, study, viz

NAME = "perceptual_loss"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
schedule = functools.partial(lab.schedules.karras, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
MODELS = ["fashion-edm", "fashion-edm-perceptual"]
PREVIEW = 16


def cells(fast: bool = False) -> list[dict]:
    if fast:
        return study.pin_weights(study.grid(model=MODELS, rule=["euler"], budget=[10], seed=0,
                                            samples=32))
    return study.pin_weights(study.grid(model=MODELS, rule=["euler", "heun", "dpmpp_2m"],
                                        budget=[10, 20], seed=0, samples=1024))


model = study.model_loader()


def run_cell(cell: dict) -> dict:
    traj, status = study.sample_cell(model(cell["model"]), cell, schedule, sigma_max=SIGMA_MAX,
                                     record="all")
    label = f"{cell['model']}, {cell['rule']}"
    if traj is None:
        return {"label": label, "status": status}
    return {"label": label, "steps": traj.steps, "nfe": traj.nfe, "status": status,
            **lab.metrics.image_scores(traj.x),
            "x0_sigma": [float(s) for s in traj.sigmas[:-1]],
            "x0_fid": [lab.metrics.image_scores(x0)["fid"] for x0 in traj.x0s],
            "preview": viz.images_to_text(traj.x[:PREVIEW])}


NOTEBOOK, PLOT = "06_perceptual_loss.ipynb", "fid.png"  # for results/README.md


def flat_of(rows: list[dict]) -> list[dict]:
    return [{**study.flat(r), "rule_budget": f"{r['cell']['rule']} B={r['cell']['budget']}"}
            for r in rows if r["metrics"]["status"] == "ok"]


def headline(rows: list[dict]) -> list[str]:
    """For results/README.md and the summary: FID, model x (rule, budget)."""
    wide = study.pivot(flat_of(rows), "model", "rule_budget", lambda r: f"{r['fid']:.2f}")
    return [f"FID at {rows[0]['cell']['samples']} samples (fashion-classifier features):", "",
            study.markdown_table(wide, right=list(wide[0])[1:])] if wide else []


def render(rows: list[dict], out_dir) -> None:
    flat = flat_of(rows)
    budgets = sorted({r["budget"] for r in flat})
    styles = viz.rule_styles(MODELS)
    rules = list(dict.fromkeys(r["rule"] for r in flat))

    fig, axes = viz.new_figure(1, 2, panel_size=(5.0, 3.9))
    for name in MODELS:
        for rule in rules:
            at = sorted((r for r in flat if (r["model"], r["rule"]) == (name, rule)),
                        key=lambda r: r["nfe"])
            axes[0].plot([r["nfe"] for r in at], [r["fid"] for r in at], label=f"{name}, {rule}",
                         **{**styles[name], "linestyle": ["-", "--", ":"][rules.index(rule) % 3]})
        last = max((r for r in flat if r["model"] == name), default=None,
                   key=lambda r: (r["rule"] == "heun", r["nfe"]))
        if last is None:  # every cell of this model failed: the table says how
            continue
        axes[1].loglog(last["x0_sigma"], last["x0_fid"], label=f"{name} ({last['rule']}, "
                       f"{last['nfe']} NFE)", **styles[name])
    axes[0].set(xscale="log", yscale="log", xlabel="NFE", ylabel="FID (fashion-classifier)",
                xticks=budgets, xticklabels=budgets)
    axes[1].set(xlabel="sigma at the step", ylabel="FID of x0_hat")
    axes[1].invert_xaxis()
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    viz.save_figure(fig, out_dir / "fid.png", dpi=110)
    shown = max(budgets)
    viz.save_figure(viz.preview_figure({f"{r['model']}, {r['rule']}": r["preview"]
                                        for r in flat if r["budget"] == shown}, ncols=len(rules)),
                    out_dir / "samples.png", dpi=110)

    fmt = {"fid": "{:.2f}", "kid": "{:.4f}", "seconds": "{:.0f}"}
    lines = [
        "# Perceptual training loss: fashion-edm against fashion-edm-perceptual", "",
        study.generated_note(rows, NAME), "",
        f"{', '.join(map(str, sorted({r['samples'] for r in flat})))} samples a cell from the "
        "same noise, clamped to [-1, 1]; FID / KID in `fashion-classifier` features (the "
        "perceptual model trained against `fashion-perceptual`'s). Right panel: FID of each "
        "step's x0_hat along one trajectory per model.", "",
        "![FID](fid.png)", "",
        f"Samples (B = {shown}, the first {PREVIEW}):", "", "![samples](samples.png)", "",
        "## FID, model x (rule, budget)", "", *headline(rows), "",
        "## Every cell", "",
        study.markdown_table([study.flat(r) for r in rows],
                             ["key", "label", "budget", "steps", "nfe", "fid", "kid",
                              "seconds", "status"], fmt, {"label": "model, rule"}),
    ]
    io.write_text(out_dir / "summary.md", "\n".join(lines))
