"""The sampling loop, written once: :func:`steps` yields, :func:`sample` collects."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from . import noise_level, schedules
from .denoiser import CallCounter
from .rules import Rule, resolve
from .seeding import NoiseSource
from .trajectory import Trajectory

__all__ = ["Step", "steps", "sample", "sample_at_budget", "NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """A sample became NaN or Inf during sampling."""


@dataclass
class Step:
    """One step's record: x moved from ``sigma`` to ``sigma_next``; ``x0`` is the
    denoiser's output at the step's start; ``nfe`` counts model calls so far.
    ``sigma_hat`` is the per-sample noise level the step started from when the
    sampler estimated it from the image (else None)."""

    index: int
    sigma: float
    sigma_next: float
    x: Tensor
    x0: Tensor
    nfe: int
    seconds: float
    sigma_hat: Tensor | None = None


def _check_start(x: Tensor):
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}; scale noise by sigmas[0]")
    if x.ndim < 2:
        raise ValueError(f"x must be a batch, shape (B, ...), got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("the starting x contains NaN or Inf")


def steps(model, x: Tensor, sigmas, rule: Rule | str, *, seed: int | None = None,
          sigma_estimate=None) -> Iterator[Step]:
    """Run ``rule`` over the schedule, yielding a :class:`Step` after each step.

    ``x`` is the starting state at ``sigmas[0]`` (noise times ``sigmas[0]``). ``seed``
    keys the per-sample noise of stochastic rules; without one it is drawn from
    torch's global generator. Runs under ``torch.inference_mode`` unless the rule
    needs autograd tensors.

    ``sigma_estimate`` (``"noise"``, ``"rms"`` or a callable ``x -> (B,)``; see
    :mod:`lab.noise_level`) makes each step start from the noise level read off the
    image instead of the schedule's; the step still ends at the schedule's next sigma.
    """
    rule = resolve(rule)
    estimate = noise_level.resolve(sigma_estimate, model)
    sigmas = schedules.validate(sigmas)
    _check_start(x)
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
    counter = CallCounter(model)
    noise = NoiseSource(seed, x.shape[0])
    values = sigmas.tolist()
    grad_mode = torch.inference_mode if rule.inference_safe else torch.no_grad

    def advance():
        nonlocal x
        for i, (sigma, sigma_next) in enumerate(zip(values[:-1], values[1:])):
            start = time.perf_counter()
            sigma_hat = None
            if estimate is not None:
                sigma_hat = noise_level.clamp(estimate(x).to(x.dtype), model)
            x, x0 = rule.step(counter, x, sigma if sigma_hat is None else sigma_hat, sigma_next,
                              noise)
            if not bool(torch.isfinite(x).all()):
                raise NonFiniteError(
                    f"rule {rule.config_name} produced NaN/Inf at step {i} (sigma {sigma:.4g} "
                    f"-> {sigma_next:.4g}); try more steps, a smaller lr_scale, or check the "
                    "model's output at this sigma")
            yield Step(i, sigma, sigma_next, x, x0, counter.calls, time.perf_counter() - start,
                       sigma_hat)

    # Grad mode is thread-local: enter it around each step, not across the yields,
    # so the caller's code between steps keeps its own mode.
    run = advance()
    with grad_mode():
        rule.reset(sigmas)
    while True:
        with grad_mode():
            record = next(run, None)
        if record is None:
            return
        yield record


def sample(model, x: Tensor, sigmas, rule: Rule | str, *, seed: int | None = None,
           callback: Callable[[Step], None] | None = None, record: str = "all",
           progress: bool = False, sigma_estimate=None) -> Trajectory:
    """Collect :func:`steps` into a :class:`Trajectory`.

    ``record="final"`` keeps only the last state (for large sweeps). ``callback(step)``
    sees every step's record; ``progress=True`` shows a tqdm bar. ``sigma_estimate``
    as in :func:`steps`; the estimates land in ``traj.sigma_hats``.
    """
    if record not in ("all", "final"):
        raise ValueError(f"record must be 'all' or 'final', got {record!r}")
    rule = resolve(rule)
    sigmas = schedules.validate(sigmas)
    xs, x0s, nfe, seconds, sigma_hats = [x.detach().clone()], [], [], [], []
    run = steps(model, x, sigmas, rule, seed=seed, sigma_estimate=sigma_estimate)
    if progress:
        from tqdm.auto import tqdm

        run = tqdm(run, total=len(sigmas) - 1, desc=rule.config_name)
    for step in run:
        if callback is not None:
            callback(step)
        if record == "all":
            xs.append(step.x)
            x0s.append(step.x0)
        else:
            xs, x0s = [step.x], [step.x0]
        nfe.append(step.nfe)
        seconds.append(step.seconds)
        if step.sigma_hat is not None:
            sigma_hats.append(step.sigma_hat)
    meta = {"seed": seed, "rule": rule.config}
    if sigma_estimate is not None:
        meta["sigma_estimate"] = str(sigma_estimate)
    return Trajectory(torch.stack(xs), torch.stack(x0s), sigmas, nfe, seconds,
                      rule=rule.config_name, meta=meta,
                      sigma_hats=torch.stack(sigma_hats) if sigma_hats else None)


def sample_at_budget(model, x: Tensor, rule: Rule | str, budget: int, schedule, **kwargs
                     ) -> Trajectory | None:
    """Sample with the largest step count whose model calls fit ``budget``.

    ``schedule(n)`` builds an n-step schedule (e.g. ``lab.schedules.karras``). Returns
    None when even one step costs more than ``budget``. Keyword arguments go to
    :func:`sample`; ``traj.nfe`` is the actual count.
    """
    from .rules import steps_for_budget

    rule = resolve(rule)
    n = steps_for_budget(rule, budget, schedule)
    if n is None:
        return None
    return sample(model, x, schedule(n), rule, **kwargs)
