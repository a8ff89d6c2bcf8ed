"""Global order of convergence on a Gaussian with a closed-form ODE solution.

Setup pinned by the issue: float64; eigenvalues {0.01, 0.1, 1, 4} in a random
rotation; Karras rho 7 from 80 to 0.002 with no final 0; max-abs error at the last
sigma; slope fitted over N = 16 ... 128 steps (LMS: 64 ... 256, see below).
"""

import numpy as np
import pytest
import torch

import lab

STEPS = (16, 32, 64, 128)


def errors(model, rule, steps=STEPS):
    x = lab.noise((16, 4), seed=0, dtype=torch.float64) * 80.0
    out = []
    for n in steps:
        sig = lab.schedules.karras(n + 1, 0.002, 80.0, append_zero=False)
        assert len(sig) == n + 1 and float(sig[-1]) == pytest.approx(0.002)
        final = lab.sample(model, x, sig, rule, record="final").x
        out.append((final - model.solve(x, 80.0, 0.002)).abs().max().item())
    return out


def slope(errs, steps=STEPS):
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0]


@pytest.mark.parametrize("rule,order", [("euler", 1), ("heun", 2), ("midpoint", 2), ("rk4", 4)])
def test_order_of_single_step_solvers(gaussian, rule, order):
    assert abs(slope(errors(gaussian, rule)) - order) < 0.3


def test_dpmpp_2m_is_second_order(gaussian):
    assert slope(errors(gaussian, "dpmpp_2m")) >= 1.7


# Multistep methods reach their asymptotic slope later than single-step ones (the first
# steps run at lower order while the history fills): over 16 ... 128 steps order 4 fits
# 3.4, over 64 ... 256 it fits 3.8. Each order is pinned to a band around k, so an LMS
# capped below its order fails.
LMS_STEPS = (64, 128, 256)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_lms_order(gaussian, order):
    fitted = slope(errors(gaussian, lab.rules.get("lms", order=order), LMS_STEPS), LMS_STEPS)
    assert abs(fitted - order) < 0.3, f"LMS order {order}: fitted slope {fitted:.2f}"


def test_lms_error_falls_with_order(gaussian):
    errs = [errors(gaussian, lab.rules.get("lms", order=k), steps=(32,))[0] for k in (1, 2, 3, 4)]
    assert errs == sorted(errs, reverse=True), errs


def test_lms_order_one_is_euler(gaussian):
    assert errors(gaussian, lab.rules.get("lms", order=1), (16,)) == pytest.approx(
        errors(gaussian, "euler", (16,)), rel=1e-12)


def test_lms_coefficients_integrate_polynomials_exactly():
    """With k nodes the coefficients integrate any polynomial of degree < k exactly."""
    nodes, a, b = [3.0, 4.5, 7.0, 10.0], 3.0, 1.2
    c = lab.rules.lms_coefficients(nodes, a, b)
    for p in ([1.0], [0.5, 2.0], [1.0, -1.0, 0.3], [0.0, 0.0, 0.0, 1.0]):
        poly = np.polynomial.Polynomial(p)
        exact = poly.integ()(b) - poly.integ()(a)
        assert sum(cj * poly(nj) for cj, nj in zip(c, nodes)) == pytest.approx(exact, rel=1e-12)
