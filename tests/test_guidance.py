"""Guidance on an exact class-conditional model: classifier-free guidance (negative
classes, the interval, one batched call), loss guidance, img2img and inpainting."""

import math

import pytest
import torch

import lab
from lab import guidance

TOL = 1e-12
MEANS = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 4.0]], dtype=torch.float64)


class ClassMixture(lab.Denoiser):
    """Class k is N(mu_k, 0.25 I); the null class is their equal mixture. Exact."""

    conditional = True
    sample_shape = (2,)
    sigma_min, sigma_max = 0.002, 80.0
    num_classes = 3

    def __init__(self):
        super().__init__()
        cov = 0.25 * torch.eye(2, dtype=torch.float64)
        self.parts = [lab.models.Gaussian(m, cov) for m in MEANS]
        self.null = lab.models.GaussianMixture(MEANS, cov.expand(3, 2, 2).clone(),
                                               torch.ones(3, dtype=torch.float64))
        self.forward_calls = 0

    def check_cond(self, cond, x):
        if cond is None:
            return torch.full((x.shape[0],), 3, dtype=torch.long)
        if cond.shape != (x.shape[0],):
            raise ValueError("cond batch")
        if bool(((cond < 0) | (cond > 2)).any()):
            raise ValueError("class ids must be in 0..2")
        return cond

    def denoise(self, x, sigma, cond):
        self.forward_calls += 1
        out = self.null(x, sigma)
        for k, part in enumerate(self.parts):
            pick = cond == k
            if bool(pick.any()):
                out[pick] = part(x[pick], sigma[pick])
        return out


@pytest.fixture
def cm():
    return ClassMixture()


def x_at(sigma=2.0, n=6, seed=0):
    return lab.noise((n, 2), seed=seed, dtype=torch.float64) * sigma


def test_scale_one_is_the_conditional_model_in_one_branch(cm):
    cond = torch.tensor([0, 1, 2, 0, 1, 2])
    g = guidance.cfg(cm, cond, scale=1.0)
    assert torch.equal(g(x_at(), 2.0), cm(x_at(), 2.0, cond))
    assert g.network_evaluations == 6


@pytest.mark.parametrize("scale", [0.0, 2.5, 7.0])
def test_cfg_is_the_guidance_formula_in_one_batched_call(cm, scale):
    cond, x = torch.tensor([0, 1, 2, 0, 1, 2]), x_at()
    g = guidance.cfg(cm, cond, scale=scale)
    calls = cm.forward_calls
    out = g(x, 2.0)
    assert cm.forward_calls - calls == 1 and g.network_evaluations == 12
    d_c, d_u = cm(x, 2.0, cond), cm(x, 2.0, None)
    assert (out - (d_u + scale * (d_c - d_u))).abs().max().item() < TOL


def test_a_negative_class_replaces_the_null_class(cm):
    """cond=None, negative=k: anything but k."""
    x, k = x_at(), torch.full((6,), 1)
    out = guidance.cfg(cm, None, scale=3.0, negative=k)(x, 2.0)
    d_u, d_k = cm(x, 2.0, None), cm(x, 2.0, k)
    assert (out - (d_k + 3.0 * (d_u - d_k))).abs().max().item() < TOL
    sig = lab.schedules.karras(30, 0.002, 80.0)
    traj = lab.sample(guidance.cfg(cm, None, 3.0, negative=torch.full((300,), 1)),
                      x_at(sig[0].item(), 300), sig, "heun")
    nearest = torch.cdist(traj.x, MEANS).argmin(1)
    assert (nearest == 1).float().mean() < 0.05  # a third without the negative class
    assert (nearest == 0).any() and (nearest == 2).any()  # pushed away, not collapsed


def test_the_interval_guides_only_inside(cm):
    cond, x = torch.tensor([0, 1, 2, 0, 1, 2]), x_at()
    g = guidance.cfg(cm, cond, scale=4.0, interval=(1.0, 5.0))
    assert (g(x, 8.0) - cm(x, 8.0, cond)).abs().max().item() < TOL  # outside: w = 1
    assert (g(x, 2.0) - guidance.cfg(cm, cond, 4.0)(x, 2.0)).abs().max().item() < TOL
    per_sample = torch.tensor([0.5, 2.0, 8.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    both = g(x, per_sample)
    for i, s in enumerate(per_sample.tolist()):
        alone = guidance.cfg(cm, cond[i:i + 1], scale=4.0, interval=(1.0, 5.0))
        assert (both[i] - alone(x[i:i + 1], s)[0]).abs().max().item() < TOL


def test_guided_sampling_hits_the_class_and_records_network_evaluations(cm):
    sig = lab.schedules.karras(10, 0.002, 80.0)
    cond = torch.arange(3).repeat(100)
    traj = lab.sample(guidance.cfg(cm, cond, scale=3.0), x_at(80.0, 300), sig, "dpmpp_2m")
    assert (torch.cdist(traj.x, MEANS).argmin(1) == cond).float().mean() > 0.98
    assert traj.nfe == 10 and traj.meta["network_evaluations"] == 2 * 300 * 10


def test_loss_guidance_moves_the_denoiser_by_the_loss_gradient():
    model = lab.models.Gaussian(torch.zeros(2, dtype=torch.float64),
                                torch.eye(2, dtype=torch.float64))
    model.sample_shape = (2,)
    fn = guidance.brightness(1.5)
    g = guidance.loss(model, fn, scale=2.0)
    x = x_at(3.0)
    xg = x.clone().requires_grad_(True)
    d = model(xg, 3.0)
    (grad,) = torch.autograd.grad(fn(d).sum(), xg)
    assert (g(x, 3.0) - (d - 2.0 * 9.0 * grad)).abs().max().item() < TOL
    sig = lab.schedules.karras(20, 0.002, 10.0)
    plain = lab.sample(model, x_at(10.0, 400), sig, "euler").x.mean()
    steered = lab.sample(g, x_at(10.0, 400), sig, "euler").x.mean()
    assert abs(float(steered) - 1.5) < abs(float(plain) - 1.5) - 0.3


def test_img2img_follows_diffusers_strength(cm):
    model = cm.null
    model.sample_shape, model.sigma_min, model.sigma_max = (2,), 0.002, 80.0
    image = (MEANS[[0, 1, 2, 0]] / 5).clone()
    full = guidance.img2img(model, image, 1.0, "euler", steps=10, seed=3)
    sig = lab.schedules.karras(10, 0.002, 80.0)
    z = lab.noise(image.shape, seed=3, dtype=image.dtype)
    assert torch.equal(full.x, lab.sample(model, image + 80.0 * z, sig, "euler", seed=3).x)
    light = guidance.img2img(model, image, 0.3, "euler", steps=10, seed=3)
    assert light.steps == 3 and float(light.sigmas[0]) == pytest.approx(float(sig[7]))
    assert (light.x - image).pow(2).mean().sqrt() < (full.x - image).pow(2).mean().sqrt()


def test_inpainting_keeps_the_known_pixels_exactly(cm):
    model = cm.null
    model.sample_shape, model.sigma_min, model.sigma_max = (2,), 0.002, 80.0
    image = torch.tensor([[0.5, -0.5]] * 8, dtype=torch.float64)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64)
    traj = guidance.inpaint(model, image, mask, "heun", steps=12, seed=1)
    assert torch.equal(traj.x[:, 0], image[:, 0])
    assert not torch.equal(traj.x[:, 1], image[:, 1])


@pytest.mark.parametrize("call,err,match", [
    (lambda cm: guidance.cfg(cm.null, None, 2.0), TypeError, "unconditional"),
    (lambda cm: guidance.cfg(cm, None, float("nan")), ValueError, "scale"),
    (lambda cm: guidance.cfg(cm, None, -1.0), ValueError, "scale"),
    (lambda cm: guidance.cfg(cm, None, 2.0, interval=(3.0, 1.0)), ValueError, "lo <= hi"),
    (lambda cm: guidance.cfg(cm, torch.tensor([0, 5, 1, 0, 1, 2]), 2.0)(x_at(), 1.0),
     ValueError, "0..2"),
    (lambda cm: guidance.cfg(cm, torch.tensor([0, 1]), 2.0)(x_at(), 1.0), ValueError, "batch"),
    (lambda cm: cm(x_at(), 1.0), TypeError, "class-conditional"),
    (lambda cm: guidance.loss(cm.null, "blue", 1.0), TypeError, "fn must"),
])
def test_bad_guidance_input(cm, call, err, match):
    with pytest.raises(err, match=match):
        call(cm)


@pytest.mark.parametrize("kwargs,err,match", [
    ({"strength": 0.0}, ValueError, "strength"),
    ({"strength": 1.5}, ValueError, "strength"),
    ({"image": torch.zeros(3, 5, dtype=torch.float64)}, ValueError, "shaped"),
    ({"image": torch.full((3, 2), 2.0, dtype=torch.float64)}, ValueError, r"\[-1, 1\]"),
])
def test_bad_img2img_input(cm, kwargs, err, match):
    model = cm.null
    model.sample_shape = (2,)
    args = {"image": torch.zeros(3, 2, dtype=torch.float64), "strength": 0.5, **kwargs}
    with pytest.raises(err, match=match):
        guidance.img2img(model, args["image"], args["strength"], "euler")


def test_bad_masks(cm):
    model = cm.null
    model.sample_shape = (2,)
    image = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="does not fit"):
        guidance.inpaint(model, image, torch.ones(3), "euler")
    with pytest.raises(ValueError, match="only 0"):
        guidance.inpaint(model, image, torch.full((3, 2), 0.5), "euler")
    assert math.isfinite(float(guidance.inpaint(model, image, torch.ones(3, 2)).x.sum()))


def test_the_interval_saves_the_unconditional_branch_outside_it(cm):
    cond = torch.tensor([0, 1, 2, 0, 1, 2])
    g = guidance.cfg(cm, cond, scale=4.0, interval=(1.0, 5.0))
    g(x_at(), 8.0)
    assert g.network_evaluations == 6  # outside: the conditional branch only
    g(x_at(), 2.0)
    assert g.network_evaluations == 6 + 12


def test_loss_guidance_on_cfg_records_the_inner_network_evaluations(cm):
    g = guidance.loss(guidance.cfg(cm, torch.tensor([0, 1]), 2.0), guidance.brightness(0.0))
    sig = lab.schedules.karras(3, 0.002, 80.0)
    traj = lab.sample(g, x_at(80.0, 2), sig, "euler")
    assert traj.meta["network_evaluations"] == 2 * 2 * 3


def test_inpainting_refuses_a_stochastic_rule_by_name(cm):
    model = cm.null
    model.sample_shape = (2,)
    with pytest.raises(ValueError, match="inpaint .* deterministic rule, not ancestral"):
        guidance.inpaint(model, torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, 2),
                         "ancestral")
