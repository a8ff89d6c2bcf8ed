"""Sampling as optimisation: the predicted noise is the gradient.

Every rule here takes ``g = eps(x, sigma)`` and the learning rate
``lr = lr_scale * (sigma - sigma_next)``. With its extra terms switched off each
reduces to the plain step ``x - lr * g``, which at ``lr_scale = 1`` is Euler (and DDIM).
"""

from __future__ import annotations

import functools
import inspect

import torch

from ..tensors import per_sample
from .base import Param, Rule
from .solvers import derivative

LR_SCALE = Param("lr_scale", 1.0, 0.0, 4.0, doc="multiplies the default lr = sigma - sigma_next")
BETA = Param("beta", 0.9, 0.0, 0.999, doc="velocity decay, v = beta v + (1 - beta) g")


class GradientRule(Rule):
    """Shared step: one gradient at the current point, then :meth:`update`."""

    def step(self, model, x, sigma, sigma_next, noise):
        g, x0 = derivative(model, x, sigma)
        return self.update(x, g, self.lr_scale * (sigma - sigma_next)), x0

    def update(self, x, g, lr):  # pragma: no cover - abstract
        raise NotImplementedError


class Plain(GradientRule):
    """Plain gradient step ``x - lr * eps``. ``lr_scale = 1`` is Euler / DDIM.

    Order 1 (at ``lr_scale = 1``), 1 NFE per step.
    """

    name = "plain"
    params = (LR_SCALE,)

    def update(self, x, g, lr):
        return x - lr * g


class Momentum(GradientRule):
    """Heavy ball: ``v = beta v + (1 - beta) g``, started at ``v = g``; ``x - lr v``.

    ``beta = 0`` is the plain step. Equals ``torch.optim.SGD(momentum=beta,
    dampening=beta)``. 1 NFE per step. Wizadwongsa & Suwajanakorn 2023 (their
    ``b = 1 - beta``).
    """

    name = "momentum"
    params = (LR_SCALE, BETA)

    def reset(self, sigmas=None):
        self.velocity = None

    def update(self, x, g, lr):
        v = g if self.velocity is None else self.beta * self.velocity + (1 - self.beta) * g
        self.velocity = v
        return x - lr * v


class Nesterov(Rule):
    """Nesterov momentum (Sutskever form): the gradient is taken at the look-ahead
    point ``x - lr * beta * v``; then ``v = beta v + (1 - beta) g``, ``x - lr v``.

    The first step has no velocity and is the plain step; ``beta = 0`` is the plain
    step throughout. 1 NFE per step. Sutskever et al. 2013.
    """

    name = "nesterov"
    params = (LR_SCALE, BETA)

    def reset(self, sigmas=None):
        self.velocity = None

    def step(self, model, x, sigma, sigma_next, noise):
        lr = self.lr_scale * (sigma - sigma_next)
        v = self.velocity
        if v is None:
            g, x0 = derivative(model, x, sigma)
            v = g
        else:
            g, x0 = derivative(model, x - lr * self.beta * v, sigma)
            v = self.beta * v + (1 - self.beta) * g
        self.velocity = v
        return x - lr * v, x0


class Adam(GradientRule):
    """Adam's per-element normalisation of the gradient, with bias correction.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``x - lr * m_hat / (sqrt(v_hat) + eps)``. ``betas = (0, 0)`` is sign descent.
    The step moves each pixel by about ``lr``, whatever the gradient's size.
    ``normalize="mean"`` rescales the preconditioner ``1 / (sqrt(v_hat) + eps)`` to mean
    1 over each sample's pixels: the step keeps the gradient's size (at ``betas[0] = 0``
    a gradient of uniform magnitude gives the plain step) and only its per-pixel shape
    changes, a fair test of per-pixel adaptivity.
    Equals ``torch.optim.Adam`` run through the ``optim`` adapter. 1 NFE per step.
    Kingma & Ba 2015.
    """

    name = "adam"
    params = (LR_SCALE,
              Param("betas", (0.9, 0.999), 0.0, 0.9999, doc="moment decays"),
              Param("eps", 1e-8, 0.0, 1.0, doc="added to sqrt(v_hat)", log=True),
              Param("normalize", "none", choices=("none", "mean"),
                    doc="'mean': rescale the preconditioner to mean 1 per sample"))

    def reset(self, sigmas=None):
        self.m = self.v = 0.0
        self.t = 0

    def update(self, x, g, lr):
        b1, b2 = self.betas
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g * g
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        denom = v_hat.sqrt() + self.eps
        if self.normalize == "mean":  # the preconditioner 1/denom gets mean 1 per sample
            denom = denom * per_sample(denom.reciprocal().flatten(1).mean(1), x)
        return x - lr * m_hat / denom


def _needs_closure(optimizer: type[torch.optim.Optimizer]) -> bool:
    closure = inspect.signature(optimizer.step).parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


@functools.lru_cache(maxsize=1)
def closure_free_optimizers() -> tuple[str, ...]:
    """Names of the ``torch.optim`` optimisers the adapter can drive: closure-free ones
    that step a dense parameter."""
    names = []
    for name in sorted(dir(torch.optim)):
        cls = getattr(torch.optim, name)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)
                and cls is not torch.optim.Optimizer) or _needs_closure(cls):
            continue
        try:
            p = torch.zeros(1, requires_grad=True)
            p.grad = torch.ones(1)
            cls([p], lr=0.1).step()
        except (TypeError, ValueError, RuntimeError):  # e.g. SparseAdam refuses dense grads
            continue
        names.append(name)
    return tuple(names)


class TorchOptim(Rule):
    """Any ``torch.optim`` optimiser as a sampler: ``x`` is its one parameter, ``eps``
    its ``.grad``, and each step sets ``lr = lr_scale * (sigma - sigma_next)``.

    ``optimizer`` is a name from :func:`closure_free_optimizers` (a declared choice, so
    widgets and grids list them) or an Optimizer class; other keyword arguments go to
    the optimiser. ``optim("SGD")`` is the plain step; ``SGD(momentum=b, dampening=b)``
    is ``momentum(beta=b)``. Optimisers that need a closure (LBFGS) are refused: they
    would call the model an unbounded number of times. One learning rate per step, so
    it follows the schedule's sigma, not per-sample estimates. 1 NFE per step.
    """

    name = "optim"
    params = (Param("optimizer", "SGD", choices=closure_free_optimizers(),
                    doc="the torch.optim optimiser"), LR_SCALE)
    inference_safe = False  # the optimiser mutates a real autograd leaf

    def __init__(self, optimizer: type[torch.optim.Optimizer] | str = "SGD",
                 lr_scale: float = 1.0, **optimizer_kwargs):
        if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
            cls, name = optimizer, optimizer.__name__
        elif isinstance(optimizer, str):
            cls, name = getattr(torch.optim, optimizer, None), optimizer
        else:
            raise TypeError(f"optimizer must be a torch.optim.Optimizer class or its name, "
                            f"got {optimizer!r}")
        if isinstance(cls, type) and _needs_closure(cls):
            raise ValueError(f"{name} needs a closure that re-evaluates the model inside "
                             "step(); the lab's rules make a fixed number of model calls per "
                             "step, so use a closure-free optimiser "
                             f"({', '.join(closure_free_optimizers())})")
        # A class of one's own is taken as it is; a name must be one torch.optim offers.
        custom = isinstance(optimizer, type) and name not in closure_free_optimizers()
        super().__init__(optimizer="SGD" if custom else name, lr_scale=lr_scale)
        self.optimizer, self.optimizer_class = name, cls
        try:  # fail on bad kwargs now, not half way through a run
            cls([torch.zeros(1)], lr=1.0, **optimizer_kwargs)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{name}({optimizer_kwargs}): {err}") from err
        self.optimizer_kwargs = dict(optimizer_kwargs)

    @property
    def config(self):
        return {"optimizer": self.optimizer, "lr_scale": self.lr_scale, **self.optimizer_kwargs}

    @property
    def config_name(self):
        args = [self.optimizer] + [f"{k}={v}" for k, v in self.optimizer_kwargs.items()]
        if self.lr_scale != 1.0:
            args.append(f"lr_scale={self.lr_scale:g}")
        return f"optim({', '.join(args)})"

    def reset(self, sigmas=None):
        self.param = self.opt = None

    def step(self, model, x, sigma, sigma_next, noise):
        lrs = (self.lr_scale * (sigma - sigma_next)).flatten()
        lr = float(lrs[0])
        if not bool((lrs == lr).all()):
            raise ValueError("the torch.optim adapter takes one learning rate per step, so it "
                             "cannot follow per-sample estimated noise levels; sample on the "
                             "schedule, or use plain/momentum/nesterov/adam")
        g, x0 = derivative(model, x, sigma)
        if self.param is None:
            self.param = x.detach().clone()
            self.opt = self.optimizer_class([self.param], lr=lr, **self.optimizer_kwargs)
        else:  # a wrapper may have moved x since the last step
            self.param.copy_(x)
        self.param.grad = g.detach().clone()
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        return self.param.detach().clone(), x0
