"""lab models presented to diffusers (``lab.models.to_diffusers``): the table, the
network formula, the round trip through ``from_diffusers``, peer parity of lab rules
with diffusers' schedulers on the same sigmas, and runs through diffusers pipelines.

Peer parity: the lab runs its rule on the exact model directly (float64); diffusers runs
its scheduler on ``to_diffusers(model)`` (float32, its own loop, public API); both start
from the same noise, on the scheduler's own sigmas. Their states after every step
agree to a relative error ``|a - b| / |b|`` of at most 1e-4 (measured: about 1e-7).
Which sigma map the adapter needs for each scheduler is the same as in
``test_diffusers_parity.py``: ``"linear"`` for Euler/Heun/LMS linspace timesteps
(fractional, sigma linear in t), anything for whole timesteps (DDIM, DPM-Solver).
"""

import math

import numpy as np
import pytest
import torch

# diffusers is a required dependency: a broken install fails here, it does not skip.
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
)

import lab
from lab.models import from_diffusers
from lab.models.vp_export import (
    VPEpsilonModel,
    carries_vp_sample,
    diffusers_alphas_cumprod,
    scheduler_sigmas,
    scheduler_steps,
    to_diffusers,
    vp_betas,
)

TOL = 1e-4
SHAPE = (1, 4, 4)
SCHEDULERS = [DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler,
              LMSDiscreteScheduler, DPMSolverMultistepScheduler]

# diffusers 0.42 calls np.array on torch tensors in set_timesteps (numpy 2 "copy" notice)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def image_mixture(spread=1.0, var=(0.05, 1.0), seed=0) -> lab.models.GaussianMixture:
    """Three Gaussians in 16-d with random covariances, samples shaped (1, 4, 4): an
    exact denoiser that is far from linear."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(SHAPE)
    means = spread * torch.randn(3, d, generator=g, dtype=torch.float64)
    covs = []
    for _ in range(3):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        lam = var[0] + (var[1] - var[0]) * torch.rand(d, generator=g, dtype=torch.float64)
        c = q @ torch.diag(lam) @ q.T
        covs.append((c + c.T) / 2)
    return lab.models.GaussianMixture(means, torch.stack(covs), torch.tensor([0.5, 0.3, 0.2]),
                                      shape=SHAPE)


@pytest.fixture(scope="module")
def model():
    return image_mixture()


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# ---- the table -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", SCHEDULERS, ids=lambda c: c.__name__)
def test_every_scheduler_gets_the_models_table_bit_for_bit(model, cls):
    unet = to_diffusers(model)
    sched = unet.make_scheduler(cls)
    assert torch.equal(sched.alphas_cumprod, unet.alphas_cumprod)
    assert sched.config.prediction_type == "epsilon"
    if "clip_sample" in sched.config:
        assert sched.config.clip_sample is False
    # the config round-trips, as DDIMPipeline's DDIMScheduler.from_config(...) does
    assert torch.equal(cls.from_config(sched.config).alphas_cumprod, unet.alphas_cumprod)


def test_table_is_log_linear_over_the_models_range(model):
    unet = to_diffusers(model)  # exact model: no range of its own -> 0.002 .. 80
    s = unet.sigmas
    assert s.dtype == torch.float64 and len(s) == 1000 == unet.config.num_train_timesteps
    assert bool((s[1:] > s[:-1]).all())
    ideal = torch.exp(torch.linspace(math.log(0.002), math.log(80.0), 1000,
                                     dtype=torch.float64))
    err = (s / ideal - 1).abs()
    # float32 alphas_cumprod cannot do better near sigma 0.002 (1 - abar ~ 4e-6, ulp 6e-8)
    assert err.max() < 5e-3, err.max()
    assert err[s > 1].max() < 1e-6
    assert unet.sigma_min == float(s[0]) and unet.sigma_max == float(s[-1])
    assert unet.sigma_max == pytest.approx(80.0, rel=1e-6)
    # the table is diffusers' own: sigma = sqrt((1 - abar) / abar) of its float32 abar
    abar = unet.alphas_cumprod.double()
    assert torch.equal(s, ((1 - abar) / abar).sqrt())


def test_error_feedback_beats_plain_betas():
    """Plain betas ``1 - abar_t / abar_{t-1}`` rounded to float32 drift ~1.5 % off the
    requested sigmas near 0.002; the error-feedback betas stay at the float32 limit."""
    sig = torch.exp(torch.linspace(math.log(0.002), math.log(80.0), 1000, dtype=torch.float64))
    abar = 1 / (1 + sig**2)
    plain = 1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])

    def worst(betas):
        a = diffusers_alphas_cumprod(betas).double()
        return float((((1 - a) / a).sqrt() / sig - 1).abs().max())

    assert worst(plain.numpy()) > 1e-2
    assert worst(vp_betas(sig)) < 5e-3


class Shrink(lab.Denoiser):
    """A float32 "network": ``D = x / (1 + s^2)`` (data N(0, I)) through one weight, with
    a sigma range of its own."""

    sample_shape = SHAPE
    sigma_min, sigma_max = 0.01, 20.0

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()), requires_grad=False)
        self.seen = []

    def denoise(self, x, sigma):
        self.seen.append(x.dtype)
        return self.weight * x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)


def test_the_range_and_shape_follow_the_model():
    unet = to_diffusers(Shrink(), 500)
    assert unet.sigma_min == pytest.approx(0.01, rel=5e-3)
    assert unet.sigma_max == pytest.approx(20.0, rel=1e-6)
    assert (unet.config.in_channels, unet.config.sample_size) == (1, 4)
    assert unet.config.num_train_timesteps == 500
    with pytest.warns(UserWarning, match="leave the model's range"):
        to_diffusers(Shrink(), sigma_max=80.0)
    wide = to_diffusers(Shrink(), sample_shape=(3, 4, 6))
    assert (wide.config.in_channels, wide.config.sample_size) == (3, (4, 6))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sigma_min": 1.0, "sigma_max": 0.5}, ValueError, "sigma_min < sigma_max"),
    ({"sigma_min": 0.0}, ValueError, "sigma_min < sigma_max"),
    ({"num_train_timesteps": 1}, ValueError, "num_train_timesteps"),
    ({"timestep": "round"}, ValueError, "timestep"),
    ({"sigma_min": 1e-6, "num_train_timesteps": 5000}, ValueError, "float32"),
])
def test_bad_options_raise(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        to_diffusers(model, **kwargs)


def test_make_scheduler_refuses_to_change_the_table(model):
    unet = to_diffusers(model)
    with pytest.raises(ValueError, match="table"):
        unet.make_scheduler(DDIMScheduler, trained_betas=[0.1] * 1000)
    sched = unet.make_scheduler(DDIMScheduler, clip_sample=True, timestep_spacing="trailing")
    assert sched.config.clip_sample is True and sched.config.timestep_spacing == "trailing"


# ---- the network -----------------------------------------------------------------------


@pytest.mark.parametrize("timestep", ["log", "linear"])
def test_output_is_the_noise_the_denoiser_implies(model, timestep):
    """``eps = (x - D(x, s)) / s`` with ``x = z sqrt(1 + s^2)``, s read off the table."""
    unet = to_diffusers(model, timestep=timestep, dtype=torch.float64)
    t = torch.tensor([0.0, 123.0, 999.0])
    s = unet.sigmas[t.long()]
    assert torch.equal(unet.timestep_to_sigma(t), s)  # whole timesteps: the table itself
    x = lab.noise((3, *SHAPE), seed=2, dtype=torch.float64) * s[:, None, None, None] \
        + model.means[0].reshape(SHAPE)
    z = x / (1 + s**2).sqrt()[:, None, None, None]
    eps = unet(z, t).sample
    expected = (x - model(x, s)) / s[:, None, None, None]
    assert rel(eps, expected) < 1e-12
    # a number, a 0-d tensor or a (1,) tensor broadcast over the batch; return_dict=False
    one = unet(z[:1], 123)
    assert torch.equal(one.sample, unet(z[:1], torch.tensor(123)).sample)
    assert torch.equal(unet(z[:1], torch.tensor([123]), return_dict=False)[0], one.sample)


def test_fractional_timesteps_interpolate_in_log_or_linear_sigma(model):
    t = torch.tensor([10.5, 700.25])
    log = to_diffusers(model, timestep="log")
    lin = to_diffusers(model, timestep="linear")
    lo, hi = log.sigmas[[10, 700]], log.sigmas[[11, 701]]
    w = torch.tensor([0.5, 0.25], dtype=torch.float64)
    assert torch.allclose(log.timestep_to_sigma(t), lo ** (1 - w) * hi**w, rtol=1e-12)
    assert torch.allclose(lin.timestep_to_sigma(t), lo + w * (hi - lo), rtol=1e-12)


def test_bad_timesteps_raise(model):
    unet = to_diffusers(model)
    z = torch.zeros(2, *SHAPE)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        unet(z, 1000)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        unet(z, -1)
    with pytest.raises(ValueError, match="timestep must be"):
        unet(z, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="class labels"):
        unet(z, 5, class_labels=torch.zeros(2))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 5e-5), (torch.float64, 1e-10)])
def test_round_trip_through_from_diffusers(model, dtype, tol):
    """``from_diffusers(to_diffusers(model))`` is the model again. In float32 the VP input
    ``z`` is rounded (diffusers' samples are float32), an error of ~6e-8 |x|: 2e-5 of
    |D| at sigma 80 (measured), where |x| ~ 80 |D|."""
    unet = to_diffusers(model, dtype=dtype)
    back = from_diffusers(unet, unet.make_scheduler(DDIMScheduler))
    assert back.sigma_min == unet.sigma_min and back.sigma_max == unet.sigma_max
    worst = 0.0
    for t in (0, 1, 100, 500, 900, 999):
        s = float(unet.sigmas[t])
        x = model.sample(4, seed=t, dtype=torch.float64) + s * lab.noise((4, *SHAPE), seed=t,
                                                                         dtype=torch.float64)
        worst = max(worst, rel(back(x, s), model(x, s)))
    assert worst < tol, worst


def test_a_network_is_called_in_its_own_dtype():
    net = Shrink()
    unet = to_diffusers(net, 100, dtype=torch.float64)
    z = torch.randn(2, *SHAPE, dtype=torch.float64)
    out = unet(z, torch.tensor([3, 50])).sample
    assert net.seen == [torch.float32] and out.dtype == torch.float64
    s = unet.sigmas[[3, 50]].reshape(-1, 1, 1, 1)
    x = z * (1 + s**2).sqrt()
    # D in float32: x - D = s^2 x / (1 + s^2) loses digits at small s
    assert rel(out, (x - x / (1 + s**2)) / s) < 1e-4


# ---- peer parity: lab rules vs diffusers schedulers -----------------------------------


def parity(model, make, rule, timestep, n, vp):
    unet = to_diffusers(model, timestep=timestep)
    sched = unet.make_scheduler(make[0], **make[1])
    sched.set_timesteps(n)
    assert carries_vp_sample(sched) == vp
    sigmas = scheduler_sigmas(sched)
    assert len(sigmas) == n + 1 and float(sigmas[-1]) == 0.0
    start = lab.noise((2, *SHAPE), seed=0, dtype=torch.float64) * float(sigmas[0])
    traj = lab.sample(model, start, sigmas, rule, seed=0)
    ref = [x for _, x, _ in scheduler_steps(unet, sched, start)]
    errors = [rel(a, b) for a, b in zip(traj.xs[1:], ref, strict=True)]
    return max(errors), traj


# (id, (scheduler class, kwargs), lab rule, sigma map, steps, VP scheduler?)
PAIRS = [
    ("euler", (EulerDiscreteScheduler, {}), "euler", "linear", 8, False),
    ("euler-karras", (EulerDiscreteScheduler, {"use_karras_sigmas": True}), "euler", "log", 8,
     False),
    ("heun", (HeunDiscreteScheduler, {}), "heun", "linear", 8, False),
    ("lms", (LMSDiscreteScheduler, {}), "lms", "linear", 10, False),
    ("dpmpp_2m", (DPMSolverMultistepScheduler,
                  {"algorithm_type": "dpmsolver++", "solver_order": 2}), "dpmpp_2m", "log", 10,
     True),
    ("ddim", (DDIMScheduler, {"set_alpha_to_one": True}), "euler", "log", 10, True),
    ("ddim-trailing", (DDIMScheduler, {"timestep_spacing": "trailing"}), "euler", "linear", 10,
     True),
]

@pytest.mark.parametrize("make, rule, timestep, n, vp", [p[1:] for p in PAIRS],
                         ids=[p[0] for p in PAIRS])
def test_lab_rule_matches_diffusers_scheduler_on_a_lab_model(model, make, rule, timestep, n, vp):
    """Measured worst step errors: 1.8e-7 (Euler, Karras) to 5.2e-7 (Heun)."""
    worst, traj = parity(model, make, rule, timestep, n, vp)
    assert worst <= TOL, f"worst step error {worst:.3g}"
    assert traj.nfe == (2 * n - 1 if rule == "heun" else n)


# Each differs from its diffusers peer in one detail; the comparison sees it by far.
MISMATCHES = [
    # Euler against Heun on the same sigmas (measured 0.39)
    ("euler-vs-heun", (HeunDiscreteScheduler, {}), "euler", "linear", 8, False),
    # first order against DPM-Solver++(2M) (0.16)
    ("euler-vs-dpm", (DPMSolverMultistepScheduler,
                      {"algorithm_type": "dpmsolver++", "solver_order": 2}), "euler", "log", 10,
     True),
    # the other second-order DPM-Solver++ variant (0.04)
    ("dpm-heun-variant", (DPMSolverMultistepScheduler, {
        "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "heun"}),
     "dpmpp_2m", "log", 10, True),
    # DDIM's linspace spacing steps to t - 1000 // n, not to its next timestep (0.23)
    ("ddim-linspace", (DDIMScheduler, {"timestep_spacing": "linspace"}), "euler", "log", 10,
     True),
]


@pytest.mark.parametrize("make, rule, timestep, n, vp", [p[1:] for p in MISMATCHES],
                         ids=[p[0] for p in MISMATCHES])
def test_the_comparison_can_fail(model, make, rule, timestep, n, vp):
    worst, _ = parity(model, make, rule, timestep, n, vp)
    assert worst > 5 * TOL


def test_the_wrong_sigma_map_is_visible_but_small(model):
    """Euler's linspace timesteps are fractional with sigma linear in t; the log map
    reads a sigma off by up to ~1.4e-5 relative there (the table is dense: log sigma
    moves 0.0106 per timestep), which moves the samples by ~1e-5 (measured 9.5e-6),
    20x the matching map's error and still inside the tolerance."""
    right, _ = parity(model, (EulerDiscreteScheduler, {}), "euler", "linear", 8, False)
    wrong, _ = parity(model, (EulerDiscreteScheduler, {}), "euler", "log", 8, False)
    assert right < 1e-6 < wrong < TOL


# ---- pipelines --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def narrow():
    """Data well inside [-1, 1], so the pipelines' final ``clamp(0, 1)`` of
    ``x / 2 + 0.5`` does not bite and their output can be inverted."""
    return image_mixture(spread=0.25, var=(0.001, 0.01), seed=1)


def test_ddim_pipeline_runs_the_lab_model_and_matches_lab_euler(narrow):
    unet = to_diffusers(narrow)
    pipe = DDIMPipeline(unet=unet, scheduler=unet.make_scheduler(DDIMScheduler))
    pipe.set_progress_bar_config(disable=True)
    # DDIMPipeline rebuilds its scheduler with DDIMScheduler.from_config: same table
    assert torch.equal(pipe.scheduler.alphas_cumprod, unet.alphas_cumprod)
    out = pipe(batch_size=2, num_inference_steps=10, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, *SHAPE) and bool(torch.isfinite(out).all())
    assert 0 < float(out.min()) and float(out.max()) < 1  # nothing clamped
    # the same run in the lab: pipelines start from N(0, I) in VP terms at t = 900
    z = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(0))
    sigmas = scheduler_sigmas(pipe.scheduler)
    x = z.double() * math.sqrt(1 + float(sigmas[0]) ** 2)
    final = lab.sample(narrow, x, sigmas, "euler", record="final").x
    assert rel(out * 2 - 1, final) < TOL
    images = pipe(batch_size=2, num_inference_steps=10, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 4, 4, 1) and np.isfinite(images).all()


def test_ddpm_pipeline_runs_the_lab_model(narrow):
    unet = to_diffusers(narrow)
    pipe = DDPMPipeline(unet=unet, scheduler=unet.make_scheduler(DDPMScheduler))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=3, num_inference_steps=20, output_type="np",
               generator=torch.Generator().manual_seed(1)).images
    assert out.shape == (3, 4, 4, 1) and np.isfinite(out).all()
    # ancestral sampling lands near the data (means within 0.25 * N(0, 1) of 0)
    assert np.abs(out * 2 - 1).max() < 1


def test_a_module_diffusers_recognises(model):
    unet = to_diffusers(model)
    assert isinstance(unet, (VPEpsilonModel, torch.nn.Module))
    assert unet.dtype == torch.float32 and unet.device.type == "cpu"
    assert unet.to(torch.float64).dtype == torch.float64
    flat = to_diffusers(lab.models.Gaussian(torch.zeros(2), torch.eye(2)))
    assert flat.config.sample_size is None and flat.config.sample_shape == [2]
    out = flat(torch.zeros(3, 2), 10).sample
    assert out.shape == (3, 2)
