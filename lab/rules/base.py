"""The rule contract and the registry.

A rule moves ``x`` from ``sigma`` to ``sigma_next``:

    x_next, x0_hat = rule.step(model, x, sigma, sigma_next, noise)

``model`` is a denoiser callable (the loop counts its calls), ``x0_hat`` is the
denoiser's output at the start of the step (what trajectories record), ``noise()``
draws fresh per-sample noise shaped like ``x``. ``sigma`` and ``sigma_next`` are
per-sample tensors shaped ``(B, 1, ..., 1)`` to broadcast against ``x`` (the loop
expands the schedule once), so a rule reads like its equation,
``x + (sigma_next - sigma) * d``, whether sigma comes from the schedule or is read off
the image. Multistep rules keep history on the object and clear it in
:meth:`Rule.reset`; the loop runs a fresh copy of the rule, so two runs never share
state. No rule calls the model at sigma 0: :func:`is_final` tells the last step.

Each rule declares its parameters as :class:`Param` so that widgets and studies
build controls and grids from the registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = ["Param", "Rule", "DirectionRule", "Wrapper", "available", "get", "describe",
           "resolve", "nfe", "steps_for_budget", "is_final", "per_sample_norm"]

_REGISTRY: dict[str, type[Rule]] = {}


@dataclass(frozen=True)
class Param:
    """A rule parameter: name, default and valid closed range ``[low, high]``.

    A tuple default (Adam's ``betas``) applies the range to each element. ``choices``
    makes a parameter take one of a fixed set of names (the torch.optim adapter's
    ``optimizer``); a string default without choices (a wrapper's inner ``rule``) takes
    any registered deterministic rule. ``log`` hints that widgets and grids should space
    values geometrically.
    """

    name: str
    default: Any
    low: float | None = None
    high: float | None = None
    doc: str = ""
    integer: bool = False
    log: bool = False
    choices: tuple[str, ...] | None = None

    def check(self, value, rule: str):
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(f"{rule}: {self.name} must be one of {', '.join(self.choices)}; "
                                 f"got {value!r}")
            return value
        if isinstance(self.default, str):
            if not (isinstance(value, str) or isinstance(value, Rule)):
                raise TypeError(f"{rule}: {self.name} must be a rule name or Rule, got {value!r}")
            return value
        values = value if isinstance(self.default, tuple) else (value,)
        if isinstance(self.default, tuple) and (not isinstance(value, (tuple, list))
                                                or len(value) != len(self.default)):
            raise ValueError(f"{rule}: {self.name} must be a tuple of {len(self.default)} "
                             f"numbers, got {value!r}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{rule}: {self.name} must be a number, got {v!r}")
            if self.integer and int(v) != v:
                raise ValueError(f"{rule}: {self.name} must be an integer, got {v!r}")
            lo = -math.inf if self.low is None else self.low
            hi = math.inf if self.high is None else self.high
            if not (math.isfinite(v) and lo <= v <= hi):
                raise ValueError(f"{rule}: {self.name} = {v!r} is outside its valid range "
                                 f"[{lo}, {hi}]")
        if isinstance(self.default, tuple):
            return tuple(values)
        return int(value) if self.integer else value


class Rule:
    """Base of all update rules. Subclasses set ``name``, ``params`` and ``step``."""

    name: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    stochastic: ClassVar[bool] = False
    #: The loop runs under torch.inference_mode unless a rule needs real autograd
    #: tensors (the torch.optim adapter).
    inference_safe: ClassVar[bool] = True

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.__dict__.get("name"):
            _REGISTRY[cls.name] = cls

    def __init__(self, **kwargs):
        known = {p.name: p for p in self.params}
        unknown = set(kwargs) - set(known)
        if unknown:
            raise TypeError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; "
                            f"it takes {sorted(known) or 'none'}")
        for p in self.params:
            setattr(self, p.name, p.check(kwargs.get(p.name, p.default), self.name))
        self.reset()

    def reset(self, sigmas: Tensor | None = None) -> None:
        """Forget history; ``sigmas`` is the schedule about to be run."""

    def step(self, model, x: Tensor, sigma: Tensor, sigma_next: Tensor, noise):
        """Move ``x`` from ``sigma`` to ``sigma_next`` (both shaped to broadcast against
        ``x``); return ``(x_next, x0_hat)``."""
        raise NotImplementedError

    def calls(self, sigma: float, sigma_next: float) -> int:
        """Model calls this rule makes for a step between two schedule values (floats:
        budgets are planned before a run). The last step may be cheaper."""
        return 1

    def schedule_calls(self, sigmas: list[float]) -> int:
        """Model calls over a whole schedule (a rule may save calls across steps)."""
        return sum(self.calls(a, b) for a, b in zip(sigmas[:-1], sigmas[1:]))

    @property
    def config(self) -> dict:
        out = {}
        for p in self.params:
            v = getattr(self, p.name)
            out[p.name] = v.config_name if isinstance(v, Rule) else v
        return out

    @property
    def config_name(self) -> str:
        """A compact label such as ``momentum(beta=0.9)``."""
        args = ", ".join(f"{k}={_fmt(v)}" for k, v in self.config.items()
                         if v != _default(type(self), k))
        return f"{self.name}({args})" if args else self.name

    def __repr__(self) -> str:
        return self.config_name


def _default(cls, name):
    return next(p.default for p in cls.params if p.name == name)


def _fmt(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


class Wrapper(Rule):
    """A rule that adds something (noise, a corrector) around any deterministic rule."""

    stochastic = True
    params: ClassVar[tuple[Param, ...]] = (
        Param("rule", "euler", doc="the deterministic rule it wraps"),
    )

    def __init__(self, rule: str | Rule | None = None, **kwargs):
        if rule is None:  # the subclass's declared default (euler, or dpmpp_2m, ...)
            rule = _default(type(self), "rule")
        inner = rule if isinstance(rule, Rule) else get(rule)
        if inner.stochastic:
            raise ValueError(f"{self.name} wraps a deterministic rule; {inner.name} already "
                             "injects noise (nest wrappers explicitly if you mean to)")
        self.inner = inner
        super().__init__(rule=inner, **kwargs)

    @property
    def inference_safe(self):  # type: ignore[override]
        return self.inner.inference_safe

    def reset(self, sigmas=None):
        if hasattr(self, "inner"):
            self.inner.reset(sigmas)

    def calls(self, sigma, sigma_next):
        return self.inner.calls(sigma, sigma_next)

    def schedule_calls(self, sigmas):
        # the inner rule's count, plus what this wrapper adds step by step
        pairs = list(zip(sigmas[:-1], sigmas[1:]))
        return self.inner.schedule_calls(sigmas) + sum(
            self.calls(a, b) - self.inner.calls(a, b) for a, b in pairs)


class DirectionRule(Rule):
    """A one-call rule split in two: :meth:`direction` reads the model (and the rule's
    history) into a direction, :meth:`move` follows it from ``sigma`` to ``sigma_next``.

    The default move is the gradient step ``x + (sigma_next - sigma) d`` (``d`` an eps);
    rules extrapolating the data prediction instead move ``d + (sigma_next / sigma)(x - d)``
    (``d`` an x0). The split lets a wrapper act on the direction alone: heavy ball on top
    of a solver (:class:`lab.rules.HeavyBall`) averages directions, whatever they are.
    """

    #: What the direction is: "eps" (a gradient) or "x0" (a data prediction).
    direction_kind: ClassVar[str] = "eps"

    def direction(self, model, x: Tensor, sigma: Tensor, sigma_next: Tensor
                  ) -> tuple[Tensor, Tensor]:
        """``(d, x0_hat)``: the direction of this step and the denoiser's output."""
        raise NotImplementedError

    def move(self, x: Tensor, d: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        # Each a single pass over x where the dtypes allow (lerp wants one dtype).
        if self.direction_kind == "x0":
            return move_toward_x0(x, d, sigma, sigma_next)
        return torch.addcmul(x, sigma_next - sigma, d)  # x + (sigma_next - sigma) d

    def step(self, model, x, sigma, sigma_next, noise):
        d, x0 = self.direction(model, x, sigma, sigma_next)
        return self.move(x, d, sigma, sigma_next), x0


def available(kind: str | None = None) -> list[str]:
    """Names of the registered rules; ``kind`` filters: 'deterministic' or 'stochastic'."""
    names = sorted(_REGISTRY)
    if kind is None:
        return names
    if kind not in ("deterministic", "stochastic"):
        raise ValueError("kind must be None, 'deterministic' or 'stochastic'")
    return [n for n in names if _REGISTRY[n].stochastic == (kind == "stochastic")]


def get(name: str, **params) -> Rule:
    """A new rule by registry name, e.g. ``get("momentum", beta=0.9)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown rule {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name](**params)


def describe(name: str) -> tuple[Param, ...]:
    """The declared parameters of a registered rule."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown rule {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name].params


def resolve(rule) -> Rule:
    """A Rule from a Rule or a registry name."""
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str):
        return get(rule)
    raise TypeError(f"rule must be a Rule or a registry name, got {type(rule).__name__}")


def nfe(rule, sigmas) -> int:
    """Model calls ``rule`` makes over a schedule, without running it."""
    return resolve(rule).schedule_calls([float(v) for v in sigmas])


def steps_for_budget(rule, budget: int, schedule, max_steps: int = 10_000) -> int | None:
    """The largest step count n whose ``schedule(n)`` fits ``budget`` model calls."""
    best = None
    for n in range(1, max_steps + 1):
        cost = nfe(rule, schedule(n))
        if cost > budget:
            break
        best = n
    return best


def move_toward_x0(x: Tensor, x0: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """The exponential-integrator move ``x0 + (sigma_next / sigma)(x - x0)``: exactly
    ``x0`` at sigma_next = 0; one pass over x where the dtypes allow (lerp wants one)."""
    w = sigma_next / sigma
    return torch.lerp(x0, x, w) if w.dtype == x.dtype else x0 + w * (x - x0)


def is_final(sigma_next: Tensor) -> bool:
    """Whether this step ends at sigma = 0, where the model must not be called."""
    return not bool(sigma_next.any())


def per_sample_norm(v: Tensor) -> Tensor:
    """Euclidean norm of each sample, ``(B,)``."""
    return torch.linalg.vector_norm(v.flatten(1), dim=1)
