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
