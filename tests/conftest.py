import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a stray hub call fails at once

import pytest  # noqa: E402
import torch  # noqa: E402

import lab  # noqa: E402

EIGENVALUES = (0.01, 0.1, 1.0, 4.0)


def rotated_gaussian(eigenvalues=EIGENVALUES, seed=0) -> lab.models.Gaussian:
    """A Gaussian with the given covariance eigenvalues in a random rotation (float64)."""
    g = torch.Generator().manual_seed(seed)
    d = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    cov = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    return lab.models.Gaussian(mean, (cov + cov.T) / 2)


def two_d_mixture() -> lab.models.GaussianMixture:
    means = torch.tensor([[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]], dtype=torch.float64)
    covs = torch.stack([torch.diag(torch.tensor(v, dtype=torch.float64))
                        for v in ([0.3, 0.1], [0.2, 0.4], [0.25, 0.25])])
    return lab.models.GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2]))


@pytest.fixture
def gaussian():
    return rotated_gaussian()


@pytest.fixture
def mixture():
    return two_d_mixture()
