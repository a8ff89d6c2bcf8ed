"""Exponential integrators in ``t = -log sigma``: DPM-Solver++(3M) and UniPC.

With the data prediction ``D(x, sigma)`` the probability-flow ODE is linear in ``x``
apart from ``D``: ``dx/dt = D - x``. Over a step of length ``h = log(sigma / sigma_next)``
the linear part is solved exactly and ``D`` is interpolated in ``t`` from the last few
model calls, so every update here (UniPC's corrector too) reads

    x_next = (sigma_next / sigma) x - expm1(-h) C = C + (sigma_next / sigma)(x - C)

with one combined data prediction ``C``, the move of an "x0" :class:`DirectionRule`. The
combinations are those of diffusers' ``DPMSolverMultistepScheduler`` and
``UniPCMultistepScheduler`` (data prediction), written in sigma-space: diffusers' VP
``alpha_t`` drops out (``alpha_t = 1`` in the VE form) and its ``lambda_t`` is ``t``.
Each rule stores the sigma of every model call, so it stays exact when the sigmas come
per sample or a wrapper moves the step's endpoints. The step to sigma = 0 returns x0_hat.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import DirectionRule, Param, Rule, is_final, move_toward_x0

__all__ = ["DPMSolverPP3M", "UniPC", "phi", "unipc_weights"]


def phi(k: int, z: Tensor) -> Tensor:
    """``phi_k(z) = sum_j z^j / (j + k)!`` (``phi_0 = e^z``, ``phi_1 = expm1(z) / z``), the
    weights of exponential integrators. By its series where ``|z| < 1``, where the
    recurrence ``phi_(k+1) = (phi_k - 1/k!) / z`` would cancel; by the recurrence
    elsewhere. ``z`` is ``-h`` here, a per-sample tensor."""
    small = z.clamp(-1.0, 1.0)
    series = sum(small**j / float(math.factorial(j + k)) for j in range(20))
    recurrence = torch.exp(z)
    for i in range(k):
        recurrence = (recurrence - 1 / math.factorial(i)) / z
    return torch.where(z.abs() < 1, series, recurrence)


class DPMSolverPP3M(DirectionRule):
    """DPM-Solver++(3M): multistep in ``t = -log sigma`` on x0_hat, from the last three.

    The order rises 1, 2, 3 as the history fills; the second-order step is ``dpmpp_2m``'s
    (diffusers' "midpoint" form ``D0 + D1 / 2``), the third-order one is Lu et al.'s
    ``x_next = (s'/s) x - (e^-h - 1) D0 + ((e^-h - 1)/h + 1) D1 - ((e^-h - 1 + h)/h^2 - 1/2) D2``
    with ``D1``, ``D2`` the divided differences of the last three x0_hat in ``t``: the x0
    direction ``D0 + (phi_2 D1 + phi_3 D2) / phi_1`` at ``-h`` (:func:`phi`). The step to
    sigma = 0 returns x0_hat (first order), the rest use the full history (diffusers'
    ``lower_order_final=False``).

    Order 2, not 3: ``D2`` is about ``h^2 D''/2`` while its weight ``phi_3`` is the one
    for ``h^2 D''``, so the step keeps half of the curvature term (``2 phi_3`` would make
    it third order). This is the update diffusers and k-diffusion run, kept for parity;
    its error constant is still well below ``dpmpp_2m``'s. 1 NFE per step. Lu et al. 2022
    (DPM-Solver++); diffusers
    ``DPMSolverMultistepScheduler.multistep_dpm_solver_third_order_update``.
    """

    name = "dpmpp_3m"
    direction_kind = "x0"

    def reset(self, sigmas=None):
        self.history = []  # (sigma of the call, x0_hat), newest first

    def direction(self, model, x, sigma, sigma_next):
        x0 = model(x, sigma)
        history, self.history = self.history, [(sigma, x0), *self.history][:2]
        if not history or is_final(sigma_next):
            return x0, x0
        h = (sigma / sigma_next).log()
        sigma_1, x0_1 = history[0]
        r0 = (sigma_1 / sigma).log() / h
        d1_0 = (x0 - x0_1) / r0
        if len(history) == 1:
            return x0 + d1_0 / 2, x0
        sigma_2, x0_2 = history[1]
        r1 = (sigma_2 / sigma_1).log() / h
        d2 = (d1_0 - (x0_1 - x0_2) / r1) / (r0 + r1)
        d1 = d1_0 + r0 * d2
        return x0 + (phi(2, -h) * d1 + phi(3, -h) * d2) / phi(1, -h), x0


def unipc_weights(nodes: list[Tensor], h: Tensor) -> list[Tensor]:
    """UniPC's ``rho`` with ``B(h) = expm1(-h)`` (bh2), data prediction.

    ``nodes`` are ``r_k = (t_k - t_0) / h`` of the model calls other than the newest
    (``t = -log sigma``; the corrector's new call sits at ``r = 1``), per-sample tensors
    shaped like ``h``. The weights solve the order conditions ``sum_k rho_k r_k^(i-1) =
    b_i``, ``b_i = i! phi_(i+1)(-h) / phi_1(-h)`` (diffusers' Vandermonde system in
    ``multistep_uni_p_bh_update``, its ``h_phi_k i! / B_h``), except that one node gets
    ``rho = 1/2``, as in diffusers (UniP-2 is then DPM-Solver++(2M), and UniC-1 weighs the
    two ends of the step alike).
    """
    if len(nodes) == 1:
        return [torch.full_like(nodes[0], 0.5)]
    z = -h.flatten().double()
    b = [math.factorial(i) * phi(i + 1, z) / phi(1, z) for i in range(1, len(nodes) + 1)]
    r = torch.stack([n.flatten().double() for n in nodes], dim=1)              # (B, K)
    powers = torch.arange(len(nodes), dtype=torch.float64)[None, :, None]      # (1, K, 1)
    rho = torch.linalg.solve(r[:, None, :] ** powers, torch.stack(b, dim=1))   # (B, K)
    return [col.reshape(h.shape).to(h.dtype) for col in rho.unbind(1)]


def _combine(calls: list[tuple[Tensor, Tensor]], sigma_to: Tensor) -> Tensor:
    """UniPC's combined x0 for a move from ``calls[0]``'s sigma to ``sigma_to``:
    ``m_0 + sum_k rho_k (m_k - m_0) / r_k`` over the other calls ``(sigma_k, m_k)``."""
    sigma_0, m_0 = calls[0]
    if len(calls) == 1:
        return m_0
    h = (sigma_0 / sigma_to).log()
    nodes = [(sigma_0 / s).log() / h for s, _ in calls[1:]]
    rhos = unipc_weights(nodes, h)
    return m_0 + sum(rho * (m - m_0) / r for rho, r, (_, m) in zip(rhos, nodes, calls[1:]))


class UniPC(Rule):
    """UniPC with ``B(h) = expm1(-h)`` (bh2) on x0_hat: the UniP predictor of order
    ``order`` (rising 1, 2, ... as the history fills) and the UniC corrector of the same
    order, which lifts it by one.

    The corrector needs the model at the predicted state, i.e. the next step's call: so
    it runs at the start of the next step, reusing that call, and never after the last
    step. The trajectory records what diffusers' ``step`` returns: the predicted states
    (``traj.xs[i]``), with ``traj.x0s[i]`` the model's output there; the corrected state
    is the rule's own, the start of its next prediction. The correction is added to the
    ``x`` the step receives (``x + corrected - predicted``), so noise a wrapper added
    between steps is kept. Within k steps of a final sigma = 0 the order is at most k
    (diffusers' ``lower_order_final``), and the step to sigma = 0 returns x0_hat, so the
    final sample does not depend on the last correction.

    Order ``order + 1`` (3 by default), 1 NFE per step. Zhao et al. 2023 (UniPC);
    diffusers ``UniPCMultistepScheduler`` (``solver_type="bh2"``, ``predict_x0=True``).
    """

    name = "unipc"
    params = (Param("order", 2, 1, 3, integer=True,
                    doc="predictor order p (UniP-p with UniC-p, order p + 1)"),)

    def reset(self, sigmas=None):
        self.calls_made = []  # (sigma of the call, x0_hat), newest first
        self.predicted = None  # (x it started from, its calls, its target sigma, x it returned)
        ends_at_zero = sigmas is not None and float(sigmas[-1]) == 0.0
        self.steps_left = len(sigmas) - 1 if ends_at_zero else math.inf

    def step(self, model, x, sigma, sigma_next, noise):
        x0 = model(x, sigma)
        self.steps_left -= 1
        if self.predicted is not None and not is_final(sigma_next):
            start, calls, target, returned = self.predicted
            corrected = move_toward_x0(start, _combine([*calls, (target, x0)], target), calls[0][0],
                              target)
            x = x + (corrected - returned)
        self.calls_made = [(sigma, x0), *self.calls_made][: self.order]
        if is_final(sigma_next):
            return x0, x0
        calls = self.calls_made[: int(min(self.order, self.steps_left + 1))]
        x_next = move_toward_x0(x, _combine(calls, sigma_next), sigma, sigma_next)
        self.predicted = (x, calls, sigma_next, x_next)
        return x_next, x0
