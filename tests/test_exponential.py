"""Exponential integrators (``lab.rules.exponential``): DPM-Solver++(3M) and UniPC against
diffusers' schedulers on the same sigmas, every step, to a relative error of 1e-4; their
orders of convergence on a Gaussian with a closed-form ODE solution; and the identities
that tie them to the lab's other rules.

The diffusers configurations (0.42) that run the lab's algorithms:

- ``dpmpp_3m`` = ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
  solver_order=3, lower_order_final=False, final_sigmas_type="zero")``. The zero final
  sigma makes the last step first order (it returns x0_hat) whatever the other flags;
  ``lower_order_final=False`` keeps the step before it at order 3 (with True, and fewer
  than 15 steps, diffusers drops it to order 2: a mismatch below). ``solver_type``
  ("midpoint", the default) only shapes the second-order warm-up step, which is then
  ``dpmpp_2m``'s; ``euler_at_final=False``, ``thresholding=False`` (defaults).
- ``unipc(order=p)`` = ``UniPCMultistepScheduler(solver_type="bh2", predict_x0=True,
  solver_order=p, lower_order_final=True, final_sigmas_type="zero",
  disable_corrector=[])``. ``lower_order_final=True`` is needed: with False the
  predictor of order 2 or more divides by ``r_k = 0`` on the step to sigma 0 and
  diffusers returns NaN. With True the order is at most the steps left, as the rule
  does when its schedule ends at 0.

Sigma maps: with ``use_karras_sigmas=True`` both schedulers round their timesteps but
keep the Karras sigmas, so the network sees the table's sigma at the rounded timestep
while the update uses the Karras one; the lab runs on ``from_diffusers(net, sched,
timestep="round")`` of the same network (the exact model through ``to_diffusers`` in
float64, or the tiny seeded UNet). On the exact model directly, the default spacing
(whole timesteps, sigmas on the table), as in ``test_to_diffusers.py``.
"""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

import lab
from lab import rules
from lab.models import from_diffusers, scheduler_sigmas, scheduler_steps
from lab.models.vp_export import to_diffusers
from lab.rules import exponential

from .test_convergence import errors, slope
from .test_diffusers_parity import parity as unet_parity
from .test_diffusers_parity import unet  # noqa: F401  (the seeded tiny UNet fixture)
from .test_to_diffusers import (
    SHAPE,
    image_mixture,
    one_thread,  # noqa: F401  (autouse: the parity runs on one thread)
    rel,
)
from .test_to_diffusers import parity as exact_parity

TOL = 1e-4
STEPS = 10

# diffusers 0.42 calls np.array on torch tensors in set_timesteps (numpy 2 "copy" notice)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")

DPM_3M = (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 3,
                                        "lower_order_final": False,
                                        "final_sigmas_type": "zero"})


def unipc_config(order=2, **extra):
    return (UniPCMultistepScheduler, {"solver_type": "bh2", "predict_x0": True,
                                      "solver_order": order, "lower_order_final": True,
                                      "final_sigmas_type": "zero", "disable_corrector": [],
                                      **extra})


# (id, (scheduler class, kwargs), lab rule)
PAIRS = [
    ("dpmpp_3m", DPM_3M, "dpmpp_3m"),
    ("unipc", unipc_config(), "unipc"),
    ("unipc-1", unipc_config(1), rules.get("unipc", order=1)),
    ("unipc-3", unipc_config(3), rules.get("unipc", order=3)),
]
IDS = [p[0] for p in PAIRS]


@pytest.fixture(scope="module")
def model():
    return image_mixture()


def karras_step_errors(model, make, rule, timestep="round"):
    """Relative error after every step: diffusers on ``to_diffusers(model)`` with Karras
    sigmas against the lab on the model as diffusers evaluates it (``timestep`` map)."""
    net = to_diffusers(model)
    sched = net.make_scheduler(make[0], **make[1], use_karras_sigmas=True)
    sched.set_timesteps(STEPS)
    sigmas = scheduler_sigmas(sched)
    seen = from_diffusers(to_diffusers(model, dtype=torch.float64), sched, timestep=timestep)
    start = lab.noise((2, *SHAPE), seed=0, dtype=torch.float64) * float(sigmas[0])
    traj = lab.sample(seen, start, sigmas, rule, seed=0)
    assert traj.nfe == STEPS
    ref = [x for _, x, _ in scheduler_steps(net, sched, start)]
    return [rel(a, b) for a, b in zip(traj.xs[1:], ref, strict=True)]


# ---- parity ----------------------------------------------------------------------------


@pytest.mark.parametrize("make, rule", [p[1:] for p in PAIRS], ids=IDS)
def test_matches_diffusers_on_an_exact_model(model, make, rule):
    worst, traj = exact_parity(model, make, rule, "log", STEPS, True)
    assert worst <= TOL, f"worst step error {worst:.3g}"
    assert traj.nfe == STEPS


@pytest.mark.parametrize("make, rule", [p[1:] for p in PAIRS], ids=IDS)
def test_matches_diffusers_on_karras_sigmas(model, make, rule):
    worst = max(karras_step_errors(model, make, rule))
    assert worst <= TOL, f"worst step error {worst:.3g}"


@pytest.mark.parametrize("make, rule", [p[1:] for p in PAIRS], ids=IDS)
def test_matches_diffusers_on_a_unet(unet, make, rule):  # noqa: F811
    sched = make[0](**make[1], use_karras_sigmas=True)
    worst, final, traj = unet_parity(unet, sched, rule, "round", STEPS, vp=True)
    assert worst <= TOL, f"worst step error {worst:.3g}, final {final:.3g}"
    assert traj.nfe == STEPS


# Each differs from the matching pair in one detail; the comparison sees it by far.
MISMATCHES = [
    # diffusers drops the second-to-last step to order 2 below 15 steps
    ("3m-lower-order-final", (DPM_3M[0], {**DPM_3M[1], "lower_order_final": True}),
     "dpmpp_3m", "round"),
    ("2m-against-3m", DPM_3M, "dpmpp_2m", "round"),
    # the Karras sigma itself, not the rounded timestep's, fed to the network
    ("unrounded-timesteps", DPM_3M, "dpmpp_3m", "log"),
    ("unipc-without-corrector", unipc_config(disable_corrector=list(range(STEPS))), "unipc",
     "round"),
    ("unipc-order-2-against-3", unipc_config(3), "unipc", "round"),
]


@pytest.mark.parametrize("make, rule, timestep", [p[1:] for p in MISMATCHES],
                         ids=[p[0] for p in MISMATCHES])
def test_the_comparison_can_fail(model, make, rule, timestep):
    assert max(karras_step_errors(model, make, rule, timestep)) > 5 * TOL


def test_a_perturbed_unipc_fails_the_comparison(model, monkeypatch):
    exact = exponential.unipc_weights
    monkeypatch.setattr(exponential, "unipc_weights",
                        lambda nodes, h: [1.05 * w for w in exact(nodes, h)])
    assert max(karras_step_errors(model, unipc_config(3), rules.get("unipc", order=3))) > 5 * TOL


# ---- identities ------------------------------------------------------------------------


def run(model, rule, sig):
    x = lab.noise((8, 2), seed=0, dtype=torch.float64) * sig[0]
    return lab.sample(model, x, sig, rule, seed=0).xs


def test_dpmpp_3m_starts_as_dpmpp_2m(mixture):
    """Orders 1 and 2 (the first two steps) are ``dpmpp_2m``'s; the third step is not."""
    sig = lab.schedules.karras(4, sigma_min=0.5, sigma_max=20.0, append_zero=False)
    a, b = run(mixture, "dpmpp_3m", sig), run(mixture, "dpmpp_2m", sig)
    assert (a[:3] - b[:3]).abs().max().item() < 1e-10
    assert (a[3] - b[3]).abs().max().item() > 1e-4


def test_heavy_ball_at_beta_zero_is_dpmpp_3m(mixture):
    sig = lab.schedules.karras(12, sigma_max=20.0)
    plain = run(mixture, "dpmpp_3m", sig)[-1]
    assert (run(mixture, rules.heavy_ball("dpmpp_3m", beta=0.0), sig)[-1]
            - plain).abs().max().item() < 1e-10
    assert (run(mixture, rules.heavy_ball("dpmpp_3m", beta=0.5), sig)[-1]
            - plain).abs().max().item() > 1e-3


def test_unipc_first_step_is_euler(mixture):
    """No history, no correction yet: the exponential first-order step is Euler."""
    sig = lab.schedules.karras(6, sigma_max=20.0)
    assert (run(mixture, "unipc", sig)[1] - run(mixture, "euler", sig)[1]).abs().max() < 1e-10


def test_unipc_keeps_the_noise_a_wrapper_adds(gaussian):
    """The correction is added to the state the step receives, so ancestral noise added
    after the prediction survives it: samples keep the data's covariance (relative error
    0.08 here; 0.45 if the corrected state replaced the noisy one, 0.18 for ancestral
    Euler)."""
    sig = lab.schedules.karras(30, sigma_min=0.002, sigma_max=80.0)
    x = lab.noise((4000, 4), seed=1, dtype=torch.float64) * 80.0
    rule = rules.ancestral(rules.get("unipc", order=1), eta=0.3)
    out = lab.sample(gaussian, x, sig, rule, seed=3, record="final").x
    cov = gaussian.covs[0]
    assert (torch.cov(out.T) - cov).norm() / cov.norm() < 0.2


def test_unipc_is_not_a_one_direction_rule():
    """Its corrector moves the state itself, so heavy ball has no direction to average."""
    with pytest.raises(ValueError, match="no single direction"):
        rules.heavy_ball("unipc")


def test_phi_is_accurate_on_both_sides_of_its_switch():
    z = torch.tensor([-8.0, -1.0001, -0.9999, -0.3, -1e-4], dtype=torch.float64)
    assert torch.allclose(exponential.phi(1, z), torch.expm1(z) / z, rtol=1e-12)
    closed = ((torch.expm1(z) - z) / z**2 - 0.5) / z  # phi_3, which cancels at small z
    assert torch.allclose(exponential.phi(3, z)[:4], closed[:4], rtol=1e-10)
    tiny = torch.tensor([-1e-7], dtype=torch.float64)
    assert exponential.phi(3, tiny).item() == pytest.approx(1 / 6 - 1e-7 / 24, rel=1e-14)


# ---- orders of convergence (tests/test_convergence.py's setup: Karras 80 -> 0.002) -----


@pytest.mark.parametrize("rule, low, high", [
    # DPM-Solver++(3M) as diffusers and k-diffusion write it keeps only half of the
    # second-derivative term of D (its D2 ~ h^2 D''/2 meets a coefficient made for
    # h^2 D''): second order, fitted 2.1 here.
    ("dpmpp_3m", 1.8, 2.4),
    (rules.get("unipc", order=1), 1.8, 2.2),
    ("unipc", 2.7, 3.3),  # UniC lifts UniP-2 by one
    (rules.get("unipc", order=3), 3.7, 4.4),
], ids=["dpmpp_3m", "unipc-1", "unipc-2", "unipc-3"])
def test_orders_of_convergence(gaussian, rule, low, high):
    fitted = slope(errors(gaussian, rule))
    assert low <= fitted <= high, f"fitted slope {fitted:.2f}"


def test_dpmpp_3m_beats_dpmpp_2m_at_every_step_count(gaussian):
    """Same order, smaller error: its third-order terms still pay."""
    assert all(a < b / 2 for a, b in zip(errors(gaussian, "dpmpp_3m"),
                                         errors(gaussian, "dpmpp_2m")))
