"""Step schedules tuned for a model and a rule: the learning-rate schedule, optimised.

A few-step sampler spends its calls where the schedule puts them. :func:`optimize`
chooses the sigmas of a ``budget``-call run of ``rule`` on ``model`` by minimising the
distance of its result from a high-accuracy solution of the probability-flow ODE, on a
small calibration batch started from the same noise. It is a direct search over the
log-sigmas (Nelder-Mead): the interior sigmas as shares of the log-range, and where
the schedule ends, ``sigma_min``, which matters most at a handful of calls (GITS and
DMN, Chen et al. 2024 and Xue et al. 2024, report their largest gains at 5 calls). The
first sigma stays at ``sigma_max`` and the last at 0.

The search is seeded and deterministic, reports what it cost in model calls, and is
cached on disk keyed by the model's weights and the rule's configuration, so asking
again is free. ``lab.schedules.optimize`` is this function.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from . import rules as _rules
from . import schedules
from .denoiser import CallCounter
from .io import write_json
from .sample import NonFiniteError, sample
from .seeding import CALIBRATION_SEED, noise

__all__ = ["optimize", "OptimizedSchedule", "CALIBRATION_SEED", "cache_dir", "fingerprint"]

CACHE_ENV = "LAB_CACHE"
VERSION = 1


@dataclass
class OptimizedSchedule:
    """The tuned schedule and what it took: ``error`` is the calibration batch's RMS
    distance from the reference with these sigmas, ``karras_error`` with the Karras
    schedule (rho 7) it started from; ``model_calls`` is the search's cost (reference
    included), also when ``cached`` says this call read it back for free;
    ``evaluations`` counts the sampling runs."""

    sigmas: list[float]
    rule: str
    budget: int
    nfe: int
    error: float
    karras_error: float
    model_calls: int
    evaluations: int
    cached: bool = False

    @property
    def tensor(self) -> Tensor:
        return torch.tensor(self.sigmas, dtype=torch.float64)


def cache_dir() -> Path:
    """``$LAB_CACHE/schedules``, else ``~/.cache/sampler-lab/schedules``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root) if root else Path.home() / ".cache" / "sampler-lab"
    return base / "schedules"


def fingerprint(model) -> str:
    """sha256 of what a model computes with: its class, config and tensors."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    config = getattr(model, "config", None)
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _dtype(model) -> torch.dtype:
    state = model.state_dict().values() if hasattr(model, "state_dict") else ()
    return next((t.dtype for t in state if t.is_floating_point()), torch.float32)


def _range(model, sigma_min, sigma_max) -> tuple[float, float]:
    lo, hi = getattr(model, "sigma_min", None), getattr(model, "sigma_max", None)
    if sigma_max is None:
        if hi is None or not math.isfinite(hi):
            raise ValueError(f"{type(model).__name__} does not say its sigma_max: pass "
                             "sigma_max= (the schedule's first sigma) to optimize")
        sigma_max = float(hi)
    if sigma_min is None:
        if lo is None:
            raise ValueError(f"{type(model).__name__} does not say its sigma_min: pass "
                             "sigma_min= (the lowest sigma the schedule may end at)")
        sigma_min = max(float(lo), 1e-3)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    return float(sigma_min), float(sigma_max)


def _sigmas(theta: np.ndarray, steps: int, sigma_max: float) -> list[float]:
    """theta = [log sigma_end, logits of the log-range shares of steps 2 .. N-1]: the
    first share's logit is 0, so the map is one to one."""
    log_end, logits = theta[0], np.concatenate([[0.0], theta[1:]])
    shares = np.exp(logits - logits.max())
    shares /= shares.sum()
    logs = math.log(sigma_max) - (math.log(sigma_max) - log_end) * np.cumsum(shares)
    return [sigma_max, *np.exp(logs).tolist(), 0.0]


def _theta(sigmas: list[float]) -> np.ndarray:
    logs = np.log(sigmas[:-1])
    shares = -np.diff(logs)
    return np.concatenate([[logs[-1]], np.log(shares[1:] / shares[0])])


def optimize(model, budget: int, rule, *, calibration: int = 32, seed: int = CALIBRATION_SEED,
             sigma_min: float | None = None, sigma_max: float | None = None,
             evaluations: int = 60, reference_steps: int = 64, shape=None,
             search_end: bool = True, distance="rms", cache: bool = True
             ) -> OptimizedSchedule:
    """The ``budget``-call sigma schedule of ``rule`` on ``model`` closest to the ODE's
    solution on ``calibration`` samples of noise from ``seed``.

    ``sigma_max`` (default: the model's) is kept. With ``search_end`` the end of the
    schedule is searched above the model's lowest sigma (or ``sigma_min``); without, it
    stays at that sigma. The reference is Heun with ``reference_steps`` Karras steps from
    the same noise; the search makes at most ``evaluations`` runs. ``distance`` between
    the result and the reference: ``"rms"`` in pixels, ``"features"`` in the penultimate
    features of ``fashion-classifier`` (for Fashion-MNIST; pixel distance favours blur),
    or a callable ``(samples, reference) -> float`` (its qualified name keys the cache).
    ``shape`` is one sample's shape (default: the model's ``sample_shape``).
    Deterministic rules only: noise would make the objective random.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget (model calls) must be a positive integer, got {budget!r}")
    rule = _rules.resolve(rule)
    if rule.stochastic:
        raise ValueError(f"optimize tunes deterministic rules; {rule.config_name} injects "
                         "noise, so its distance from the ODE's solution is not what to tune")
    lo, hi = _range(model, sigma_min, sigma_max)
    steps = _rules.steps_for_budget(rule, budget, lambda n: schedules.karras(n, lo, hi))
    if steps is None:
        raise ValueError(f"{rule.config_name} needs more than {budget} model calls for a "
                         "single step; raise the budget")
    measure = _distance(distance)
    shape = tuple(shape or getattr(model, "sample_shape", None) or ())
    if not shape:
        raise ValueError("pass shape= (one sample's shape): the model has no sample_shape")
    request = {
        "version": VERSION, "model": fingerprint(model), "rule": rule.config_name,
        "config": rule.config, "budget": budget, "calibration": calibration, "seed": seed,
        "range": [lo, hi], "evaluations": evaluations, "reference": reference_steps,
        "shape": shape, "search_end": search_end,
        "distance": distance if isinstance(distance, str) else distance.__qualname__}
    key = hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode())
    key = key.hexdigest()[:32]
    path = cache_dir() / f"{key}.json"
    if cache and path.exists():
        return _read_cached(path)

    x = noise((calibration, *shape), seed=seed, dtype=_dtype(model)) * hi
    # Heun's last step, to 0, is x0_hat at sigma_min: the reference's clean end.
    reference = sample(model, x, schedules.karras(reference_steps, lo, hi), "heun",
                       record="final")
    target, runs = reference.x, 0

    counted = CallCounter(model)  # a run that fails half way made calls too

    def error(sigmas: list[float]) -> float:
        nonlocal runs
        runs += 1
        try:
            out = sample(counted, x, torch.tensor(sigmas, dtype=torch.float64), rule,
                         record="final")
        except NonFiniteError:
            return math.inf
        return float(measure(out.x, target))

    start = schedules.karras(steps, lo, hi).tolist()
    karras_error = error(start)
    if steps == 1:  # one step from sigma_max to 0: nothing to choose
        result = OptimizedSchedule(start, rule.config_name, budget, _rules.nfe(rule, start),
                                   karras_error, karras_error,
                                   reference.nfe + counted.calls, runs)
    else:
        log_lo, log_hi = math.log(lo), math.log(hi)
        theta0 = _theta(start)
        free = slice(0 if search_end else 1, None)  # theta[0] is the end's log-sigma

        def objective(params):
            theta = theta0.copy()
            theta[free] = params
            if not log_lo <= theta[0] < log_hi - 1e-3 or np.abs(theta[1:]).max(initial=0) > 8:
                return 1e6  # outside the model's range, or a step of nearly nothing
            return error(_sigmas(theta, steps, hi))

        best, best_error = start, karras_error
        x0 = theta0[free]
        if len(x0):
            simplex = np.vstack([x0] + [x0 + 0.5 * row for row in np.eye(len(x0))])
            found = minimize(objective, x0, method="Nelder-Mead",
                             options={"maxfev": max(evaluations - 1, len(x0) + 1),
                                      "initial_simplex": simplex, "xatol": 1e-3,
                                      "fatol": 1e-7})
            if found.fun < karras_error:
                theta = theta0.copy()
                theta[free] = found.x
                best, best_error = _sigmas(theta, steps, hi), float(found.fun)
        result = OptimizedSchedule(best, rule.config_name, budget, _rules.nfe(rule, best),
                                   best_error, karras_error, reference.nfe + counted.calls, runs)
    if cache:
        write_json(path, {"format": "lab.OptimizedSchedule", "version": VERSION,
                          **asdict(result)})
    return result


def _rms(samples: Tensor, reference: Tensor) -> float:
    return float((samples - reference).double().pow(2).mean().sqrt())


def _feature_distance(samples: Tensor, reference: Tensor) -> float:
    from .metrics import features

    a, b = (features(t.float().clamp(-1, 1)) for t in (samples, reference))
    return _rms(a, b)


def _distance(distance):
    if callable(distance):
        return distance
    options = {"rms": _rms, "features": _feature_distance}
    if distance not in options:
        raise ValueError(f"distance must be 'rms', 'features' or a callable (samples, "
                         f"reference) -> float, got {distance!r}")
    return options[distance]


def _read_cached(path: Path) -> OptimizedSchedule:
    try:
        record = json.loads(path.read_text())
        if record.pop("format") != "lab.OptimizedSchedule":
            raise ValueError("not an optimised schedule")
        record.pop("version")
        record["cached"] = True  # model_calls stays what the search cost when it ran
        result = OptimizedSchedule(**record)
        schedules.validate(result.sigmas)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"the cached schedule {path} is damaged ({err}); delete it and the "
                         "search runs again") from err
    return result
