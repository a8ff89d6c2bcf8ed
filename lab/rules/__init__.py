"""Update rules: optimisers, ODE solvers and noise injection, behind one registry.

    lab.rules.available()                      # every registered name
    lab.rules.get("momentum", beta=0.9)        # a Rule
    lab.rules.ancestral("heun", eta=0.5)       # noise wraps any deterministic rule
"""

from .base import (
    DirectionRule,
    Param,
    Rule,
    Wrapper,
    available,
    describe,
    get,
    is_final,
    nfe,
    resolve,
    steps_for_budget,
)
from .exponential import DPMSolverPP3M, UniPC
from .lookahead import GHVB, IPNDM, AnalyticFirstStep, Extrapolate, HeavyBall, ghvb_weights
from .noise import Ancestral, AnnealedLangevin, Churn, Langevin, ancestral_step
from .optimizers import Adam, Momentum, Nesterov, Plain, TorchOptim, closure_free_optimizers
from .solvers import LMS, RK4, DPMSolverPP2M, Euler, Heun, Midpoint, lms_coefficients


def ancestral(rule="euler", **params) -> Ancestral:
    """``rule`` (a name or Rule) with ancestral noise; see :class:`Ancestral`."""
    return Ancestral(rule=rule, **params)


def churn(rule="euler", **params) -> Churn:
    """``rule`` with EDM churn; see :class:`Churn`."""
    return Churn(rule=rule, **params)


def langevin(rule="euler", **params) -> Langevin:
    """``rule`` followed by a Langevin corrector; see :class:`Langevin`."""
    return Langevin(rule=rule, **params)


def heavy_ball(rule="dpmpp_2m", **params) -> HeavyBall:
    """Heavy ball on ``rule``'s direction; see :class:`HeavyBall`."""
    return HeavyBall(rule=rule, **params)


def optim(optimizer="SGD", lr_scale: float = 1.0, **optimizer_kwargs) -> TorchOptim:
    """Any torch.optim optimiser as a rule; see :class:`TorchOptim`."""
    return TorchOptim(optimizer, lr_scale=lr_scale, **optimizer_kwargs)


__all__ = [
    "Param", "Rule", "DirectionRule", "Wrapper", "available", "describe", "get", "nfe",
    "resolve", "steps_for_budget", "is_final", "closure_free_optimizers", "ghvb_weights",
    "ancestral", "churn", "langevin", "heavy_ball", "optim", "ancestral_step",
    "Euler", "Heun", "Midpoint", "RK4", "LMS", "DPMSolverPP2M", "lms_coefficients",
    "Plain", "Momentum", "Nesterov", "Adam", "TorchOptim",
    "Extrapolate", "GHVB", "IPNDM", "HeavyBall", "AnalyticFirstStep",
    "Ancestral", "Churn", "Langevin", "AnnealedLangevin", "DPMSolverPP3M", "UniPC",
]
