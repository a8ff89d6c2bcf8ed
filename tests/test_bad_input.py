"""Bad input gets a ValueError or TypeError that names the problem."""

import pytest
import torch

import lab
from lab import rules, schedules


class NaNAtStep3(lab.Denoiser):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def denoise(self, x, sigma):
        self.calls += 1
        return x * float("nan") if self.calls == 4 else x * 0


@pytest.mark.parametrize("x,sigma,err,match", [
    (torch.zeros(2, 2, dtype=torch.int64), 1.0, TypeError, "floating-point"),
    (torch.zeros(2), 1.0, ValueError, "batch dimension"),
    (torch.zeros(2, 2), 0.0, ValueError, "positive and finite"),
    (torch.zeros(2, 2), -1.0, ValueError, "positive and finite"),
    (torch.zeros(2, 2), float("nan"), ValueError, "positive and finite"),
    (torch.zeros(2, 2), float("inf"), ValueError, "positive and finite"),
    (torch.zeros(2, 2), torch.ones(3), ValueError, "batch"),
    (torch.zeros(2, 2), torch.ones(2, 2), ValueError, "0-d tensor"),
    (torch.zeros(2, 2), torch.ones(1, 2), ValueError, "matching the batch"),
    (torch.zeros(2, 2), "1.0", TypeError, "number or a tensor"),
    (torch.zeros(2, 3), 1.0, ValueError, "expects samples of shape"),
])
def test_denoiser_validation(mixture, x, sigma, err, match):
    with pytest.raises(err, match=match):
        mixture(x, sigma)


def test_sigma_forms_agree(mixture):
    x = lab.noise((3, 2), seed=0, dtype=torch.float64)
    a = mixture(x, 0.5)
    assert torch.equal(a, mixture(x, torch.tensor(0.5)))
    assert torch.equal(a, mixture(x, torch.full((3,), 0.5)))
    assert torch.equal(a, mixture(x, torch.full((3, 1), 0.5)))  # what the loop hands rules


@pytest.mark.parametrize("call,match", [
    (lambda: schedules.karras(0), "positive integer"),
    (lambda: schedules.karras(2.5), "positive integer"),
    (lambda: schedules.karras(10, sigma_min=1.0, sigma_max=0.5), "below sigma_max"),
    (lambda: schedules.karras(10, sigma_min=-1.0), "sigma_min"),
    (lambda: schedules.exponential(10, sigma_max=float("inf")), "sigma_max"),
    (lambda: schedules.linear(10, sigma_min=float("nan")), "sigma_min"),
    (lambda: schedules.karras(10, rho=0.0), "rho"),
    (lambda: schedules.validate(torch.tensor([3.0, 4.0, 0.0])), "strictly descending"),
    (lambda: schedules.validate(torch.tensor([3.0, 1.0, 1.0, 0.0])), "strictly descending"),
    (lambda: schedules.validate(torch.tensor([3.0, float("nan"), 0.0])), "NaN"),
    (lambda: schedules.validate(torch.tensor([3.0, 1.0, -1.0])), ">= 0"),
    (lambda: schedules.validate(torch.tensor([3.0])), "at least 2"),
    (lambda: schedules.from_alphas_cumprod(torch.linspace(0.99, 0.01, 100), 101), r"\[1, 100\]"),
    (lambda: schedules.from_alphas_cumprod(torch.linspace(0.01, 0.99, 100), 10), "decrease"),
    (lambda: schedules.from_alphas_cumprod(torch.linspace(0.99, 0.0, 100), 10), r"\(0, 1\]"),
    (lambda: schedules.from_alphas_cumprod(torch.linspace(0.99, 0.01, 100), 10, "middle"),
     "spacing"),
])
def test_schedule_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.parametrize("call,err,match", [
    (lambda: rules.get("sgd"), ValueError, "unknown rule 'sgd'; available"),
    (lambda: rules.get("momentum", beta=1.5), ValueError, "beta = 1.5 is outside"),
    (lambda: rules.get("momentum", momentum=0.9), TypeError, "unknown parameter"),
    (lambda: rules.get("lms", order=5), ValueError, "order"),
    (lambda: rules.get("lms", order=2.5), ValueError, "integer"),
    (lambda: rules.get("adam", betas=(0.9,)), ValueError, "tuple of 2"),
    (lambda: rules.get("ancestral", eta=-0.1), ValueError, "eta"),
    (lambda: rules.ancestral(rules.ancestral()), ValueError, "deterministic"),
    (lambda: rules.optim(torch.optim.LBFGS), ValueError, "closure"),
    (lambda: rules.optim("NoSuchOpt"), ValueError, "optimizer must be one of .*Adam"),
    (lambda: rules.get("optim", optimizer="LBFGS"), ValueError, "closure"),
    (lambda: rules.optim(torch.optim.SGD, momentum=-1.0), ValueError, "SGD"),
    (lambda: rules.optim(dict), TypeError, "Optimizer class"),
    (lambda: rules.get("extrapolate", gamma=4.5), ValueError, r"gamma = 4.5 is outside"),
    (lambda: rules.get("ghvb", r=0.0), ValueError, r"r = 0.0 is outside"),
    (lambda: rules.get("ghvb", r=5), ValueError, r"r = 5 is outside"),
    (lambda: rules.get("adam", normalize="max"), ValueError, "normalize must be one of"),
    (lambda: rules.heavy_ball("rk4"), ValueError, "no single direction"),
])
def test_rule_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_sample_errors(mixture):
    sig = schedules.karras(5)
    x = lab.noise((2, 2))
    with pytest.raises(ValueError, match="record"):
        lab.sample(mixture, x * 80, sig, "euler", record="some")
    with pytest.raises(ValueError, match="strictly descending"):
        lab.sample(mixture, x, sig.flip(0), "euler")
    with pytest.raises(TypeError, match="Rule or a registry name"):
        lab.sample(mixture, x, sig, 3)
    with pytest.raises(ValueError, match="NaN or Inf"):
        lab.sample(mixture, x * float("nan"), sig, "euler")


@pytest.mark.parametrize("call,err,match", [
    (lambda m, sig: lab.sample(m, [[0.0, 1.0]], sig, "euler"), TypeError, "torch.Tensor"),
    (lambda m, sig: lab.sample(m, torch.zeros(0, 2), sig, "euler"), ValueError, "empty"),
    (lambda m, sig: lab.sample(m, torch.zeros(3, 0), sig, "euler"), ValueError, "empty"),
    (lambda m, sig: lab.sample(m, torch.zeros(2, 2), None, "euler"), TypeError,
     "sigmas must be a 1-d tensor or a sequence"),
    (lambda m, sig: lab.steps(m, torch.zeros(2, 2), "karras", "euler"), TypeError,
     "sigmas must be"),
    (lambda m, sig: lab.sample(m, torch.zeros(2, 2), sig, "euler", seed=-1), ValueError,
     "seed"),
    (lambda m, sig: lab.noise((0, 2)), ValueError, "at least 1"),
    (lambda m, sig: lab.noise((-1, 2)), ValueError, "at least 1"),
    (lambda m, sig: lab.noise(5), TypeError, "sequence of sizes"),
])
def test_bad_sampling_input_is_named(mixture, call, err, match):
    """Each of these used to fail deep inside torch (AttributeError, a reshape or stack
    RuntimeError, "must be real number"); now the error names the argument."""
    with pytest.raises(err, match=match):
        call(mixture, schedules.karras(5))


def test_nan_mid_trajectory_names_rule_step_and_sigma():
    sig = schedules.karras(8)
    with pytest.raises(lab.NonFiniteError, match=r"rule euler .* at step 3 \(sigma [0-9.]+ ->"):
        lab.sample(NaNAtStep3(), lab.noise((2, 2)) * 80, sig, "euler")
