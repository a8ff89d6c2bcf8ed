"""How good are the shipped Fashion-MNIST models? The figures the README and the quality
guards (``tests/test_fashion_models.py``) quote.

    python -m experiments model_zoo [--fast]

Each diffusion model of the zoo sampled with heun at 20 steps (39 model calls; Karras
sigmas 80 -> 0.002) from seed 0, scored by FID and KID against the 10,000 test images at
512 samples (checked by the guards, which sample the first 256) and at 2,048 (the
README's), beside the real-vs-real floor at both sizes (``lab.fid.floor()``). Sample k
depends on (seed, k) only, so the 512 are the first 512 of the 2,048. The blind models
also run with the noise level estimated from the image (``fashion-sigma``;
``rms(noise_hat)`` for the noise-predicting model). The
class-conditional ``fashion-edm-cond`` runs twice, at guidance scale 1: class-balanced
(sample k asks for class k mod 10; also scored by the share ``fashion-classifier``
labels as asked) and with the null class (unconditional).

Models not in the zoo are left out of the grid; once one is shipped, a re-run samples
only its cells. ``--fast``: 64 samples, 4 steps, ``fashion-edm`` only.
"""

from __future__ import annotations

import lab
from lab import io, study, viz

NAME = "model_zoo"
NOTEBOOK, PLOT = "00_tour.ipynb", "samples.png"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
RUNS = [("fashion-edm", None), ("fashion-edm-6k", None),
        ("fashion-edm-blind", None), ("fashion-edm-blind", "fashion-sigma"),
        ("fashion-noise-blind", None), ("fashion-noise-blind", "noise"),
        ("fashion-edm-perceptual", None)]
CONDITIONAL = [("fashion-edm-cond", "balanced"), ("fashion-edm-cond", "null")]
SIZES = (512, 2048)
PREVIEW = 16


def cells(fast: bool = False) -> list[dict]:
    if fast:
        return study.pin_weights([{"model": "fashion-edm", "sigma_from": "schedule",
                                   "rule": "heun", "steps": 4, "seed": 0, "samples": 64}])
    present = set(lab.zoo.available())
    base = {"rule": "heun", "steps": 20, "seed": 0, "samples": max(SIZES)}
    return study.pin_weights([{"model": m, "sigma_from": s or "schedule", **base}
                              for m, s in RUNS if m in present]
                             + [{"model": m, "sigma_from": "schedule", "cond": c, **base}
                                for m, c in CONDITIONAL if m in present])


model = study.model_loader()


def run_cell(cell: dict) -> dict:
    m = model(cell["model"])
    source, cond = cell["sigma_from"], cell.get("cond")
    sig = lab.schedules.karras(cell["steps"], sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    x = study.start_noise(m, cell["samples"], cell["seed"], float(sig[0]))
    wanted = lab.guidance.balanced_classes(cell["samples"])
    if cond is not None:  # scale 1: the conditional model itself, asked for a class or not
        m = lab.guidance.cfg(m, wanted if cond == "balanced" else None, 1.0)
    traj = lab.sample(m, x, sig, cell["rule"], record="final", sigma_estimate=source)
    out = {"label": f"{cell['model']}, {cond or source}", "nfe": traj.nfe, "status": "ok",
           "preview": viz.images_to_text(traj.x[:PREVIEW])}
    if cond == "balanced":
        out["accuracy"] = lab.metrics.class_accuracy(traj.x, wanted)
    for n in sorted({min(s, cell["samples"]) for s in SIZES}):
        out.update({f"{k}_{n}": v for k, v in lab.metrics.image_scores(traj.x[:n]).items()})
    return out


def headline(rows: list[dict]) -> list[str]:
    from lab.fid import floor

    sizes = sorted({int(k.split("_")[1]) for r in rows for k in r["metrics"]
                    if k.startswith("fid_")})
    floors = floor()

    def real(n, metric):  # training images against the test reference, mean of 5 draws
        return floors.get(str(n), {}).get("train_vs_reference", {}).get(metric, {}).get("mean")

    table = [{"model, sigma from": r["metrics"]["label"], "NFE": r["nfe"],
              **{f"FID@{n}": r["metrics"][f"fid_{n}"] for n in sizes},
              **{f"KID@{n}": r["metrics"][f"kid_{n}"] for n in sizes},
              "accuracy": r["metrics"].get("accuracy")} for r in rows]
    table.append({"model, sigma from": "real vs real (floor)", "NFE": None,
                  **{f"FID@{n}": real(n, "fid") for n in sizes},
                  **{f"KID@{n}": real(n, "kid") for n in sizes}})
    fmt = {**{f"FID@{n}": "{:.2f}" for n in sizes}, **{f"KID@{n}": "{:.4f}" for n in sizes},
           "accuracy": "{:.3f}"}
    return [f"heun, {rows[0]['cell']['steps']} steps, seed 0; FID / KID against the test set "
            "(floor: training images against it, `lab.fid.floor()`); accuracy: the share of "
            "class-conditional samples `fashion-classifier` labels as asked:", "",
            study.markdown_table(table, formats=fmt)]


def render(rows: list[dict], out_dir) -> None:
    viz.save_figure(viz.preview_figure({r["metrics"]["label"]: r["metrics"]["preview"]
                                        for r in rows}, ncols=3), out_dir / PLOT, dpi=110)
    lines = ["# The shipped Fashion-MNIST diffusion models", "", study.generated_note(rows, NAME),
             "", *headline(rows), "", f"First {PREVIEW} samples of each run:", "",
             f"![samples]({PLOT})", "",
             "## Every cell", "",
             study.markdown_table([study.flat(r) for r in rows],
                                  ["key", "label", "rule", "steps", "samples", "nfe", "seconds"],
                                  {"seconds": "{:.0f}"})]
    io.write_text(out_dir / "summary.md", "\n".join(lines))
