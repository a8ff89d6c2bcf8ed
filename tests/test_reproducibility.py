"""Seeds: bit-identical reruns, batch-size invariance, disjoint streams, rules that reset."""

import pytest
import torch

import lab
from lab import rules


def test_noise_is_batch_size_invariant():
    big = lab.noise((64, 3, 5), seed=7)
    for k in (0, 1, 17, 63):
        assert torch.equal(lab.noise((k + 1, 3, 5), seed=7)[k], big[k])
    assert torch.equal(lab.noise((1, 3, 5), seed=7)[0], big[0])


def test_seeds_zero_and_one_share_no_sample():
    a, b = lab.noise((64, 8), seed=0), lab.noise((64, 8), seed=1)
    assert not (torch.cdist(a, b) < 1e-6).any()


def test_seeds_beyond_32_bits_differ():
    assert not torch.equal(lab.noise((2, 8), seed=0), lab.noise((2, 8), seed=2**32))


@pytest.mark.parametrize("rule", ["heun", "ancestral", "langevin", "churn", "annealed_langevin"])
def test_same_seed_same_tensor(mixture, rule):
    sig = lab.schedules.karras(10, sigma_max=20.0)
    x = lab.noise((8, 2), seed=0, dtype=torch.float64) * sig[0]
    a = lab.sample(mixture, x, sig, rule, seed=3).x
    b = lab.sample(mixture, x, sig, rule, seed=3).x
    assert torch.equal(a, b)
    if rules.get(rule).stochastic:
        assert not torch.equal(a, lab.sample(mixture, x, sig, rule, seed=4).x)


@pytest.mark.parametrize("rule", [
    "heun", "dpmpp_2m", rules.ancestral("euler", eta=1.0), rules.langevin("heun", steps=2),
    rules.churn("heun", s_churn=10.0), "annealed_langevin",
], ids=str)
def test_batch_size_invariance_through_a_model(mixture, rule):
    """Sample k agrees (float64, 1e-6) in a batch of k + 1 and in a batch of 16."""
    sig = lab.schedules.karras(12, sigma_max=20.0)
    x = lab.noise((16, 2), seed=5, dtype=torch.float64) * sig[0]
    full = lab.sample(mixture, x, sig, rule, seed=11).x
    for k in (0, 9):
        # the first k + 1 samples as their own batch: same streams (seed, j), j <= k
        part = lab.sample(mixture, x[: k + 1], sig, rule, seed=11).x
        assert (part[k] - full[k]).abs().max().item() < 1e-6


@pytest.mark.parametrize("name", ["lms", "dpmpp_2m", "momentum", "nesterov", "adam", "optim"])
def test_reused_rule_object_resets(mixture, name):
    rule = rules.get(name)
    sig = lab.schedules.karras(8, sigma_max=20.0)
    x = lab.noise((4, 2), seed=0, dtype=torch.float64) * sig[0]
    first = lab.sample(mixture, x, sig, rule).x
    assert torch.equal(lab.sample(mixture, x, sig, rule).x, first)


def test_nfe_is_counted_and_matches_the_declaration(mixture):
    sig = lab.schedules.karras(7, sigma_max=20.0)
    x = lab.noise((3, 2), seed=0, dtype=torch.float64) * sig[0]
    expected = {"euler": 7, "heun": 13, "midpoint": 13, "rk4": 25, "dpmpp_2m": 7, "lms": 7}
    for name in rules.available():
        rule = rules.get(name)
        traj = lab.sample(mixture, x, sig, rule, seed=0)
        assert traj.nfe == rules.nfe(rule, sig), name
        if name in expected:
            assert traj.nfe == expected[name], name
    assert lab.sample(mixture, x, sig, rules.langevin("heun", steps=2)).nfe == 13 + 2 * 6


def test_an_unseeded_run_records_the_seed_it_drew(mixture):
    sig = lab.schedules.karras(6, sigma_max=20.0)
    x = lab.noise((4, 2), seed=0, dtype=torch.float64) * sig[0]
    first = lab.sample(mixture, x, sig, rules.ancestral("euler"))
    seed = first.meta["seed"]
    assert isinstance(seed, int)
    assert torch.equal(first.x, lab.sample(mixture, x, sig, "ancestral", seed=seed).x)
    assert all(step.seed == seed for step in lab.steps(mixture, x, sig, "euler", seed=seed))


@pytest.mark.parametrize("name", ["dpmpp_2m", "lms", "momentum", "churn"])
def test_two_live_runs_of_one_rule_object_do_not_share_history(mixture, name):
    """Each run steps its own copy of the rule: interleaving two generators over the same
    Rule object gives what each gives alone."""
    rule = rules.get(name)
    sig = lab.schedules.karras(8, sigma_max=20.0)
    xa = lab.noise((4, 2), seed=1, dtype=torch.float64) * sig[0]
    xb = lab.noise((4, 2), seed=2, dtype=torch.float64) * sig[0]
    alone = [lab.sample(mixture, x, sig, rule, seed=5).x for x in (xa, xb)]
    run_a, run_b = lab.steps(mixture, xa, sig, rule, seed=5), lab.steps(mixture, xb, sig, rule,
                                                                           seed=5)
    for step_a, step_b in zip(run_a, run_b):
        last_a, last_b = step_a.x, step_b.x
    assert torch.equal(last_a, alone[0]) and torch.equal(last_b, alone[1])


def test_rule_noise_in_half_precision_is_the_float32_stream_rounded():
    src32, src16 = lab.seeding.NoiseSource(3, 4), lab.seeding.NoiseSource(3, 4)
    like = torch.zeros(4, 5)
    assert torch.equal(src16(like.bfloat16()), src32(like).bfloat16())


def test_ancestral_noise_follows_an_estimated_sigma_below_the_target(mixture):
    """A sample whose estimated sigma is already below sigma_next gets no noise, not NaN."""
    sig = lab.schedules.karras(4, sigma_max=20.0)
    x = lab.noise((4, 2), seed=0, dtype=torch.float64) * sig[0]
    traj = lab.sample(mixture, x, sig, rules.ancestral("euler"), seed=0,
                      sigma_estimate=lambda x: torch.full((x.shape[0],), 0.01,
                                                          dtype=x.dtype))
    assert bool(torch.isfinite(traj.x).all())
