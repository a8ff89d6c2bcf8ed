"""Exact denoisers agree with each other and sampling recovers the data distribution."""

import torch

import lab
from lab.models import Empirical, Gaussian, GaussianMixture


def test_gaussian_equals_one_component_mixture(gaussian):
    mix = GaussianMixture(gaussian.means, gaussian.covs, torch.ones(1))
    x = lab.noise((32, 4), seed=0, dtype=torch.float64) * 3
    for s in (0.01, 0.5, 2.0, 50.0):
        assert (gaussian(x, s) - mix(x, s)).abs().max().item() < 1e-12


def test_gaussian_denoiser_formula(gaussian):
    x = lab.noise((8, 4), seed=1, dtype=torch.float64)
    s = 0.7
    cov, mu = gaussian.covs[0], gaussian.means[0]
    expected = mu + (cov @ torch.linalg.inv(cov + s**2 * torch.eye(4, dtype=torch.float64))
                     @ (x - mu).T).T
    assert (gaussian(x, s) - expected).abs().max().item() < 1e-12


def test_gaussian_solution_solves_the_ode(gaussian):
    """d/dsigma of the closed form equals eps(x(sigma), sigma)."""
    x = lab.noise((4, 4), seed=2, dtype=torch.float64) * 5
    s, h = 1.3, 1e-5
    slope = (gaussian.solve(x, 5.0, s + h) - gaussian.solve(x, 5.0, s - h)) / (2 * h)
    assert (slope - gaussian.eps(gaussian.solve(x, 5.0, s), s)).abs().max().item() < 1e-8


def test_empirical_equals_mixture_with_tiny_covariances():
    data = torch.tensor([[0.0, 1.0], [2.0, -1.0], [-3.0, 0.5], [1.0, 4.0]], dtype=torch.float64)
    tiny = 1e-14 * torch.eye(2, dtype=torch.float64).expand(4, 2, 2)
    mix = GaussianMixture(data, tiny.clone())
    emp = Empirical(data, chunk=3)  # chunking exercises the running softmax
    x = lab.noise((16, 2), seed=3, dtype=torch.float64) * 2
    for s in (0.05, 0.5, 3.0, 40.0):
        assert (emp(x, s) - mix(x, s)).abs().max().item() < 1e-9


def test_empirical_handles_a_large_data_set_in_chunks():
    data = lab.noise((20_000, 784), seed=4)
    emp = Empirical(data, chunk=4096)
    x = data[:3].double() + 1e-3 * lab.noise((3, 784), seed=5, dtype=torch.float64)
    assert (emp(x.float(), 0.05) - data[:3]).abs().max().item() < 1e-4  # nearest point wins


def test_heun_recovers_mixture_weights_and_means():
    means = torch.tensor([[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]], dtype=torch.float64)
    covs = torch.stack([0.3 * torch.eye(2, dtype=torch.float64)] * 3)
    weights = torch.tensor([0.2, 0.5, 0.3])
    mix = GaussianMixture(means, covs, weights)
    sig = lab.schedules.karras(50)
    x = lab.noise((20_000, 2), seed=6, dtype=torch.float64) * sig[0]
    out = lab.sample(mix, x, sig, "heun", record="final").x
    nearest = torch.cdist(out, means).argmin(1)
    for k in range(3):
        assert abs((nearest == k).double().mean().item() - weights[k].item()) < 0.02
        assert (out[nearest == k].mean(0) - means[k]).abs().max().item() < 0.05


def test_mixture_sample_matches_its_moments():
    mix = GaussianMixture(torch.tensor([[0.0, 0.0], [10.0, 0.0]]),
                          torch.stack([torch.eye(2), 2 * torch.eye(2)]), torch.tensor([0.25, 0.75]))
    s = mix.sample(8000, seed=0, dtype=torch.float64)
    assert abs(s[:, 0].mean().item() - 7.5) < 0.15
    assert s.shape == (8000, 2)
    assert torch.equal(mix.sample(5, seed=1), mix.sample(9, seed=1)[:5])  # per-sample streams


def test_posterior_sums_to_one(mixture):
    x = lab.noise((10, 2), seed=0, dtype=torch.float64)
    assert torch.allclose(mixture.posterior(x, 1.0).sum(1), torch.ones(10, dtype=torch.float64))


def test_gaussian_with_image_shape():
    g = Gaussian(torch.zeros(4), torch.eye(4), shape=(1, 2, 2))
    x = lab.noise((3, 1, 2, 2), seed=0)
    assert g(x, 1.0).shape == (3, 1, 2, 2)
    assert torch.allclose(g(x, 1.0), x / 2)
