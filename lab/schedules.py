"""Sigma schedules: float64 tensors, strictly descending, ending in exactly 0.

``n`` is the number of steps. With ``append_zero=False`` the schedule stops at
``sigma_min`` instead (``n`` values, ``n - 1`` steps), as convergence tests want.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["karras", "exponential", "linear", "from_alphas_cumprod", "validate"]


def _check_range(n, sigma_min, sigma_max, append_zero):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (the number of steps) must be a positive integer, got {n!r}")
    if not append_zero and n < 2:
        raise ValueError("a schedule without the final 0 needs n >= 2 values")
    for name, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    if not sigma_min < sigma_max:
        raise ValueError(f"sigma_min ({sigma_min}) must be below sigma_max ({sigma_max})")


def _finish(values: Tensor, append_zero: bool, ends: tuple[float, float] | None = None
            ) -> Tensor:
    """float64, the ends pinned exactly to ``(sigma_max, sigma_min)`` (pow and exp round
    them by an ulp or so), then the final 0."""
    values = values.to(torch.float64)
    if ends is not None:
        values[0] = ends[0]
        if values.numel() > 1:
            values[-1] = ends[1]
    if append_zero:
        values = torch.cat([values, values.new_zeros(1)])
    return validate(values)


def _ramp(n: int) -> Tensor:
    """Positions 0..1 of the n nonzero sigmas (a single value is sigma_max)."""
    return torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else \
        torch.zeros(1, dtype=torch.float64)


def karras(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
           append_zero: bool = True) -> Tensor:
    """EDM schedule (Karras et al. 2022, eq. 5): uniform in ``sigma^(1/rho)``."""
    _check_range(n, sigma_min, sigma_max, append_zero)
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be positive and finite, got {rho!r}")
    ramp = _ramp(n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((hi + ramp * (lo - hi)) ** rho, append_zero, (sigma_max, sigma_min))


def exponential(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                append_zero: bool = True) -> Tensor:
    """Uniform in log sigma (k-diffusion ``get_sigmas_exponential``)."""
    _check_range(n, sigma_min, sigma_max, append_zero)
    ramp = _ramp(n)
    return _finish(torch.exp(math.log(sigma_max) + ramp * math.log(sigma_min / sigma_max)),
                   append_zero, (sigma_max, sigma_min))


def linear(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
           append_zero: bool = True) -> Tensor:
    """Uniform in sigma."""
    _check_range(n, sigma_min, sigma_max, append_zero)
    ramp = _ramp(n)
    return _finish(sigma_max + ramp * (sigma_min - sigma_max), append_zero,
                   (sigma_max, sigma_min))


def vp_sigmas(alphas_cumprod) -> Tensor:
    """``sigma_t = sqrt((1 - abar_t) / abar_t)`` for a VP model's table, ascending in t."""
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if abar.ndim != 1 or abar.numel() < 2:
        raise ValueError("alphas_cumprod must be a 1-d table with at least 2 entries")
    if not bool(torch.isfinite(abar).all() and (abar > 0).all() and (abar <= 1).all()):
        raise ValueError("alphas_cumprod must lie in (0, 1]")
    if not bool((abar[1:] < abar[:-1]).all()):
        raise ValueError("alphas_cumprod must decrease strictly with the timestep")
    return ((1 - abar) / abar).sqrt()


def diffusers_timesteps(num_train: int, n: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """Timesteps, descending, as ``EulerDiscreteScheduler.set_timesteps`` computes them."""
    if spacing == "linspace":
        return np.linspace(0, num_train - 1, n, dtype=np.float64)[::-1].copy()
    if spacing == "leading":
        ratio = num_train // n
        return (np.arange(0, n) * ratio).round()[::-1].astype(np.float64) + steps_offset
    if spacing == "trailing":
        ratio = num_train / n
        return np.arange(num_train, 0, -ratio).round().astype(np.float64) - 1
    raise ValueError(f"spacing must be 'linspace', 'leading' or 'trailing', got {spacing!r}")


def from_alphas_cumprod(alphas_cumprod, n: int, spacing: str = "linspace",
                        steps_offset: int = 0) -> Tensor:
    """The sigmas diffusers' ``EulerDiscreteScheduler`` samples a VP model at, then 0.

    Follows its rounding: ``linspace`` keeps fractional timesteps and interpolates
    sigma linearly in t; ``leading`` and ``trailing`` round to whole timesteps.
    """
    table = vp_sigmas(alphas_cumprod)
    num_train = table.numel()
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= num_train:
        raise ValueError(f"n must be an integer in [1, {num_train}], got {n!r}")
    t = diffusers_timesteps(num_train, int(n), spacing, steps_offset)
    if t.max() > num_train - 1 or t.min() < 0:
        raise ValueError(f"steps_offset {steps_offset} pushes timesteps outside "
                         f"[0, {num_train - 1}]")
    sig = np.interp(t, np.arange(num_train), table.numpy())
    return _finish(torch.from_numpy(sig), append_zero=True)


def validate(sigmas) -> Tensor:
    """Check a schedule: 1-d, finite, strictly descending, >= 0, only the last may be 0."""
    if not isinstance(sigmas, Tensor):
        try:
            sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"sigmas must be a 1-d tensor or a sequence of numbers, descending "
                            f"and ending in 0 (e.g. lab.schedules.karras(20)), got "
                            f"{type(sigmas).__name__}") from None
    if not sigmas.is_floating_point():
        raise TypeError(f"sigmas must be floating point, got dtype {sigmas.dtype}")
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-d tensor with at least 2 values (one step), "
                         f"got shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas).all()):
        raise ValueError("sigmas contain NaN or Inf")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        i = int(torch.nonzero(sigmas[1:] >= sigmas[:-1])[0])
        raise ValueError(f"sigmas must be strictly descending; sigmas[{i + 1}] = "
                         f"{float(sigmas[i + 1]):.6g} >= sigmas[{i}] = {float(sigmas[i]):.6g}")
    if float(sigmas[-1]) < 0:
        raise ValueError(f"sigmas must be >= 0, the last is {float(sigmas[-1]):.6g}")
    return sigmas

