"""Optimiser view == ODE view: the identities of DESIGN.md section 2, in float64 to 1e-10."""

import numpy as np
import pytest
import torch

import lab
from lab import rules

TOL = 1e-10


def run(model, rule, n=12, seed=0):
    sig = lab.schedules.karras(n, sigma_min=0.01, sigma_max=20.0)
    x = lab.noise((6, model.dim), seed=seed, dtype=torch.float64) * sig[0]
    return lab.sample(model, x, sig, rule, seed=seed)


def assert_same(a, b):
    assert (a.x - b.x).abs().max().item() < TOL
    assert a.nfe == b.nfe


@pytest.mark.parametrize("model_name", ["gaussian", "mixture"])
class TestOptimiserIdentities:
    def test_plain_is_euler(self, model_name, request):
        m = request.getfixturevalue(model_name)
        assert_same(run(m, rules.get("plain", lr_scale=1.0)), run(m, "euler"))

    def test_momentum_zero_is_plain(self, model_name, request):
        m = request.getfixturevalue(model_name)
        assert_same(run(m, rules.get("momentum", beta=0.0)), run(m, "plain"))

    def test_nesterov_zero_is_plain(self, model_name, request):
        m = request.getfixturevalue(model_name)
        assert_same(run(m, rules.get("nesterov", beta=0.0)), run(m, "plain"))

    def test_torch_sgd_is_plain(self, model_name, request):
        m = request.getfixturevalue(model_name)
        assert_same(run(m, rules.optim(torch.optim.SGD)), run(m, "plain"))

    @pytest.mark.parametrize("beta", [0.5, 0.9])
    def test_torch_sgd_momentum_is_momentum(self, model_name, request, beta):
        m = request.getfixturevalue(model_name)
        opt = rules.optim(torch.optim.SGD, momentum=beta, dampening=beta)
        assert_same(run(m, opt), run(m, rules.get("momentum", beta=beta)))

    def test_torch_adam_is_adam(self, model_name, request):
        m = request.getfixturevalue(model_name)
        opt = rules.optim(torch.optim.Adam, betas=(0.8, 0.95), eps=1e-6)
        assert_same(run(m, opt), run(m, rules.get("adam", betas=(0.8, 0.95), eps=1e-6)))


def test_adam_without_moments_is_sign_descent(gaussian):
    """betas = (0, 0): each step is x - lr * eps / (|eps| + adam_eps) ~ x - lr * sign(eps)."""
    sig = lab.schedules.karras(8, sigma_min=0.01, sigma_max=20.0)
    x = lab.noise((5, 4), seed=1, dtype=torch.float64) * sig[0]
    adam_eps = 1e-12
    traj = lab.sample(gaussian, x, sig, rules.get("adam", betas=(0.0, 0.0), eps=adam_eps))
    for i in range(len(sig) - 1):
        s, s_next = float(sig[i]), float(sig[i + 1])
        g = gaussian.eps(traj.xs[i], s)
        expected = traj.xs[i] - (s - s_next) * torch.sign(g)
        # |g / (|g| + e) - sign(g)| <= e / |g|, times lr
        bound = (s - s_next) * adam_eps / g.abs().min().item() + TOL
        assert (traj.xs[i + 1] - expected).abs().max().item() < bound


def test_momentum_changes_the_path(gaussian):
    """The identities above must not hold by accident: beta > 0 moves the result."""
    a = run(gaussian, rules.get("momentum", beta=0.9))
    b = run(gaussian, "plain")
    assert (a.x - b.x).abs().max().item() > 1e-3


DETERMINISTIC = rules.available("deterministic")


@pytest.mark.parametrize("name", [n for n in DETERMINISTIC if n != "optim"])
@pytest.mark.parametrize("wrapper", [
    lambda r: rules.ancestral(r, eta=0.0),
    lambda r: rules.churn(r, s_churn=0.0),
    lambda r: rules.langevin(r, steps=0),
], ids=["ancestral", "churn", "langevin"])
def test_wrapper_at_zero_strength_is_the_rule(mixture, name, wrapper):
    assert_same(run(mixture, wrapper(rules.get(name))), run(mixture, name))


def test_wrappers_compose_with_the_optim_adapter(mixture):
    assert_same(run(mixture, rules.ancestral(rules.optim("SGD"), eta=0.0)), run(mixture, "plain"))


def test_subtracting_a_fraction_of_the_noise_is_euler_on_a_geometric_schedule(gaussian):
    """x <- x - c * sigma * eps each step, i.e. sigma_{i+1} = (1 - c) sigma_i."""
    c, n = 0.3, 10
    sig = torch.tensor([20.0 * (1 - c) ** i for i in range(n + 1)], dtype=torch.float64)
    x = lab.noise((4, 4), seed=2, dtype=torch.float64) * sig[0]
    manual = x.clone()
    for s in sig[:-1].tolist():
        manual = manual - c * s * gaussian.eps(manual, s)
    assert (lab.sample(gaussian, x, sig, "euler").x - manual).abs().max().item() < TOL


def test_euler_step_is_ddim(gaussian):
    """Deterministic DDIM in VP form, x_vp = x / sqrt(1 + s^2), equals the Euler step."""
    sig = lab.schedules.karras(6, sigma_min=0.05, sigma_max=10.0)
    x = lab.noise((3, 4), seed=3, dtype=torch.float64) * sig[0]
    traj = lab.sample(gaussian, x, sig, "euler")
    for i in range(len(sig) - 1):
        s, s_next = float(sig[i]), float(sig[i + 1])
        a, a_next = 1 / (1 + s**2), 1 / (1 + s_next**2)  # alpha-bar
        x_vp = traj.xs[i] * a**0.5
        eps = gaussian.eps(traj.xs[i], s)
        x0 = (x_vp - (1 - a) ** 0.5 * eps) / a**0.5
        ddim = a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps
        assert (ddim / a_next**0.5 - traj.xs[i + 1]).abs().max().item() < 1e-9


def _no_noise(like):
    return torch.zeros_like(like)


@pytest.mark.parametrize("name", [n for n in rules.available() if n != "optim"])
def test_per_sample_sigmas_move_each_sample_as_if_alone(mixture, name):
    """The loop hands rules (B, 1, ...) sigmas; a different schedule per sample (as when
    sigma is read off the image) moves each sample exactly as a run of that sample alone.
    Noise is switched off so that only the sigma arithmetic is compared."""
    tops = (20.0, 10.0, 5.0)
    scheds = [lab.schedules.karras(5, sigma_max=top) for top in tops]
    x = lab.noise((3, 2), seed=0, dtype=torch.float64) * torch.tensor(tops)[:, None]
    batch, alone = rules.get(name), [rules.get(name) for _ in tops]
    for r in (batch, *alone):
        r.reset(scheds[0])
    xb, xs = x, [x[b:b + 1] for b in range(3)]
    for i in range(len(scheds[0]) - 1):
        s = torch.stack([sc[i] for sc in scheds])[:, None]
        s_next = torch.stack([sc[i + 1] for sc in scheds])[:, None]
        xb, _ = batch.step(mixture, xb, s, s_next, _no_noise)
        for b in range(3):
            xs[b], _ = alone[b].step(mixture, xs[b], s[b:b + 1], s_next[b:b + 1], _no_noise)
    assert (xb - torch.cat(xs)).abs().max().item() < 1e-10


def test_the_torch_optim_adapter_needs_one_sigma_per_step(mixture):
    rule = rules.optim("SGD")
    with pytest.raises(ValueError, match="schedule"):
        rule.step(mixture, torch.zeros(2, 2), torch.tensor([[1.0], [2.0]]),
                  torch.full((2, 1), 0.5), lab.seeding.NoiseSource(0, 2))


def test_lms_coefficients_are_the_integrals_of_the_lagrange_basis():
    """Vectorised over the batch, against numpy's exact polynomial integrals per sample."""
    from numpy.polynomial import Polynomial

    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 3, 4):
        # per-sample nodes, newest first (descending in time = ascending sigma order)
        nodes = torch.sort(torch.rand(5, k, generator=g, dtype=torch.float64) * 10 + 1,
                           dim=1).values
        sigma, sigma_next = nodes[:, 0] * 0.99, nodes[:, 0] * 0.5
        got = rules.lms_coefficients(list(nodes.T), sigma, sigma_next)
        assert got.shape == (k, 5)
        for b in range(5):
            pts = nodes[b].tolist()
            for j, node in enumerate(pts):
                others = pts[:j] + pts[j + 1:]
                basis = Polynomial.fromroots(others) if others else Polynomial([1.0])
                basis = basis / float(np.prod([node - o for o in others]))
                want = basis.integ()(float(sigma_next[b])) - basis.integ()(float(sigma[b]))
                assert abs(float(got[j, b]) - want) < 1e-12 * max(1.0, abs(want))


def test_the_loop_hands_rules_per_sample_sigmas(mixture):
    seen = []

    class Spy(rules.Rule):
        name = ""  # not registered

        def step(self, model, x, sigma, sigma_next, noise):
            seen.append((sigma.shape, sigma_next.shape, sigma.dtype))
            return x + (sigma_next - sigma) * (x - model(x, sigma)) / sigma, x

    sig = lab.schedules.karras(3)
    lab.sample(mixture, lab.noise((4, 2)) * sig[0], sig, Spy())
    assert seen == [((4, 1), (4, 1), torch.float32)] * 3
