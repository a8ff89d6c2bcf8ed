"""Quality guards for the shipped Fashion-MNIST diffusion models, at fixed seeds.

Figures measured with the shipped weights (see README: Model zoo). Each bound leaves
headroom above its model's figure but sits below the figure of a worse model, the
shorter-trained ``fashion-edm-6k``, so a guard can fail: a regression in the sampler,
the loader or the weights that costs as much as that model's lost training fails it.
"""

from pathlib import Path

import pytest
import torch

import lab
from lab.study import read_rows

ZOO_ROWS = Path(__file__).resolve().parents[1] / "results" / "model_zoo" / "rows.jsonl"
WORSE = ("fashion-edm-6k", None)

# (model, sigma estimate) -> (FID with heun, 20 steps, 512 samples, seed 0, clamped to
# [-1, 1] as the studies score them; the bound those figures are held to). The blind model
# runs on the schedule's sigma and on fashion-sigma's estimate of it. The figures are
# fid_512 of results/model_zoo/rows.jsonl (the first 512 of its 2,048 samples are
# heun_samples(n=512) below); the worse model's is 6.70 there.
GUARDS = {("fashion-edm", None): (4.83, 5.8),
          ("fashion-edm-blind", None): (5.59, 6.3),
          ("fashion-edm-blind", "fashion-sigma"): (5.09, 6.0)}
# The sampled guard draws the first 256 of those samples (half the cost; at 128 the blind
# model and the worse one score alike): (model, sigma estimate) -> (FID of
# heun_samples(n=256), the bound), and the worse model's FID of the same 256.
GUARDS_256 = {("fashion-edm", None): (7.03, 8.5),
              ("fashion-edm-blind", None): (8.75, 10.0),
              ("fashion-edm-blind", "fashion-sigma"): (8.00, 9.3)}
WORSE_FID_256 = 10.67


def heun_samples(name, n=256, steps=20, seed=0, sigma_estimate=None):
    model = lab.load(name)
    sig = lab.schedules.karras(steps, sigma_min=0.002, sigma_max=80.0)
    x = lab.noise((n, *model.sample_shape), seed=seed) * sig[0]
    return lab.sample(model, x, sig, "heun", record="final", sigma_estimate=sigma_estimate).x


def zoo_fid_512(name, sigma_estimate) -> float:
    """fid_512 of the model-zoo row for ``name`` on ``sigma_estimate`` (None: schedule)."""
    sigma_from = sigma_estimate or "schedule"
    rows = [r for r in read_rows(ZOO_ROWS)
            if r["cell"]["model"] == name and r["cell"]["sigma_from"] == sigma_from]
    assert len(rows) == 1, f"{ZOO_ROWS} has {len(rows)} rows for {name} on {sigma_from}"
    return rows[0]["metrics"]["fid_512"]


@pytest.mark.parametrize("name, sigma_estimate", sorted(GUARDS, key=str))
def test_each_guard_passes_its_model_and_fails_the_worse_one(name, sigma_estimate):
    """The bounds against the model zoo's rows (cheap: no sampling)."""
    measured, bound = GUARDS[name, sigma_estimate]
    assert zoo_fid_512(name, sigma_estimate) == pytest.approx(measured, abs=0.01)
    assert measured < 0.9 * bound, f"{name}: bound {bound} leaves too little headroom"
    worse = zoo_fid_512(*WORSE)
    assert worse > bound, f"{name}: bound {bound} passes {WORSE[0]} (FID {worse:.2f})"
    measured, bound = GUARDS_256[name, sigma_estimate]
    assert measured < 0.9 * bound, f"{name}: 256-sample bound {bound} leaves too little headroom"
    assert WORSE_FID_256 > bound, f"{name}: 256-sample bound {bound} passes {WORSE[0]}"


# Time budget: about 50 CPU s each (256 samples x 39 calls on one thread; measured 45-47).
@pytest.mark.slow
@pytest.mark.parametrize("name, sigma_estimate", sorted(GUARDS_256, key=str))
def test_fid_of_heun_at_20_steps(name, sigma_estimate):
    measured, bound = GUARDS_256[name, sigma_estimate]
    samples = heun_samples(name, sigma_estimate=sigma_estimate)
    assert samples.shape == (256, 1, 28, 28) and bool(torch.isfinite(samples).all())
    fid = lab.metrics.image_scores(samples)["fid"]
    assert fid < bound, f"{name}: FID {fid:.2f} of 256 samples (measured {measured} when shipped)"
