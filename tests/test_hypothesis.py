"""Random valid schedules and rule parameters on the exact Gaussian give finite samples.

Valid: consecutive sigmas at least 1% apart; parameters within their declared ranges.
"""

import math

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import lab
from lab import rules
from tests.conftest import rotated_gaussian

MODEL = rotated_gaussian()


@st.composite
def schedules_(draw):
    n = draw(st.integers(1, 12))
    top = draw(st.floats(0.05, 100.0))
    ratios = draw(st.lists(st.floats(0.0, 0.99), min_size=n - 1, max_size=n - 1))
    sig = [top]
    for r in ratios:
        sig.append(sig[-1] * r)
        if sig[-1] < 1e-4:
            sig.pop()
            break
    end_at_zero = draw(st.booleans())
    return torch.tensor(sig + [0.0] if end_at_zero or len(sig) == 1 else sig, dtype=torch.float64)


def param_value(draw, p):
    if p.choices is not None:
        return draw(st.sampled_from(p.choices))
    if isinstance(p.default, str):  # a wrapper's inner rule
        return draw(st.sampled_from(["euler", "heun", "dpmpp_2m", "momentum", "ipndm"]))
    hi = p.high if p.high is not None and math.isfinite(p.high) else 10.0
    lo = p.low if p.low is not None else -10.0
    if p.name == "steps":
        hi = min(hi, 4)
    elem = st.integers(int(lo), int(hi)) if p.integer else st.floats(lo, hi)
    if isinstance(p.default, tuple):
        return tuple(draw(elem) for _ in p.default)
    return draw(elem)


@st.composite
def rules_(draw):
    name = draw(st.sampled_from(rules.available()))
    params = {p.name: param_value(draw, p) for p in rules.describe(name)}
    try:
        return rules.get(name, **params)
    except ValueError as err:  # heavy_ball around a rule with no single direction
        assume("no single direction" not in str(err))
        raise


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(sig=schedules_(), rule=rules_(), seed=st.integers(0, 2**40))
def test_valid_schedules_and_parameters_give_finite_samples(sig, rule, seed):
    x = lab.noise((3, 4), seed=seed, dtype=torch.float64) * sig[0]
    out = lab.sample(MODEL, x, sig, rule, seed=seed)
    assert bool(torch.isfinite(out.x).all())
    assert out.nfe == rules.nfe(rule, sig)
