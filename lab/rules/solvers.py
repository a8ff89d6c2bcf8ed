"""ODE solvers for the probability-flow ODE ``dx/dsigma = eps(x, sigma)``.

Each is a short step over one helper, :func:`derivative`, in the manner of
k-diffusion's ``sampling.py``. Multistep rules record the sigma of every model call,
so they stay exact when a wrapper moves the step's endpoints.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.polynomial import Polynomial
from torch import Tensor

from .base import Param, Rule, at, expm1, log, sqrt


def derivative(model, x, sigma):
    """``(d, x0_hat)`` with ``d = (x - D(x, sigma)) / sigma``, the ODE's slope."""
    x0 = model(x, sigma)
    return (x - x0) / at(sigma, x), x0


class Euler(Rule):
    """Euler on the probability-flow ODE; identical to deterministic DDIM.

    Order 1, 1 NFE per step. Karras et al. 2022 (EDM), eq. 4; Song et al. 2021 (DDIM).
    """

    name = "euler"

    def step(self, model, x, sigma, sigma_next, noise):
        d, x0 = derivative(model, x, sigma)
        return x + at(sigma_next - sigma, x) * d, x0


class Heun(Rule):
    """Heun's method (EDM Algorithm 1); Euler on the last step to sigma = 0.

    Order 2, 2 NFE per step, 2N - 1 in all. Karras et al. 2022.
    """

    name = "heun"

    def calls(self, sigma, sigma_next):
        return 2 if sigma_next > 0 else 1

    def step(self, model, x, sigma, sigma_next, noise):
        h = at(sigma_next - sigma, x)
        d, x0 = derivative(model, x, sigma)
        x_euler = x + h * d
        if sigma_next == 0:
            return x_euler, x0
        d_next, _ = derivative(model, x_euler, sigma_next)
        return x + h * (d + d_next) / 2, x0


class Midpoint(Rule):
    """Explicit midpoint with the midpoint in log sigma (DPM-2); Euler to sigma = 0.

    Order 2, 2 NFE per step, 2N - 1 in all. k-diffusion ``sample_dpm_2``.
    """

    name = "midpoint"

    def calls(self, sigma, sigma_next):
        return 2 if sigma_next > 0 else 1

    def step(self, model, x, sigma, sigma_next, noise):
        d, x0 = derivative(model, x, sigma)
        if sigma_next == 0:
            return x - at(sigma, x) * d, x0
        sigma_mid = sqrt(sigma * sigma_next)
        d_mid, _ = derivative(model, x + at(sigma_mid - sigma, x) * d, sigma_mid)
        return x + at(sigma_next - sigma, x) * d_mid, x0


class RK4(Rule):
    """Classic fourth-order Runge-Kutta in sigma; Euler on the step to sigma = 0.

    Order 4, 4 NFE per step, 4N - 3 in all.
    """

    name = "rk4"

    def calls(self, sigma, sigma_next):
        return 4 if sigma_next > 0 else 1

    def step(self, model, x, sigma, sigma_next, noise):
        h, half = at(sigma_next - sigma, x), (sigma + sigma_next) / 2
        k1, x0 = derivative(model, x, sigma)
        if sigma_next == 0:
            return x + h * k1, x0
        k2, _ = derivative(model, x + h / 2 * k1, half)
        k3, _ = derivative(model, x + h / 2 * k2, half)
        k4, _ = derivative(model, x + h * k3, sigma_next)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), x0


def lms_coefficients(history_sigmas, sigma, sigma_next) -> list:
    """``c_j = integral from sigma to sigma_next of the j-th Lagrange basis polynomial``.

    The basis is over the sigmas at which the stored derivatives were taken (newest
    first). Integrated exactly as polynomials, so no quadrature tolerance enters.
    Per-sample sigmas (tensors) give per-sample ``(B,)`` coefficients.
    """
    values = [*history_sigmas, sigma]
    if any(isinstance(v, Tensor) for v in values):
        batch = next(len(v) for v in values if isinstance(v, Tensor))
        rows = [lms_coefficients([_item(v, b) for v in history_sigmas], _item(sigma, b),
                                 sigma_next) for b in range(batch)]
        return [torch.tensor(c, dtype=torch.float64) for c in zip(*rows)]
    nodes = [float(s) for s in history_sigmas]
    coeffs = []
    for j, node in enumerate(nodes):
        others = nodes[:j] + nodes[j + 1:]
        basis = Polynomial.fromroots(others) if others else Polynomial([1.0])
        basis = basis / np.prod([node - o for o in others])
        antiderivative = basis.integ()
        coeffs.append(float(antiderivative(sigma_next) - antiderivative(sigma)))
    return coeffs


def _item(v, b):
    return float(v[b]) if isinstance(v, Tensor) else v


class LMS(Rule):
    """Linear multistep (Adams-Bashforth with variable steps in sigma).

    Order k = ``order`` once k derivatives are stored (order grows 1, 2, ... as the
    history fills). 1 NFE per step. k-diffusion ``sample_lms``; diffusers
    ``LMSDiscreteScheduler``.
    """

    name = "lms"
    params = (Param("order", 4, 1, 4, integer=True, doc="number of past derivatives used"),)

    def reset(self, sigmas=None):
        self.history = []  # (sigma of the call, derivative), newest first

    def step(self, model, x, sigma, sigma_next, noise):
        d, x0 = derivative(model, x, sigma)
        self.history = [(sigma, d), *self.history][: self.order]
        coeffs = lms_coefficients([s for s, _ in self.history], sigma, sigma_next)
        return x + sum(at(c, x) * dj for c, (_, dj) in zip(coeffs, self.history)), x0


class DPMSolverPP2M(Rule):
    """DPM-Solver++(2M): second-order multistep in ``t = -log sigma`` on x0_hat.

    Order 2, 1 NFE per step; the first step is first order and the step to sigma = 0
    returns x0_hat. Lu et al. 2022, k-diffusion ``sample_dpmpp_2m``.
    """

    name = "dpmpp_2m"

    def reset(self, sigmas=None):
        self.previous = None  # (sigma of the call, x0_hat)

    def step(self, model, x, sigma, sigma_next, noise):
        x0 = model(x, sigma)
        previous, self.previous = self.previous, (sigma, x0)
        if sigma_next == 0:
            return x0, x0
        h = log(sigma / sigma_next)
        denoised = x0
        if previous is not None:
            half_inv_r = at(h / log(previous[0] / sigma) / 2, x)  # 1 / (2 r)
            denoised = (1 + half_inv_r) * x0 - half_inv_r * previous[1]
        return at(sigma_next / sigma, x) * x - at(expm1(-h), x) * denoised, x0
