"""Tuning a rule with a real optimiser: optuna's TPE over the rule's declared parameters
and the schedule's (``sigma_min``, ``sigma_max``, ``rho`` of a Karras schedule).

The objective is a score of a fixed calibration batch, drawn from
:data:`lab.seeding.CALIBRATION_SEED`, which no study or test samples from, so a tuned
configuration is never scored on its own calibration noise elsewhere:

- ``"fid"``: FID with ``fashion-classifier`` of the (clamped) samples against the
  Fashion-MNIST test set, for image models;
- ``"exact"``: RMS distance of the samples from a tight-tolerance ODE solution from
  the same noise, for the analytic models.

Trials live in an optuna SQLite file, so a killed search resumes where it stopped and
a finished one is read back, not rerun. ``python -m experiments tune`` is the command.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import rules as _rules
from . import schedules
from .sample import NonFiniteError, sample
from .schedule_search import fingerprint
from .seeding import CALIBRATION_SEED, noise

__all__ = ["search_space", "Tuned", "tune", "objective_score", "open_storage"]

FAILED = 1e6  # a trial whose samples went NaN, or whose budget holds no step
HEARTBEAT_SECONDS = 10  # a trial whose process died is failed, then retried, after 3 beats


def open_storage(path: Path):
    """The optuna SQLite storage at ``path``, with heartbeats: a trial left RUNNING by a
    killed search is failed once it misses three beats, and run again with the same
    parameters (optuna's ``RetryHeartbeatStaleTrialCallback``), so a kill loses no trial, not
    even the defaults trial the search starts from."""
    import warnings

    import optuna

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            f"sqlite:///{Path(path).resolve()}", heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=3 * HEARTBEAT_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=1))


def search_space(rule: str, model) -> dict[str, tuple]:
    """``{name: (kind, low, high, log)}`` for the rule's numeric and choice parameters and
    the schedule's. A wrapper's inner rule stays as given; tuple parameters become one
    entry per element (``betas[0]``, ...)."""
    space = {}
    for p in _rules.describe(rule):
        if p.choices is not None:
            space[p.name] = ("choice", p.choices, None, False)
        elif isinstance(p.default, str):
            continue
        elif isinstance(p.default, tuple):
            for i in range(len(p.default)):
                space[f"{p.name}[{i}]"] = ("float", p.low, p.high, p.log)
        else:
            space[p.name] = ("int" if p.integer else "float", p.low, p.high,
                             p.log and (p.low or 0) > 0)
    lo = max(float(getattr(model, "sigma_min", 0.0) or 0.0), 1e-3)
    hi = float(getattr(model, "sigma_max", math.inf))
    if not math.isfinite(hi):
        raise ValueError(f"{type(model).__name__} does not say its sigma_max; tuning the "
                         "schedule needs the model's sigma range")
    space["sigma_min"] = ("float", lo, min(1.0, hi / 10), True)
    space["sigma_max"] = ("float", min(10.0, hi), hi, True)
    space["rho"] = ("float", 1.0, 10.0, False)
    return space


def _rule_and_schedule(rule: str, params: dict):
    values, tuples = {}, {}
    for name, v in params.items():
        if name in ("sigma_min", "sigma_max", "rho"):
            continue
        if "[" in name:
            base, i = name[:-1].split("[")
            tuples.setdefault(base, {})[int(i)] = v
        else:
            values[name] = v
    for base, parts in tuples.items():
        values[base] = tuple(parts[i] for i in sorted(parts))
    def schedule(n):
        return schedules.karras(n, params["sigma_min"], params["sigma_max"], params["rho"])
    return _rules.get(rule, **values), schedule


def objective_score(model, rule, schedule, budget: int, x: torch.Tensor, objective: str,
                    target: torch.Tensor | None = None) -> float:
    """The tuning objective of one configuration on the calibration noise ``x``."""
    n = _rules.steps_for_budget(rule, budget, schedule)
    if n is None:
        return FAILED
    sig = schedule(n)
    try:
        out = sample(model, x * float(sig[0]), sig, rule, seed=CALIBRATION_SEED,
                     record="final").x
    except NonFiniteError:
        return FAILED
    if objective == "fid":
        from .metrics import fid

        return float(fid(out.clamp(-1, 1)))
    return float((out.double() - target.double()).pow(2).mean().sqrt())


def _flat_default(p):
    if isinstance(p.default, tuple):
        return [(f"{p.name}[{i}]", v) for i, v in enumerate(p.default)]
    return [(p.name, p.default)]


@dataclass
class Tuned:
    """The best trial: the rule's parameters, the schedule, and the objective's value."""

    rule: str
    params: dict
    schedule: dict
    value: float
    trials: int
    budget: int
    objective: str

    def build(self):
        """``(rule, sigmas)`` ready for :func:`lab.sample`."""
        rule, schedule = _rule_and_schedule(self.rule, {**self.params, **self.schedule})
        n = _rules.steps_for_budget(rule, self.budget, schedule)
        if n is None:
            raise ValueError(f"{rule.config_name} takes more than {self.budget} model calls "
                             "for one step; this tuned entry cannot be rebuilt")
        return rule, schedule(n)


def tune(model, rule: str, budget: int, *, trials: int = 40, storage: Path,
         objective: str = "fid", calibration: int = 512, model_name: str = "model",
         sampler_seed: int = 0, progress: bool = False) -> Tuned:
    """Run (or resume) up to ``trials`` optuna trials; the best configuration found.

    ``storage`` is the SQLite file; the study inside is keyed by model, rule, budget,
    objective and calibration size, so each question has its own trials.
    """
    import optuna

    if objective not in ("fid", "exact"):
        raise ValueError(f"objective must be 'fid' or 'exact', got {objective!r}")
    _rules.get(rule)  # an unknown rule fails here, by name
    space = search_space(rule, model)
    shape = getattr(model, "sample_shape", None)
    if shape is None:
        raise ValueError("the model does not say its sample_shape; tuning needs it")
    x = noise((calibration, *shape), seed=CALIBRATION_SEED)
    fixed, target = {}, None
    if objective == "exact":  # one reference solution, so sigma_max stays put
        from .metrics import exact_solution

        fixed["sigma_max"] = space.pop("sigma_max")[2]
        x = x.double()
        target = exact_solution(model, x * fixed["sigma_max"], fixed["sigma_max"], 0.0)

    def run(trial) -> float:
        params = dict(fixed)
        for name, (kind, low, high, log) in space.items():
            if kind == "choice":
                params[name] = trial.suggest_categorical(name, list(low))
            elif kind == "int":
                params[name] = trial.suggest_int(name, int(low), int(high))
            else:
                params[name] = trial.suggest_float(name, low, high, log=log)
        rule_obj, schedule = _rule_and_schedule(rule, params)
        return objective_score(model, rule_obj, schedule, budget, x, objective, target)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        # keyed by the model's weights too: retrained weights do not inherit old trials
        study_name=f"{model_name}/{fingerprint(model)[:16]}/{rule}/{budget}/{objective}/"
                   f"{calibration}",
        storage=open_storage(storage), load_if_exists=True,
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=sampler_seed))
    if not study.trials:  # the first trial is the rule's defaults on Karras (rho 7)
        start = {**{n: v for p in _rules.describe(rule) for n, v in _flat_default(p)},
                 "sigma_min": max(space["sigma_min"][1], 0.002), "sigma_max": fixed.get(
                     "sigma_max", space.get("sigma_max", (0, 0, 80.0))[2]), "rho": 7.0}
        study.enqueue_trial({k: v for k, v in start.items() if k in space})
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    if trials > done:
        study.optimize(run, n_trials=trials - done, show_progress_bar=progress)
    best = {**fixed, **study.best_trial.params}
    sched = {k: best.pop(k) for k in ("sigma_min", "sigma_max", "rho")}
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    return Tuned(rule, best, sched, float(study.best_value), complete, budget, objective)
