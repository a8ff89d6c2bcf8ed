"""Exact denoisers: a Gaussian, a Gaussian mixture, and a finite data set.

Their outputs are the true posterior means ``E[x0 | x]``, so the samplers' errors
can be measured against ground truth.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..seeding import derive_seed

__all__ = ["Gaussian", "GaussianMixture", "Empirical"]


def _float64(v) -> Tensor:
    """A float64 tensor from a tensor, an array, or a (nested) list of either."""
    if isinstance(v, (list, tuple)) and v and isinstance(v[0], Tensor):
        return torch.stack([t.to(torch.float64) for t in v])
    return torch.as_tensor(v).to(torch.float64)


def _as_matrix_batch(covs: Tensor, dim: int, k: int) -> Tensor:
    if covs.shape != (k, dim, dim):
        raise ValueError(f"covariances must have shape ({k}, {dim}, {dim}), got "
                         f"{tuple(covs.shape)}")
    if not torch.allclose(covs, covs.transpose(-1, -2), atol=1e-8 * (1 + covs.abs().max())):
        raise ValueError("covariances must be symmetric")
    return covs


class GaussianMixture(Denoiser):
    """``sum_k pi_k N(mu_k, Sigma_k)`` in ``d`` dimensions, samples shaped ``(B, *shape)``.

    ``D(x; s) = sum_k w_k(x) m_k(x)``, ``m_k = mu_k + Sigma_k (Sigma_k + s^2 I)^-1 (x - mu_k)``,
    ``w = softmax_k(log pi_k - 1/2 log det(C_k) - 1/2 (x - mu_k)^T C_k^-1 (x - mu_k))``
    with ``C_k = Sigma_k + s^2 I``.
    Computed through each covariance's eigendecomposition in float64.
    """

    def __init__(self, means, covs, weights=None, shape: tuple[int, ...] | None = None):
        super().__init__()
        means = _float64(means)
        if means.ndim != 2:
            raise ValueError(f"means must be (K, d), got shape {tuple(means.shape)}")
        k, dim = means.shape
        covs = _as_matrix_batch(_float64(covs), dim, k)
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else \
            _float64(weights)
        if weights.shape != (k,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {k} positive numbers, got {weights.tolist()}")
        lam, vecs = torch.linalg.eigh(covs)
        if float(lam.min()) < -1e-10 * max(1.0, float(lam.max())):
            raise ValueError(f"covariances must be positive semi-definite; smallest eigenvalue "
                             f"{float(lam.min()):.3g}")
        shape = (dim,) if shape is None else tuple(shape)
        if math.prod(shape) != dim:
            raise ValueError(f"shape {shape} does not hold {dim} numbers")
        self.sample_shape = shape
        self.register_buffer("means", means)
        self.register_buffer("covs", covs)
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("eigvals", lam.clamp_min(0))
        self.register_buffer("eigvecs", vecs)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _components(self, x: Tensor, sigma: Tensor):
        """Per-component posterior means ``(B, K, d)`` and log weights ``(B, K)``."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        s2 = sigma.to(torch.float64).reshape(-1, 1, 1) ** 2  # (B, 1, 1)
        centred = flat[:, None, :] - self.means[None]  # (B, K, d)
        coords = torch.einsum("kdj,bkd->bkj", self.eigvecs, centred)  # in each eigenbasis
        lam = self.eigvals[None]  # (1, K, d)
        shrunk = torch.einsum("kdj,bkj->bkd", self.eigvecs, coords * lam / (lam + s2))
        logits = (self.weights.log()[None]
                  - 0.5 * torch.log(lam + s2).sum(-1)
                  - 0.5 * (coords**2 / (lam + s2)).sum(-1))
        return self.means[None] + shrunk, logits

    def denoise(self, x, sigma):
        means, logits = self._components(x, sigma)
        out = (torch.softmax(logits, dim=1)[..., None] * means).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    def posterior(self, x: Tensor, sigma) -> Tensor:
        """Responsibilities ``w_k(x)`` of the components, ``(B, K)``."""
        from ..denoiser import as_sigma

        return torch.softmax(self._components(x, as_sigma(sigma, x))[1], dim=1)

    def sample(self, n: int, seed: int = 0, dtype=torch.float32) -> Tensor:
        """``n`` exact samples; sample j depends on ``(seed, j)`` alone."""
        out = []
        for j in range(n):
            g = torch.Generator().manual_seed(derive_seed(seed, j, 2))
            k = int(torch.multinomial(self.weights, 1, generator=g))
            z = torch.randn(self.dim, generator=g, dtype=torch.float64)
            out.append(self.means[k] + self.eigvecs[k] @ (self.eigvals[k].sqrt() * z))
        return torch.stack(out).reshape(n, *self.sample_shape).to(dtype)


class Gaussian(GaussianMixture):
    """``N(mu, Sigma)`` with full covariance; exact denoiser and closed-form ODE solution.

    ``D(x; s) = mu + Sigma (Sigma + s^2 I)^-1 (x - mu)``; along the probability-flow ODE
    ``x(s) = mu + U diag(sqrt((lam + s^2) / (lam + s0^2))) U^T (x(s0) - mu)``.
    """

    def __init__(self, mean, cov, shape: tuple[int, ...] | None = None):
        mean, cov = _float64(mean), _float64(cov)
        super().__init__(mean[None], cov[None], None, shape)

    def denoise(self, x, sigma):
        means, _ = self._components(x, sigma)  # one component: no weights to compute
        return means[:, 0].reshape(x.shape).to(x.dtype)

    def solve(self, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """The exact ODE flow of ``x`` from ``sigma_from`` to ``sigma_to`` (either may be 0)."""
        lam, vecs, mu = self.eigvals[0], self.eigvecs[0], self.means[0]
        flat = x.reshape(x.shape[0], -1).to(torch.float64) - mu
        ratio = ((lam + sigma_to**2) / (lam + sigma_from**2)).sqrt()
        out = mu + ((flat @ vecs) * ratio) @ vecs.T
        return out.reshape(x.shape).to(x.dtype)


class Empirical(Denoiser):
    """The ideal denoiser of a finite data set ``{y_k}``: ``D(x; s) = sum_k w_k y_k``,
    ``w = softmax(-|x - y_k|^2 / (2 s^2))`` (EDM appendix B.3).

    Distances are float64; the data is streamed in chunks with a running softmax, so
    60,000 x 784 images fit in memory.
    """

    def __init__(self, data: Tensor, chunk: int = 8192):
        super().__init__()
        if not isinstance(data, Tensor) or data.ndim < 2 or data.shape[0] < 1:
            raise ValueError("data must be a (N, ...) tensor with at least one sample")
        self.sample_shape = tuple(data.shape[1:])
        self.chunk = int(chunk)
        flat = data.reshape(data.shape[0], -1).to(torch.float64)
        self.register_buffer("data", flat)
        self.register_buffer("sq_norms", (flat**2).sum(1))

    def denoise(self, x, sigma):
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        inv = 1.0 / (2 * sigma.to(torch.float64) ** 2)[:, None]  # (B, 1)
        x_sq = (flat**2).sum(1, keepdim=True)
        running_max = torch.full((flat.shape[0], 1), -math.inf, dtype=torch.float64)
        total = torch.zeros_like(running_max)
        acc = torch.zeros_like(flat)
        for start in range(0, self.data.shape[0], self.chunk):
            y = self.data[start:start + self.chunk]
            dist = (x_sq - 2 * flat @ y.T + self.sq_norms[start:start + self.chunk]).clamp_min(0)
            logits = -dist * inv
            new_max = torch.maximum(running_max, logits.max(1, keepdim=True).values)
            rescale = torch.exp(running_max - new_max)
            w = torch.exp(logits - new_max)
            total = total * rescale + w.sum(1, keepdim=True)
            acc = acc * rescale + w @ y
            running_max = new_max
        return (acc / total).reshape(x.shape).to(x.dtype)
