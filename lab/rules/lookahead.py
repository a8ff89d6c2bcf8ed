"""Looking ahead: rules that extrapolate past gradients instead of averaging them.

Heavy-ball momentum averages gradients taken at earlier, noisier levels, so it lags
the schedule. Extrapolation weighs the newest gradient by more than 1 and the older
ones negatively: momentum with a negative coefficient. Adams-Bashforth is the same
idea with a longer memory, and the generalised heavy ball (GHVB) joins the two ends
with one order parameter. All move as a gradient step, ``x + (sigma_next - sigma) d``.
"""

from __future__ import annotations

import math

from .base import DirectionRule, Param, Wrapper
from .solvers import derivative


def ghvb_weights(k: int, b: float) -> tuple[float, ...]:
    """Weights of ``v_i, v_{i-1}, ...`` in GHVB of order ``k`` with fraction ``b``.

    ``b = 1`` gives the constant-coefficient Adams-Bashforth weights. Wizadwongsa et
    al. 2023, ``sWizad/momentum-diffusion`` (``AdamBmixer``).
    """
    if k == 1:
        return (1.0,)
    if k == 2:
        return ((2 + b) / (2 * b), -(2 - b) / (2 * b))
    if k == 3:
        return tuple(c / (12 * b) for c in (18 + 5 * b, -(24 - 8 * b), 6 - b))
    if k == 4:
        return tuple(c / (24 * b) for c in (46 + 9 * b, -(78 - 19 * b), 42 - 5 * b, -(10 - b)))
    raise ValueError(f"GHVB is defined for orders 1 to 4, got {k}")


def _combine(weights, history):
    return sum(w * h for w, h in zip(weights, history))


class Extrapolate(DirectionRule):
    """Extrapolated gradient ("optimistic" gradient descent, gradient estimation):
    ``d_i = gamma eps_i + (1 - gamma) eps_{i-1}``, ``d_0 = eps_0``, then a gradient step.

    ``gamma = 1`` is Euler; ``gamma < 1`` averages like momentum, ``gamma > 1`` looks
    ahead. 1 NFE per step. Permenter & Yu 2024 (gamma = 2); smalldiffusion's ``gam``.
    """

    name = "extrapolate"
    params = (Param("gamma", 2.0, 0.0, 4.0, doc="weight of the newest gradient"),)

    def reset(self, sigmas=None):
        self.previous = None

    def direction(self, model, x, sigma, sigma_next):
        eps, x0 = derivative(model, x, sigma)
        previous, self.previous = self.previous, eps
        if previous is None:
            return eps, x0
        return self.gamma * eps + (1 - self.gamma) * previous, x0


# GHVB's order-k numerators split as A . (v_i - v_{i-1}, v_{i-1} - v_{i-2}, ...) +
# b B . (v_i, v_{i-1}, ...), over b D. Each difference is b (eps - v_before), so the 1/b
# cancels exactly: no weights of size 1/b on nearly equal velocities when r is just above
# a whole number (at r = 1.001 the direct weights reach +-1000).
_GHVB_SPLIT = {1: ((), (1,), 1), 2: ((2,), (1, 1), 2), 3: ((18, -6), (5, 8, -1), 12),
               4: ((46, -32, 10), (9, 19, -5, 1), 24)}


class GHVB(DirectionRule):
    """Generalised heavy ball of order ``r``: ``k = ceil(r)``, ``b = r - (k - 1)``;
    ``v_i = (1 - b) v_{i-1} + b eps_i`` (``v_0 = eps_0``), then the order-k weights of
    :func:`ghvb_weights` over the last k velocities (fewer while the history fills),
    evaluated in a form where the weights' 1/b cancels.

    ``r`` in (0, 1] is heavy ball (``momentum`` with ``beta = 1 - r``); ``r = 1`` is
    Euler; whole ``r = k`` is Adams-Bashforth k (``ghvb(4)`` is ``ipndm``). Nominal order
    ``k`` for whole ``r`` on an even grid; the fixed coefficients make it second order on
    Karras's uneven one (tests/test_lookahead.py). 1 NFE per step. Wizadwongsa et al. 2023.
    """

    name = "ghvb"
    params = (Param("r", 1.5, 0.01, 4.0, doc="order: < 1 heavy ball, 1 Euler, k AB-k"),)

    def reset(self, sigmas=None):
        self.velocities, self.innovations = [], []  # newest first; u_j = eps_j - v_{j-1}
        k = math.ceil(self.r - 1e-12)
        self.order, self.b = k, self.r - (k - 1)

    def direction(self, model, x, sigma, sigma_next):
        eps, x0 = derivative(model, x, sigma)
        if self.velocities:
            u = eps - self.velocities[0]
            v = self.velocities[0] + self.b * u  # (1 - b) v_{i-1} + b eps_i
            self.innovations = [u, *self.innovations][: self.order - 1]
        else:
            v = eps
        self.velocities = [v, *self.velocities][: self.order]
        diffs, levels, divisor = _GHVB_SPLIT[len(self.velocities)]
        d = _combine(levels, self.velocities) + _combine(diffs, self.innovations)
        return d / divisor, x0


class IPNDM(DirectionRule):
    """Improved PNDM: Adams-Bashforth on eps with fixed coefficients, the order rising
    1, 2, ... up to ``order`` as the history fills. Nominal order ``order`` (on an even
    grid; the fixed coefficients make it second order on Karras's uneven one), 1 NFE
    per step.
    Zhang & Chen 2023 (DEIS paper's iPNDM); diffusers ``IPNDMScheduler``.
    """

    name = "ipndm"
    params = (Param("order", 4, 1, 4, integer=True, doc="highest Adams-Bashforth order"),)

    def reset(self, sigmas=None):
        self.history = []  # eps, newest first

    def direction(self, model, x, sigma, sigma_next):
        eps, x0 = derivative(model, x, sigma)
        self.history = [eps, *self.history][: self.order]
        return _combine(ghvb_weights(len(self.history), 1.0), self.history), x0


class HeavyBall(Wrapper):
    """Heavy ball on top of a solver: the wrapped one-call rule's direction (an eps
    for Euler, LMS or Adams-Bashforth, the extrapolated x0 for DPM-Solver++) is
    averaged, ``v = beta v + (1 - beta) d`` started at ``v = d``, and the rule moves
    along ``v``. ``beta = 0`` is the wrapped rule exactly. NFE of the wrapped rule.
    Wizadwongsa et al. 2023 (HB DPM-Solver++, PLMS with HB; their ``b = 1 - beta``).
    """

    name = "heavy_ball"
    stochastic = False
    params = (Param("rule", "dpmpp_2m", doc="the one-call rule whose direction it averages"),
              Param("beta", 0.2, 0.0, 0.999, doc="velocity decay, v = beta v + (1 - beta) d"))

    def __init__(self, rule=None, **kwargs):
        super().__init__(rule=rule, **kwargs)
        if not isinstance(self.inner, DirectionRule):
            raise ValueError(f"heavy_ball averages the direction of a one-call rule (euler, lms, "
                             f"ipndm, ghvb, extrapolate, dpmpp_2m, ...); {self.inner.name} has "
                             "no single direction per step")

    def reset(self, sigmas=None):
        super().reset(sigmas)
        self.velocity = None

    def step(self, model, x, sigma, sigma_next, noise):
        d, x0 = self.inner.direction(model, x, sigma, sigma_next)
        v = d if self.velocity is None else self.beta * self.velocity + (1 - self.beta) * d
        self.velocity = v
        return self.inner.move(x, v, sigma, sigma_next), x0


class AnalyticFirstStep(Wrapper):
    """The first model call, at the schedule's largest sigma, replaced by the denoiser of
    data with rms ``scale`` seen from far away: ``d_0 = x / sqrt(sigma^2 + scale^2)``
    (``D = x - sigma d_0``). At sigma_max = 80 the model has almost nothing to say, so
    the call saved buys one more step elsewhere. ``scale = 1`` is data of unit scale;
    Fashion-MNIST in [-1, 1] has rms 0.83. NFE of the wrapped rule, less one.
    AFS: Dockhorn et al. 2023 (GENIE); Zhou et al. 2024 (AMED-Solver).
    """

    name = "afs"
    stochastic = False
    params = (Param("rule", "dpmpp_2m", doc="the rule whose first call it replaces"),
              Param("scale", 1.0, 0.01, 10.0, doc="rms of the data the first step assumes"))

    def reset(self, sigmas=None):
        super().reset(sigmas)
        self.first = True

    def schedule_calls(self, sigmas):
        return super().schedule_calls(sigmas) - 1

    def step(self, model, x, sigma, sigma_next, noise):
        if not self.first:
            return self.inner.step(model, x, sigma, sigma_next, noise)
        self.first = False
        answered = False

        def model_after_first_call(x_, s_):
            nonlocal answered
            if answered:
                return model(x_, s_)
            answered = True
            return x_ - s_ * x_ / (s_**2 + self.scale**2).sqrt()

        return self.inner.step(model_after_first_call, x, sigma, sigma_next, noise)
