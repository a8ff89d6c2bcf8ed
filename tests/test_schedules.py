import math

import numpy as np
import pytest
import torch

from lab import schedules


@pytest.mark.parametrize("fn", [schedules.karras, schedules.exponential, schedules.linear])
def test_shape_ends_and_order(fn):
    s = fn(20, sigma_min=0.002, sigma_max=80.0)
    assert s.dtype == torch.float64 and s.shape == (21,)
    assert float(s[0]) == pytest.approx(80.0) and float(s[-2]) == pytest.approx(0.002)
    assert float(s[-1]) == 0.0 and bool((s[1:] < s[:-1]).all())
    assert fn(1).tolist() == [80.0, 0.0]  # built in float64 end to end: exact
    for n in (1, 2, 7, 20):
        ends = fn(n, sigma_min=0.002, sigma_max=80.0).tolist()
        assert ends[0] == 80.0 and ends[-1] == 0.0 and (n == 1 or ends[-2] == 0.002)
    no_zero = fn(20, sigma_min=0.002, sigma_max=80.0, append_zero=False)
    assert no_zero.shape == (20,) and float(no_zero[-1]) == pytest.approx(0.002)


def test_karras_formula():
    s = schedules.karras(10, 0.002, 80.0, rho=7.0)
    i = np.arange(10)
    ref = (80 ** (1 / 7) + i / 9 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert np.allclose(s[:-1].numpy(), ref, rtol=1e-14)


def test_exponential_is_uniform_in_log_sigma():
    s = schedules.exponential(9, 0.01, 10.0)[:-1].log()
    assert torch.allclose(s.diff(), torch.full((8,), math.log(1e-3) / 8, dtype=torch.float64))


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_from_alphas_cumprod_matches_diffusers_euler(spacing):
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading"
                                   else 0)
    sched.set_timesteps(25)
    ours = schedules.from_alphas_cumprod(sched.alphas_cumprod, 25, spacing,
                                         steps_offset=sched.config.steps_offset)
    assert torch.allclose(ours.float(), sched.sigmas.float(), rtol=1e-5, atol=1e-6)
