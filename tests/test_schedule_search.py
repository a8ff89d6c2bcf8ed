"""lab.schedules.optimize: a tuned step schedule beats the Karras schedule it starts from,
is deterministic, reports its cost, is cached, and refuses what it cannot tune."""

import json

import pytest
import torch

import lab
from lab import schedule_search

from .conftest import two_d_mixture


@pytest.fixture
def model():
    m = two_d_mixture()
    m.sigma_min, m.sigma_max = 0.002, 80.0
    return m


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(schedule_search.CACHE_ENV, str(tmp_path))
    return tmp_path / "schedules"


OPTIONS = {"calibration": 64, "evaluations": 25, "reference_steps": 32}


@pytest.mark.parametrize("rule", ["dpmpp_2m", "euler"])
def test_the_tuned_schedule_is_closer_to_the_ode_than_karras(model, rule):
    found = lab.schedules.optimize(model, 5, rule, **OPTIONS)
    assert found.error < 0.8 * found.karras_error
    sig = found.tensor
    assert float(sig[0]) == 80.0 and float(sig[-1]) == 0.0 and len(sig) == 6
    assert found.nfe == lab.rules.nfe(rule, sig) <= 5
    # the reported error is what sampling with these sigmas gives
    x = lab.noise((64, 2), seed=schedule_search.CALIBRATION_SEED, dtype=torch.float64) * 80.0
    ref = lab.sample(model, x, lab.schedules.karras(32, 0.002, 80.0), "heun").x
    out = lab.sample(model, x, sig, rule).x
    assert float((out - ref).pow(2).mean().sqrt()) == pytest.approx(found.error, rel=1e-9)
    # reference (2 * 32 - 1 calls) plus every evaluation at 5 calls
    assert found.model_calls == 63 + 5 * found.evaluations and found.evaluations <= 25


def test_a_second_call_is_free_and_identical(model, cache):
    first = lab.schedules.optimize(model, 4, "dpmpp_2m", **OPTIONS)
    again = lab.schedules.optimize(model, 4, "dpmpp_2m", **OPTIONS)
    assert again.cached and not first.cached and again.sigmas == first.sigmas
    assert again.model_calls == first.model_calls  # what it cost when it ran
    assert len(list(cache.glob("*.json"))) == 1
    fresh = lab.schedules.optimize(model, 4, "dpmpp_2m", cache=False, **OPTIONS)
    assert fresh.sigmas == first.sigmas and not fresh.cached  # deterministic
    other = two_d_mixture()  # different weights, different key
    other.sigma_min, other.sigma_max = 0.002, 80.0
    other.means.add_(0.5)
    lab.schedules.optimize(other, 4, "dpmpp_2m", **OPTIONS)
    assert len(list(cache.glob("*.json"))) == 2


def test_a_damaged_cache_file_names_itself(model, cache):
    lab.schedules.optimize(model, 3, "euler", **OPTIONS)
    (path,) = cache.glob("*.json")
    path.write_text(json.dumps({"format": "lab.OptimizedSchedule", "version": 1,
                                "sigmas": [1.0, 2.0, 0.0]}))
    with pytest.raises(ValueError, match=f"{path.name}.*damaged.*delete it"):
        lab.schedules.optimize(model, 3, "euler", **OPTIONS)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="delete it"):
        lab.schedules.optimize(model, 3, "euler", **OPTIONS)


def test_bad_requests_say_what_to_do(model):
    bare = two_d_mixture()  # exact models have no sigma_max
    with pytest.raises(ValueError, match="sigma_max"):
        lab.schedules.optimize(bare, 5, "euler", **OPTIONS)
    with pytest.raises(ValueError, match="budget .* positive integer"):
        lab.schedules.optimize(model, 0, "heun", **OPTIONS)
    with pytest.raises(ValueError, match="deterministic"):
        lab.schedules.optimize(model, 5, "ancestral", **OPTIONS)


def test_the_end_can_be_kept_and_the_distance_chosen(model):
    kept = lab.schedules.optimize(model, 5, "dpmpp_2m", search_end=False, **OPTIONS)
    assert kept.sigmas[-2] == pytest.approx(0.002) and kept.error <= kept.karras_error

    def worst_sample(out, ref):
        return float((out - ref).abs().amax())

    chosen = lab.schedules.optimize(model, 5, "dpmpp_2m", distance=worst_sample, **OPTIONS)
    assert chosen.karras_error == pytest.approx(
        worst_sample(*_karras_and_reference(model)), rel=1e-9)
    with pytest.raises(ValueError, match="distance must be"):
        lab.schedules.optimize(model, 5, "dpmpp_2m", distance="lpips", **OPTIONS)


def _karras_and_reference(model):
    x = lab.noise((64, 2), seed=schedule_search.CALIBRATION_SEED, dtype=torch.float64) * 80.0
    ref = lab.sample(model, x, lab.schedules.karras(32, 0.002, 80.0), "heun").x
    return lab.sample(model, x, lab.schedules.karras(5, 0.002, 80.0), "dpmpp_2m").x, ref
