"""Noise re-injection as wrappers around any deterministic rule.

Each wrapper at zero strength is exactly the rule it wraps, and draws no noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..tensors import per_sample
from .base import Param, Rule, Wrapper, is_final, per_sample_norm


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """``(sigma_down, sigma_up)``: step deterministically to sigma_down, add sigma_up noise.

    k-diffusion ``get_ancestral_step``; per sample, so a noise level read off the image
    gives each sample its own split.
    """
    sigma, sigma_next = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
    # an estimated sigma already below sigma_next gets no noise, not a NaN
    sigma_up = torch.minimum(
        sigma_next,
        eta * (sigma_next**2 * (sigma**2 - sigma_next**2).clamp_min(0) / sigma**2).sqrt())
    return (sigma_next**2 - sigma_up**2).sqrt(), sigma_up


class Ancestral(Wrapper):
    """Ancestral sampling: the wrapped rule steps to ``sigma_down``, then noise of
    ``sigma_up`` brings the marginal back to ``sigma_next``. ``eta = 1`` with Euler is
    DDPM-like ancestral sampling, ``eta = 0`` the deterministic rule.

    Order 1 in the weak sense whatever the inner rule; NFE of the inner rule.
    k-diffusion ``sample_euler_ancestral``; Song et al. 2021 (DDIM eta).
    """

    name = "ancestral"
    params = (*Wrapper.params, Param("eta", 1.0, 0.0, 1.0, doc="noise re-injected per step"))

    def step(self, model, x, sigma, sigma_next, noise):
        if self.eta == 0 or is_final(sigma_next):  # no noise to add, none drawn
            return self.inner.step(model, x, sigma, sigma_next, noise)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, self.eta)
        x, x0 = self.inner.step(model, x, sigma, sigma_down, noise)
        return x + sigma_up * noise(x), x0


class Churn(Wrapper):
    """EDM stochastic sampling: raise sigma to ``sigma_hat = sigma (1 + gamma)`` by adding
    noise, then take the wrapped rule's step from ``sigma_hat`` to ``sigma_next``.

    ``gamma = min(s_churn / N, sqrt(2) - 1)`` for ``s_tmin <= sigma <= s_tmax``, N the
    number of steps. NFE of the inner rule. Karras et al. 2022, Algorithm 2.
    """

    name = "churn"
    params = (*Wrapper.params,
              Param("s_churn", 40.0, 0.0, 1000.0, doc="total churn over the schedule"),
              Param("s_tmin", 0.05, 0.0, 1000.0, doc="churn only for sigma >= s_tmin"),
              Param("s_tmax", 50.0, 0.0, 1e6, doc="churn only for sigma <= s_tmax"),
              Param("s_noise", 1.003, 0.0, 2.0, doc="scale of the added noise"))

    def reset(self, sigmas=None):
        super().reset(sigmas)
        self.num_steps = None if sigmas is None else len(sigmas) - 1

    def step(self, model, x, sigma, sigma_next, noise):
        if self.num_steps is None:
            raise RuntimeError("churn needs the schedule: call reset(sigmas) first "
                               "(lab.sample does this)")
        churning = (self.s_tmin <= sigma) & (sigma <= self.s_tmax)
        gamma = min(self.s_churn / self.num_steps, math.sqrt(2) - 1) * churning.to(sigma.dtype)
        if not bool(gamma.any()):  # no noise to add, none drawn
            return self.inner.step(model, x, sigma, sigma_next, noise)
        sigma_hat = sigma * (1 + gamma)
        x = x + (sigma_hat**2 - sigma**2).sqrt() * self.s_noise * noise(x)
        return self.inner.step(model, x, sigma_hat, sigma_next, noise)


class Langevin(Wrapper):
    """Predictor-corrector: after the wrapped rule's step, ``steps`` Langevin moves at
    ``sigma_next`` with step size ``a = 2 (snr |z| / |score|)^2``, norms per sample:
    ``x = x + a score + sqrt(2 a) z``. Skipped at sigma = 0.

    The lab caps ``a`` at ``sigma_next^2``: in few dimensions a sample near a mode has a
    near-zero score and the uncapped step throws it far away (the reference code's
    batch-averaged norms hide this in high dimensions). Typical steps, about
    ``2 snr^2 sigma^2``, are far below the cap.

    NFE: the inner rule's plus ``steps`` per step. Song et al. 2021 (score SDE),
    Algorithm 5; per-sample norms keep it batch-size invariant.
    """

    name = "langevin"
    params = (*Wrapper.params,
              Param("snr", 0.16, 0.0, 1.0, doc="signal-to-noise ratio of a corrector move"),
              Param("steps", 1, 0, 20, integer=True, doc="corrector moves per step"))

    def calls(self, sigma, sigma_next):
        return self.inner.calls(sigma, sigma_next) + (self.steps if sigma_next > 0 else 0)

    def step(self, model, x, sigma, sigma_next, noise):
        x, x0 = self.inner.step(model, x, sigma, sigma_next, noise)
        if is_final(sigma_next):
            return x, x0
        for _ in range(self.steps):
            score = (model(x, sigma_next) - x) / sigma_next**2
            z = noise(x)
            a = 2 * (self.snr * per_sample_norm(z) / per_sample_norm(score)) ** 2
            a = torch.minimum(per_sample(a, x), sigma_next**2)
            x = x + a * score + (2 * a).sqrt() * z
        return x, x0


class AnnealedLangevin(Rule):
    """Annealed Langevin dynamics (NCSN): ``steps`` moves at each noise level,
    ``x = x + (a / 2) score + sqrt(a) z`` with ``a = step_size * sigma^2``, then on to the
    next level; the step to sigma = 0 ends with one denoising call, ``x = D(x, sigma)``.

    The paper writes ``a_i = eps * sigma_i^2 / sigma_L^2``; ``step_size = eps / sigma_L^2``
    keeps the move stable whatever the schedule's smallest sigma (the paper's eps = 2e-5
    at sigma_L = 0.01 is step_size 0.2). A sampler, not an ODE solver: no order.
    NFE: ``steps`` per step, plus 1 on the last. Song & Ermon 2019, Algorithm 1;
    the final denoising step from Jolicoeur-Martineau et al. 2021.
    """

    name = "annealed_langevin"
    stochastic = True
    params = (Param("step_size", 0.2, 1e-4, 1.9, log=True, doc="a = step_size * sigma^2"),
              Param("steps", 5, 1, 200, integer=True, doc="Langevin moves per noise level"))

    def calls(self, sigma, sigma_next):
        return self.steps + (1 if sigma_next == 0 else 0)

    def step(self, model, x, sigma, sigma_next, noise):
        x0 = None
        for _ in range(self.steps):
            denoised = model(x, sigma)
            x0 = denoised if x0 is None else x0
            # a = step_size * sigma^2, so (a / 2) * score = (step_size / 2) (D - x)
            kick = math.sqrt(self.step_size) * sigma * noise(x)
            x = x + self.step_size / 2 * (denoised - x) + kick
        if is_final(sigma_next):
            x = model(x, sigma)
        return x, x0
