"""The sampling loop, written once: :func:`steps` yields, :func:`sample` collects."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from . import noise_level, schedules
from .denoiser import CallCounter, sigma_dtype
from .rules import Rule, resolve, steps_for_budget
from .seeding import NoiseSource, random_seed
from .tensors import per_sample
from .trajectory import Trajectory

__all__ = ["Step", "steps", "sample", "sample_at_budget", "try_sample_at_budget",
           "NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """A sample became NaN or Inf during sampling."""


@dataclass
class Step:
    """One step's record: x moved from ``sigma`` to ``sigma_next``; ``x0`` is the
    denoiser's output at the step's start; ``nfe`` counts model calls so far.
    ``sigma_hat`` is the per-sample noise level the step started from when the
    sampler estimated it from the image (else None); ``seed`` keys the run's noise."""

    index: int
    sigma: float
    sigma_next: float
    x: Tensor
    x0: Tensor
    nfe: int
    seconds: float
    sigma_hat: Tensor | None = None
    seed: int | None = None


@dataclass
class _Run:
    """A validated request: what :func:`steps` and :func:`sample` check once."""

    model: object
    x: Tensor
    sigmas: Tensor
    rule: Rule
    seed: int
    estimate: Callable[[Tensor], Tensor] | None


def _prepare(model, x, sigmas, rule, seed, sigma_estimate) -> _Run:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}; build it with "
                        "lab.noise(shape, seed) * sigmas[0]")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}; scale noise by sigmas[0]")
    if x.ndim < 2:
        raise ValueError(f"x must be a batch, shape (B, ...), got {tuple(x.shape)}; use x[None] "
                         "for a single sample")
    if x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)}); sample at least one sample")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("the starting x contains NaN or Inf")
    if seed is None:
        seed = random_seed()
    elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return _Run(model, x, schedules.validate(sigmas), resolve(rule), seed,
                noise_level.resolve(sigma_estimate, model))


def _finite(x: Tensor) -> bool:
    # One reduction, no temporary mask: NaN and Inf propagate into the sum. Only when the
    # sum is not finite (also when finite values overflow it) look element by element.
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


def _run(r: _Run) -> Iterator[Step]:
    rule = copy.deepcopy(r.rule)  # each run its own history, whoever else holds the rule
    x, model = r.x, r.model
    counter = CallCounter(model)
    noise = NoiseSource(r.seed, x.shape[0])
    values = r.sigmas.tolist()
    # The schedule, expanded once: row i is sigma_i as a (B, 1, ..., 1) view.
    grid = r.sigmas.to(device=x.device, dtype=sigma_dtype(x))
    grid = grid.reshape(-1, 1, *[1] * (x.ndim - 1)).expand(-1, x.shape[0], *[1] * (x.ndim - 1))
    rows = grid.unbind(0)
    grad_mode = torch.inference_mode if rule.inference_safe else torch.no_grad

    def advance():
        nonlocal x
        for i, (sigma, sigma_next) in enumerate(zip(values[:-1], values[1:])):
            start = time.perf_counter()
            sigma_hat = None
            s = rows[i]
            if r.estimate is not None:
                sigma_hat = noise_level.clamp(r.estimate(x).to(grid.dtype), model)
                s = per_sample(sigma_hat, x)
            x_next, x0 = rule.step(counter, x, s, rows[i + 1], noise)
            if not _finite(x_next):
                raise NonFiniteError(
                    f"rule {rule.config_name} produced NaN/Inf at step {i} (sigma {sigma:.4g} "
                    f"-> {sigma_next:.4g}); try more steps, a smaller lr_scale, or check the "
                    "model's output at this sigma")
            # float32 sigmas may promote a half-precision x: keep the sample's dtype
            x = x_next if x_next.dtype == r.x.dtype else x_next.to(r.x.dtype)
            yield Step(i, sigma, sigma_next, x, x0, counter.calls, time.perf_counter() - start,
                       sigma_hat, r.seed)

    # Grad mode is thread-local: enter it around each step, not across the yields,
    # so the caller's code between steps keeps its own mode.
    run = advance()
    with grad_mode():
        rule.reset(r.sigmas)
    while True:
        with grad_mode():
            record = next(run, None)
        if record is None:
            return
        yield record


def steps(model, x: Tensor, sigmas, rule: Rule | str, *, seed: int | None = None,
          sigma_estimate=None) -> Iterator[Step]:
    """Run ``rule`` over the schedule, yielding a :class:`Step` after each step.

    ``x`` is the starting state at ``sigmas[0]`` (noise times ``sigmas[0]``). ``seed``
    keys the per-sample noise of stochastic rules; without one a seed is drawn and
    recorded in each step. Runs under ``torch.inference_mode`` unless the rule needs
    autograd tensors. The rule object is copied, so two live runs never share history.

    ``sigma_estimate`` (``"noise"``, ``"rms"``, a shipped regressor's name or a callable
    ``x -> (B,)``; see :mod:`lab.noise_level`) makes each step start from the noise level
    read off the image instead of the schedule's; the step still ends at the schedule's
    next sigma. Bad input fails here, before the first step.
    """
    return _run(_prepare(model, x, sigmas, rule, seed, sigma_estimate))


def sample(model, x: Tensor, sigmas, rule: Rule | str, *, seed: int | None = None,
           callback: Callable[[Step], None] | None = None, record: str = "all",
           progress: bool = False, sigma_estimate=None) -> Trajectory:
    """Collect :func:`steps` into a :class:`Trajectory`.

    ``record="final"`` keeps only the last state (for large sweeps). ``callback(step)``
    sees every step's record; ``progress=True`` shows a tqdm bar. ``sigma_estimate``
    as in :func:`steps`; the estimates land in ``traj.sigma_hats``. ``traj.meta["seed"]``
    is the seed the run used, drawn when none was given, so any run can be repeated; a
    guided model's network evaluations land in ``traj.meta["network_evaluations"]``.
    """
    if record not in ("all", "final"):
        raise ValueError(f"record must be 'all' or 'final', got {record!r}")
    r = _prepare(model, x, sigmas, rule, seed, sigma_estimate)
    evaluations = getattr(model, "network_evaluations", None)  # guided models count theirs
    xs, x0s, nfe, seconds, sigma_hats = [r.x.detach().clone()], [], [], [], []
    run = _run(r)
    if progress:
        from tqdm.auto import tqdm

        run = tqdm(run, total=len(r.sigmas) - 1, desc=r.rule.config_name)
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
    meta = {"seed": r.seed, "rule": r.rule.config}
    if evaluations is not None:  # per-sample network passes beside the model calls (NFE)
        meta["network_evaluations"] = model.network_evaluations - evaluations
    if sigma_estimate is not None:
        meta["sigma_estimate"] = str(sigma_estimate)
    return Trajectory(torch.stack(xs), torch.stack(x0s), r.sigmas, nfe, seconds,
                      rule=r.rule.config_name, meta=meta,
                      sigma_hats=torch.stack(sigma_hats) if sigma_hats else None)


def sample_at_budget(model, x: Tensor, rule: Rule | str, budget: int, schedule, **kwargs
                     ) -> Trajectory | None:
    """Sample with the largest step count whose model calls fit ``budget``.

    ``schedule(n)`` builds an n-step schedule (e.g. ``lab.schedules.karras``). Returns
    None when even one step costs more than ``budget``. Keyword arguments go to
    :func:`sample`; ``traj.nfe`` is the actual count.
    """
    rule = resolve(rule)
    n = steps_for_budget(rule, budget, schedule)
    if n is None:
        return None
    return sample(model, x, schedule(n), rule, **kwargs)


def try_sample_at_budget(model, x, rule, budget: int, schedule, *, seed: int,
                         record: str = "final", **kwargs):
    """:func:`sample_at_budget` for a study cell (by default the final state only):
    ``(traj, "ok")``, or ``(None, status)`` when one step costs more than ``budget`` or a
    sample turned NaN or Inf: outcomes a row records, not errors that should stop a study.
    ``kwargs`` go to :func:`sample` (e.g. ``sigma_estimate``)."""
    try:
        traj = sample_at_budget(model, x, rule, budget, schedule, seed=seed, record=record,
                                **kwargs)
    except NonFiniteError as err:
        return None, f"non-finite: {err}"
    return (traj, "ok") if traj is not None else (None, "does not fit the budget")
