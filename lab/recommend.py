"""What the few-step frontier study found: the best sampler for a budget of model calls.

``lab.recommend(5)`` returns the rule and sigmas that gave ``fashion-edm`` its lowest
FID with at most 5 model calls, as recorded in ``results/few_step_frontier/best.json``
(shipped with the package as ``lab/recommendations/few_step_frontier.json``)::

    best = lab.recommend(5)
    traj = lab.sample(model, lab.noise(shape, seed=0) * best.sigmas[0], best.sigmas, best.rule)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import rules as _rules

__all__ = ["recommend", "Recommendation", "RECOMMENDATIONS"]

RECOMMENDATIONS = Path(__file__).parent / "recommendations" / "few_step_frontier.json"


@dataclass
class Recommendation:
    """A sampler the frontier study measured: ``rule`` (a fresh Rule), ``sigmas``, the
    ``budget`` it was measured at, its FID and the sample count behind it."""

    rule: _rules.Rule
    sigmas: Tensor
    budget: int
    fid: float
    samples: int
    label: str


def recommend(budget: int, model: str = "fashion-edm", path: Path = RECOMMENDATIONS
              ) -> Recommendation:
    """The best sampler the study found within ``budget`` model calls for ``model``: the
    entry of the largest measured budget that does not exceed ``budget``."""
    if not Path(path).exists():
        raise FileNotFoundError(f"no recommendations at {path}: run python -m experiments "
                                "few_step_frontier (its render writes them)")
    try:
        record = json.loads(Path(path).read_text())
        entries = {int(b): e for b, e in record["budgets"].items()}
        scores = {b: next((int(k.split("_")[1]), v) for k, v in e.items()
                          if k.startswith("fid_")) for b, e in entries.items()}
    except (ValueError, KeyError, TypeError, StopIteration) as err:
        raise ValueError(f"{path} is damaged ({err}); rerun python -m experiments "
                         "few_step_frontier --render-only to write it again") from err
    if record.get("model") != model:
        raise ValueError(f"the recommendations are for {record.get('model')!r}, not {model!r}")
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"budget must be an integer number of model calls, got {budget!r}")
    fitting = [b for b in entries if b <= budget]
    if not fitting:
        raise ValueError(f"the study measured budgets {sorted(entries)}; nothing fits "
                         f"{budget} model calls")
    b = max(fitting)
    e = entries[b]
    if e["rule"] not in _rules.available():
        raise ValueError(f"{path} recommends rule {e['rule']!r} at {b} calls, which this lab "
                         f"does not have; available: {', '.join(_rules.available())}")
    samples, fid = scores[b]
    rule = _rules.get(e["rule"], **{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in e["params"].items()})
    sigmas = torch.tensor(e["sigmas"], dtype=torch.float64)
    if _rules.nfe(rule, sigmas) > b:
        raise ValueError(f"{path}: the entry for {b} calls takes {_rules.nfe(rule, sigmas)} "
                         "model calls; the file is inconsistent, rerun the study's render")
    return Recommendation(rule, sigmas, b, float(fid), samples, e.get("label", rule.config_name))
