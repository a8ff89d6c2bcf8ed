"""ODE solvers for the probability-flow ODE ``dx/dsigma = eps(x, sigma)``.

Each is a short step over one helper, :func:`derivative`, in the manner of
k-diffusion's ``sampling.py``. ``sigma`` and ``sigma_next`` are per-sample tensors
shaped to broadcast against ``x``. Multistep rules record the sigma of every model
call, so they stay exact when a wrapper moves the step's endpoints.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from ..tensors import per_sample
from .base import DirectionRule, Param, Rule, is_final


def derivative(model, x, sigma):
    """``(d, x0_hat)`` with ``d = (x - D(x, sigma)) / sigma``, the ODE's slope."""
    x0 = model(x, sigma)
    return (x - x0).div_(sigma), x0  # in place: one temporary, not two


class Euler(DirectionRule):
    """Euler on the probability-flow ODE; identical to deterministic DDIM.

    Order 1, 1 NFE per step. Karras et al. 2022 (EDM), eq. 4; Song et al. 2021 (DDIM).
    """

    name = "euler"

    def direction(self, model, x, sigma, sigma_next):
        return derivative(model, x, sigma)


class Heun(Rule):
    """Heun's method (EDM Algorithm 1); Euler on the last step to sigma = 0.

    Order 2, 2 NFE per step, 2N - 1 in all. Karras et al. 2022.
    """

    name = "heun"

    def calls(self, sigma, sigma_next):
        return 2 if sigma_next > 0 else 1

    def step(self, model, x, sigma, sigma_next, noise):
        h = sigma_next - sigma
        d, x0 = derivative(model, x, sigma)
        x_euler = torch.addcmul(x, h, d)  # x + h d
        if is_final(sigma_next):
            return x_euler, x0
        d_next, _ = derivative(model, x_euler, sigma_next)
        return torch.addcmul(x, h / 2, d.add_(d_next)), x0  # x + h (d + d') / 2


class Midpoint(Rule):
    """Explicit midpoint with the midpoint in log sigma (DPM-2); Euler to sigma = 0.

    Order 2, 2 NFE per step, 2N - 1 in all. k-diffusion ``sample_dpm_2``.
    """

    name = "midpoint"

    def calls(self, sigma, sigma_next):
        return 2 if sigma_next > 0 else 1

    def step(self, model, x, sigma, sigma_next, noise):
        d, x0 = derivative(model, x, sigma)
        if is_final(sigma_next):
            return x - sigma * d, x0
        sigma_mid = (sigma * sigma_next).sqrt()
        d_mid, _ = derivative(model, x + (sigma_mid - sigma) * d, sigma_mid)
        return x + (sigma_next - sigma) * d_mid, x0


class RK4(Rule):
    """Classic fourth-order Runge-Kutta in sigma; Euler on the step to sigma = 0.

    Order 4, 4 NFE per step, 4N - 3 in all.
    """

    name = "rk4"

    def calls(self, sigma, sigma_next):
        return 4 if sigma_next > 0 else 1

    def step(self, model, x, sigma, sigma_next, noise):
        h, half = sigma_next - sigma, (sigma + sigma_next) / 2
        k1, x0 = derivative(model, x, sigma)
        if is_final(sigma_next):
            return x + h * k1, x0
        k2, _ = derivative(model, x + h / 2 * k1, half)
        k3, _ = derivative(model, x + h / 2 * k2, half)
        k4, _ = derivative(model, x + h * k3, sigma_next)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), x0


@functools.cache
def _gauss_legendre(points: int) -> tuple[Tensor, Tensor]:
    nodes, weights = np.polynomial.legendre.leggauss(points)
    return torch.from_numpy(nodes)[:, None], torch.from_numpy(weights)[:, None]


def lms_coefficients(history_sigmas, sigma, sigma_next) -> Tensor:
    """``c_j = integral from sigma to sigma_next of the j-th Lagrange basis polynomial``.

    The basis is over the sigmas at which the stored derivatives were taken (newest
    first); every sigma is a number or a per-sample tensor. Returns ``(k, B)`` in
    float64, computed for the whole batch at once. The basis has degree k - 1, so
    Gauss-Legendre with ``ceil(k / 2)`` points integrates it exactly: no quadrature
    tolerance enters, only rounding.
    """
    def flat(v):
        return torch.as_tensor(v, dtype=torch.float64).reshape(-1)

    nodes = torch.stack(torch.broadcast_tensors(*map(flat, history_sigmas)))  # (k, B)
    lo, hi = flat(sigma), flat(sigma_next)
    k = nodes.shape[0]
    t_unit, w = _gauss_legendre((k + 1) // 2)
    half = (hi - lo) / 2
    t = (lo + hi) / 2 + half * t_unit                              # (q, B)
    others = ~torch.eye(k, dtype=torch.bool)[:, :, None, None]     # (k, k, 1, 1): m != j
    gaps = nodes[:, None] - nodes[None, :]                         # (k, k, B): s_j - s_m
    numer = torch.where(others, t[None, None] - nodes[None, :, None], 1.0).prod(1)  # (k, q, B)
    denom = torch.where(others[..., 0], gaps, 1.0).prod(1)        # (k, B)
    return half * (w * numer).sum(1) / denom


class LMS(DirectionRule):
    """Linear multistep (Adams-Bashforth with variable steps in sigma).

    Order k = ``order`` once k derivatives are stored (order grows 1, 2, ... as the
    history fills). 1 NFE per step. k-diffusion ``sample_lms``; diffusers
    ``LMSDiscreteScheduler``.
    """

    name = "lms"
    params = (Param("order", 4, 1, 4, integer=True, doc="number of past derivatives used"),)

    def reset(self, sigmas=None):
        self.history = []  # (sigma of the call, derivative), newest first

    def direction(self, model, x, sigma, sigma_next):
        d, x0 = derivative(model, x, sigma)
        self.history = [(sigma, d), *self.history][: self.order]
        coeffs = lms_coefficients([s for s, _ in self.history], sigma, sigma_next)
        # x_next = x + sum_j c_j d_j, written as a move along the mean slope
        step = sum(per_sample(c.to(x.dtype), x) * dj for c, (_, dj) in zip(coeffs, self.history))
        return step / (sigma_next - sigma), x0


class DPMSolverPP2M(DirectionRule):
    """DPM-Solver++(2M): second-order multistep in ``t = -log sigma`` on x0_hat.

    Order 2, 1 NFE per step; the first step is first order and the step to sigma = 0
    returns x0_hat. Lu et al. 2022, k-diffusion ``sample_dpmpp_2m``.
    """

    name = "dpmpp_2m"
    direction_kind = "x0"  # x_next = D + (sigma_next / sigma)(x - D) = (s'/s) x - expm1(-h) D

    def reset(self, sigmas=None):
        self.previous = None  # (sigma of the call, x0_hat)

    def direction(self, model, x, sigma, sigma_next):
        x0 = model(x, sigma)
        previous, self.previous = self.previous, (sigma, x0)
        if previous is None or is_final(sigma_next):
            return x0, x0
        h = (sigma / sigma_next).log()
        half_inv_r = h / (previous[0] / sigma).log() / 2  # 1 / (2 r)
        return (1 + half_inv_r) * x0 - half_inv_r * previous[1], x0
