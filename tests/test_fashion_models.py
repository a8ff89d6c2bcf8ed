"""Quality guards for the shipped Fashion-MNIST diffusion models, at fixed seeds.

Figures measured with the shipped weights (see README: Model zoo); the bounds leave
headroom above them, so a regression in the sampler, the loader or the weights fails.
"""

import pytest
import torch

import lab

# (model, sigma estimate) -> (FID measured with heun, 20 steps, 512 samples, seed 0, clamped
# to [-1, 1] as the studies score them; the bound asserted). The blind model runs on the
# schedule's sigma and on fashion-sigma's estimate of it. The measured figures are
# fid_512 of results/model_zoo/rows.jsonl (the first 512 of its 2,048 samples are these).
GUARDS = {("fashion-edm", None): (4.83, 7.0),
          ("fashion-edm-blind", None): (5.59, 7.5),
          ("fashion-edm-blind", "fashion-sigma"): (5.09, 7.0)}


def heun_samples(name, n=512, steps=20, seed=0, sigma_estimate=None):
    model = lab.load(name)
    sig = lab.schedules.karras(steps, sigma_min=0.002, sigma_max=80.0)
    x = lab.noise((n, *model.sample_shape), seed=seed) * sig[0]
    return lab.sample(model, x, sig, "heun", record="final", sigma_estimate=sigma_estimate).x


@pytest.mark.parametrize("name, sigma_estimate", sorted(GUARDS, key=str))
def test_fid_of_heun_at_20_steps(name, sigma_estimate):
    measured, bound = GUARDS[name, sigma_estimate]
    samples = heun_samples(name, sigma_estimate=sigma_estimate)
    assert samples.shape == (512, 1, 28, 28) and bool(torch.isfinite(samples).all())
    fid = lab.metrics.image_scores(samples)["fid"]
    assert fid < bound, f"{name}: FID {fid:.2f} (measured {measured} when shipped)"
