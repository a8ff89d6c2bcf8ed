"""lab's sigma-space solvers, run on a diffusers UNet through ``lab.models.from_diffusers``,
against diffusers' own schedulers driven by their public API (``set_timesteps``,
``scale_model_input``, ``step``).

The network is a tiny ``UNet2DModel`` with seeded random weights, in float32; every
scheduler is built from its config (no hub). The sigmas are the scheduler's own (LMS
and DDIM take no custom sigmas), turned into a lab schedule (float64, descending, last
0). Both loops start from the same noise; the lab's state after every step must agree
with diffusers' to a relative error ``|a - b| / |b|`` (norms over the batch) of at most
1e-4, measured at every step rather than only the last, so that a wrong late step is
not hidden under the large early states of an untrained network. VP schedulers (DDIM,
DPM-Solver) carry ``x / sqrt(1 + sigma^2)``; their states are scaled back before the
comparison (at sigma = 0 the two agree).

Which options make each pair match:

- ``euler`` = ``EulerDiscreteScheduler`` (default linspace spacing, no churn): its
  timesteps are fractional and its sigmas linear in t, so the adapter needs
  ``timestep="linear"``. With ``use_karras_sigmas=True`` the timesteps come from
  ``_sigma_to_t``, log-sigma interpolation: ``timestep="log"``.
- ``heun`` = ``HeunDiscreteScheduler`` (``clip_sample=False``, the default), its
  repeated sigmas de-duplicated; last step Euler in both. ``timestep="linear"``.
- ``lms`` = ``LMSDiscreteScheduler`` (order 4, the default of ``step``).
  ``timestep="linear"``.
- ``dpmpp_2m`` = ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
  solver_order=2)`` with the defaults ``solver_type="midpoint"``,
  ``final_sigmas_type="zero"`` (so its last step is first order and returns x0_hat,
  as the lab's does), ``thresholding=False``, ``euler_at_final=False``.
  ``lower_order_final`` (default True) changes nothing at order 2: it only demotes the
  last step, which ``final_sigmas_type="zero"`` already makes first order.
  Default sigmas sit at whole timesteps of the table: any mapping, ``"log"`` here.
  With ``use_karras_sigmas=True`` it rounds the timesteps but keeps the Karras
  sigmas: ``timestep="round"``.
- ``euler`` = ``DDIMScheduler(clip_sample=False, set_alpha_to_one=True)``, ``step`` with
  its default ``eta=0``, and
  ``"leading"`` (its default) or ``"trailing"`` spacing and ``1000 % n == 0``, so that
  its ``prev_timestep = t - 1000 // n`` is the next timestep in its list; the last step
  goes to ``alpha_cumprod = 1``, sigma 0. Its ``"linspace"`` spacing breaks that (see
  ``test_the_comparison_can_fail``). Whole timesteps: ``timestep="round"``.
- v-prediction: ``euler`` = ``EulerDiscreteScheduler(prediction_type="v_prediction")``,
  adapter ``timestep="linear"``, prediction type read from the scheduler.
"""

import math
import warnings

import numpy as np
import pytest
import torch

# diffusers is a required dependency: a broken install fails here, it does not skip.
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    UNet2DModel,
)

import lab
from lab.models import (
    carries_vp_sample,
    from_diffusers,
    scheduler_sigmas,
    scheduler_steps,
)

TOL = 1e-4
SHAPE = (2, 2, 8, 8)

# diffusers 0.42 calls np.array on torch tensors in set_timesteps (numpy 2 "copy" notice)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny UNet is ~10 ms a call on one thread; two OpenMP threads on a busy
    2-core machine can make it 100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def unet():
    """Seeded random weights, with the time-embedding MLP and the output conv scaled up
    3x: then the output has about unit variance, as a trained epsilon network's does, and
    depends on the timestep enough that half a timestep off moves the sampled result by
    ~4e-3 (at the default init only ~3e-4, too close to the 1e-4 tolerance)."""
    torch.manual_seed(0)
    net = UNet2DModel(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(16, 32),
                      layers_per_block=1, norm_num_groups=8,
                      down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D"))
    net = net.float().eval().requires_grad_(False)
    for name, p in net.named_parameters():
        if (name.startswith("time_embedding.") and name.endswith("weight")) \
                or name.startswith("conv_out."):
            p.mul_(3.0)
    return net


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def run_diffusers(unet, sched, start, vp):
    """diffusers' loop (:func:`lab.models.scheduler_steps`): its state after each full
    step, after checking it would start from the same state itself."""
    assert carries_vp_sample(sched) == vp
    if not vp:  # diffusers would start from noise * init_noise_sigma: the same state
        s0 = float(scheduler_sigmas(sched)[0])
        assert float(sched.init_noise_sigma) == pytest.approx(s0, rel=1e-6)
    return [x for _, x, _ in scheduler_steps(unet, sched, start)]


def parity(unet, sched, rule, timestep, n, vp=False, sigmas=None, prediction_type=None):
    """Worst relative error over the steps between lab and diffusers (and the final one)."""
    if sigmas is None:
        sched.set_timesteps(n)
        sigmas = scheduler_sigmas(sched)
    assert sigmas.dtype == torch.float64 and float(sigmas[-1]) == 0.0
    assert len(sigmas) == n + 1
    model = from_diffusers(unet, sched, timestep=timestep, prediction_type=prediction_type)
    start = lab.noise(SHAPE, seed=0) * float(sigmas[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scheduler's sigmas never leave the table
        traj = lab.sample(model, start, sigmas, rule, seed=0)
    ref = run_diffusers(unet, sched, start, vp)
    errors = [rel(a, b) for a, b in zip(traj.xs[1:], ref, strict=True)]
    return max(errors), errors[-1], traj


# (id, scheduler factory, lab rule, adapter timestep map, steps, VP scheduler?)
PAIRS = [
    ("euler", lambda: EulerDiscreteScheduler(), "euler", "linear", 8, False),
    ("euler-karras", lambda: EulerDiscreteScheduler(use_karras_sigmas=True), "euler", "log", 8,
     False),
    ("euler-v", lambda: EulerDiscreteScheduler(prediction_type="v_prediction"), "euler", "linear",
     8, False),
    ("heun", lambda: HeunDiscreteScheduler(), "heun", "linear", 8, False),
    ("lms", lambda: LMSDiscreteScheduler(), "lms", "linear", 10, False),
    ("dpmpp_2m", lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2),
     "dpmpp_2m", "log", 10, True),
    ("dpmpp_2m-karras", lambda: DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True),
     "dpmpp_2m", "round", 10, True),
    ("ddim-leading", lambda: DDIMScheduler(clip_sample=False, set_alpha_to_one=True),
     "euler", "round", 10, True),
    ("ddim-trailing", lambda: DDIMScheduler(clip_sample=False, set_alpha_to_one=True,
                                            timestep_spacing="trailing"),
     "euler", "round", 10, True),
]


@pytest.mark.parametrize("make, rule, timestep, n, vp",
                         [p[1:] for p in PAIRS], ids=[p[0] for p in PAIRS])
def test_lab_matches_diffusers_scheduler(unet, make, rule, timestep, n, vp):
    worst, final, traj = parity(unet, make(), rule, timestep, n, vp)
    assert worst <= TOL, f"worst step error {worst:.3g}, final {final:.3g}"
    assert traj.nfe == (2 * n - 1 if rule == "heun" else n)


def test_euler_with_sigmas_outside_the_table_matches_diffusers(unet):
    """diffusers' Euler with custom sigmas beyond both ends of the table clamps only the
    timestep (``_sigma_to_t`` clips), keeping the true sigma in the input scaling and the
    step; so does the adapter (it warns once)."""
    sched = EulerDiscreteScheduler()
    sigmas = lab.schedules.karras(8, sigma_min=0.002, sigma_max=400.0)
    sched.set_timesteps(sigmas=sigmas.tolist())
    sched.set_begin_index(0)  # the two clamped t = 999 would confuse its index search
    sigmas = scheduler_sigmas(sched)
    model = from_diffusers(unet, sched, timestep="log")
    start = lab.noise(SHAPE, seed=1) * float(sigmas[0])
    with pytest.warns(UserWarning, match="outside the model's table") as caught:
        traj = lab.sample(model, start, sigmas, "euler", seed=0)
    assert len(caught) == 1
    ref = run_diffusers(unet, sched, start, vp=False)
    errors = [rel(a, b) for a, b in zip(traj.xs[1:], ref, strict=True)]
    assert max(errors) <= TOL, errors


# Each of these differs from diffusers in one detail the parity tests above rely on;
# the comparison must see it by a wide margin (the matching pairs are near 5e-7), or
# it could not fail.
MISMATCHES = [
    # DPM-Solver++ with Karras sigmas rounds its timesteps; the unrounded map is off by
    # up to half a timestep
    ("unrounded-timesteps", lambda: DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True),
     "dpmpp_2m", "log", 10, True),
    # Euler's linspace timesteps are fractional (999/7 apart); rounding them is wrong
    ("rounded-timesteps", lambda: EulerDiscreteScheduler(), "euler", "round", 8, False),
    # the other second-order DPM-Solver++ variant
    ("dpm-heun-variant", lambda: DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, solver_type="heun"),
     "dpmpp_2m", "log", 10, True),
    # a first-order rule against the second-order multistep
    ("euler-vs-dpm", lambda: DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2), "euler", "log", 10, True),
    # DDIM's linspace spacing steps to t - 1000 // n, not to the next listed timestep
    ("ddim-linspace", lambda: DDIMScheduler(clip_sample=False, set_alpha_to_one=True,
                                            timestep_spacing="linspace"),
     "euler", "round", 10, True),
    # LMS of order 2 against diffusers' order 4
    ("lms-order", lambda: LMSDiscreteScheduler(), lab.rules.get("lms", order=2), "linear", 10,
     False),
    # Euler against Heun (same schedule, Heun's repeats dropped)
    ("euler-vs-heun", lambda: HeunDiscreteScheduler(), "euler", "linear", 8, False),
    # the epsilon formula on a v-prediction scheduler
    ("v-as-eps", lambda: EulerDiscreteScheduler(prediction_type="v_prediction"), "euler",
     "linear", 8, False),
]


@pytest.mark.parametrize("make, rule, timestep, n, vp",
                         [p[1:] for p in MISMATCHES], ids=[p[0] for p in MISMATCHES])
def test_the_comparison_can_fail(unet, make, rule, timestep, n, vp):
    sched = make()
    # the "v-as-eps" case: override the prediction type the adapter reads from the scheduler
    wrong = "epsilon" if sched.config.prediction_type == "v_prediction" else None
    worst, _, _ = parity(unet, sched, rule, timestep, n, vp, prediction_type=wrong)
    assert worst > 5 * TOL


# ---- the timestep maps ---------------------------------------------------------------


def diffusers_log_sigmas(sched) -> np.ndarray:
    """``log_sigmas`` exactly as diffusers' ``set_timesteps`` builds them."""
    return np.log((((1 - sched.alphas_cumprod) / sched.alphas_cumprod) ** 0.5).numpy())


def test_log_map_is_diffusers_sigma_to_t(unet):
    sched = EulerDiscreteScheduler()
    model = from_diffusers(unet, sched, timestep="log")
    # from below the table (0.01) to above it (157), densest at the bottom where the
    # table is coarsest in log sigma
    sig = np.exp(np.linspace(math.log(0.004), math.log(400.0), 301))
    theirs = sched._sigma_to_t(sig, diffusers_log_sigmas(sched))
    ours = model.timesteps(torch.from_numpy(sig)).numpy()
    assert np.abs(ours - theirs).max() < 1e-3
    assert theirs.min() == 0.0 and theirs.max() == 999.0  # both ends clamped, both agree
    # linear-in-sigma interpolation is a different map there (up to ~0.05 of a step)
    linear = from_diffusers(unet, sched, timestep="linear").timesteps(torch.from_numpy(sig))
    assert np.abs(linear.numpy() - theirs).max() > 1e-2


def test_linear_map_inverts_euler_linspace_sigmas(unet):
    sched = EulerDiscreteScheduler()
    sched.set_timesteps(8)
    assert not np.allclose(sched.timesteps.numpy(), sched.timesteps.numpy().round())
    for kind in ("linear", "round"):
        t = from_diffusers(unet, sched, timestep=kind).timesteps(sched.sigmas[:-1].double())
        diff = (t.float() - sched.timesteps).abs().max().item()
        if kind == "linear":
            assert diff < 1e-3
        else:
            assert diff > 0.1  # whole timesteps are not its inverse


def test_round_map_is_dpm_solver_karras_timesteps(unet):
    sched = DPMSolverMultistepScheduler(use_karras_sigmas=True)
    sched.set_timesteps(10)
    t = from_diffusers(unet, sched, timestep="round").timesteps(sched.sigmas[:-1].double())
    assert torch.equal(t.long(), sched.timesteps)
    assert torch.equal(t, t.round())
    unrounded = from_diffusers(unet, sched, timestep="log").timesteps(sched.sigmas[:-1].double())
    assert not torch.equal(unrounded, unrounded.round())


@pytest.mark.parametrize("timestep", ["log", "linear", "round"])
def test_table_sigmas_map_to_their_own_timesteps(unet, timestep):
    sched = DDIMScheduler()
    model = from_diffusers(unet, sched, timestep=timestep)
    abar = sched.alphas_cumprod.double()
    table = ((1 - abar) / abar).sqrt()
    assert model.sigma_min == pytest.approx(float(table[0]), rel=1e-12)
    assert model.sigma_max == pytest.approx(float(table[-1]), rel=1e-12)
    t = model.timesteps(table)
    assert (t - torch.arange(1000, dtype=torch.float64)).abs().max().item() < 1e-6
    mid = model.timesteps((table[:-1] * table[1:]).sqrt())  # halfway in log sigma
    offset = (mid - torch.arange(999)).abs()
    if timestep == "round":
        assert torch.equal(mid, mid.round()) and offset.max().item() <= 1
    elif timestep == "log":
        assert (offset - 0.5).abs().max().item() < 1e-6
    else:  # linear in sigma: a little below halfway, by up to ~0.05 near t = 0
        assert 1e-2 < (0.5 - offset).max().item() < 0.1 and offset.min().item() > 0.4


# ---- the denoiser itself ---------------------------------------------------------------


def test_out_of_table_sigma_warns_once_and_clamps_the_timestep(unet):
    sched = EulerDiscreteScheduler()
    model = from_diffusers(unet, sched)
    x = lab.noise((2, 2, 8, 8), seed=3) * 5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(x, model.sigma_max)  # the table's own ends: no warning
        model(x, model.sigma_min)
        assert caught == []
        high = model(x, 400.0)
        low = model(x, 0.002)
        model(x, torch.tensor([1.0, 1e4]))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "400" in message and "0.01" in message and "157.4" in message
    assert torch.equal(model.timesteps(torch.tensor([400.0, 1e4, 0.002, 1e-5])),
                       torch.tensor([999.0, 999.0, 0.0, 0.0], dtype=torch.float64))
    # clamped timestep, true sigma in the scaling and in D = x - sigma * eps
    for d, sigma, t in ((high, 400.0, 999.0), (low, 0.002, 0.0)):
        eps = unet(x / math.sqrt(1 + sigma**2), torch.tensor([t, t])).sample
        assert rel(d, x - sigma * eps) < 1e-5  # float32 rounding
        assert rel(d, x - min(max(sigma, model.sigma_min), model.sigma_max) * eps) > 1e-3
    # once per model, not once per process
    with pytest.warns(UserWarning, match="outside the model's table"):
        from_diffusers(unet, sched)(x, 400.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoiser_formula_matches_design(unet, prediction_type):
    """DESIGN.md section 7: the network sees ``x / sqrt(1 + s^2)``;
    ``D = x - s * eps`` or ``D = x / (1 + s^2) - s / sqrt(1 + s^2) * v``."""
    sched = EulerDiscreteScheduler(prediction_type=prediction_type)
    model = from_diffusers(unet, sched)
    assert model.prediction_type == prediction_type
    x = lab.noise((2, 2, 8, 8), seed=4) * 3
    s = torch.tensor([0.5, 20.0])
    out = unet(x / (1 + s**2).sqrt()[:, None, None, None], model.timesteps(s).float()).sample
    s4 = s[:, None, None, None]
    if prediction_type == "epsilon":
        expected = x - s4 * out
    else:
        expected = x / (1 + s4**2) - s4 / (1 + s4**2).sqrt() * out
    assert torch.allclose(model(x, s), expected, rtol=1e-5, atol=1e-5)


class Oracle(torch.nn.Module):
    """Returns a fixed tensor: the exact epsilon or v of a known (x0, n)."""

    def __init__(self, output):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()), requires_grad=False)
        self.output = output

    def forward(self, sample, t):
        return (self.output,)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_exact_network_output_gives_exact_x0(prediction_type):
    """With the true epsilon (the noise) or the true v (diffusers' ``get_velocity``:
    ``sqrt(abar) n - sqrt(1 - abar) x0``) the denoiser returns x0 itself, a check of
    the formulas that does not restate them."""
    sched = DDIMScheduler(prediction_type=prediction_type)
    g = torch.Generator().manual_seed(5)
    x0, n = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).unbind(0)
    x0, n = x0[None], n[None]
    t = 600
    abar = float(sched.alphas_cumprod[t])
    sigma = math.sqrt((1 - abar) / abar)
    if prediction_type == "epsilon":
        target = n
    else:
        target = sched.get_velocity(x0, n, torch.tensor([t]))
    model = from_diffusers(Oracle(target), sched)
    d = model(x0 + sigma * n, sigma)
    assert (d - x0).abs().max().item() < 1e-5
    wrong = from_diffusers(Oracle(target), sched,
                           prediction_type="v_prediction" if prediction_type == "epsilon"
                           else "epsilon")
    assert (wrong(x0 + sigma * n, sigma) - x0).abs().max().item() > 0.1


@pytest.mark.parametrize("kwargs, match", [
    ({"timestep": "cubic"}, r"timestep.*'cubic'"),
    ({"timestep": "Log"}, r"timestep.*'Log'"),
    ({"prediction_type": "sample"}, r"prediction_type.*'sample'"),
    ({"prediction_type": "x0"}, r"prediction_type.*'x0'"),
])
def test_bad_option_raises_naming_it(unet, kwargs, match):
    with pytest.raises(ValueError, match=match):
        from_diffusers(unet, EulerDiscreteScheduler(), **kwargs)


def test_sample_prediction_scheduler_is_refused(unet):
    with pytest.raises(ValueError, match=r"prediction_type.*'sample'"):
        from_diffusers(unet, DDIMScheduler(prediction_type="sample"))


def test_scheduler_without_a_table_is_refused(unet):
    with pytest.raises(TypeError, match="alphas_cumprod"):
        from_diffusers(unet, object())
