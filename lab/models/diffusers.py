"""diffusers VP models as sigma-space denoisers.

A VP sample ``z = sqrt(abar) x0 + sqrt(1 - abar) n`` is ``x / sqrt(1 + sigma^2)`` for the
sigma-space ``x = x0 + sigma n`` with ``sigma = sqrt((1 - abar) / abar)``. The network
sees that scaled input and a fractional timestep found from sigma in the model's own
table, so samplers never see alphas, betas or timesteps.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..schedules import vp_sigmas
from ..tensors import per_sample

__all__ = ["DiffusersDenoiser", "from_diffusers", "TIMESTEP_MAPPINGS"]

#: How a sigma becomes the network's timestep:
#: "log"    interpolate t linearly in log sigma (diffusers' ``_sigma_to_t``; the default),
#: "linear" interpolate t linearly in sigma (the inverse of Euler/LMS ``set_timesteps``),
#: "round"  "log", rounded to a whole timestep (DPMSolverMultistep with Karras sigmas).
TIMESTEP_MAPPINGS = ("log", "linear", "round")


_LAB = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TORCH = os.path.dirname(os.path.abspath(torch.__file__))


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside lab and torch
    (the user's ``model(x, sigma)`` or ``lab.sample(...)`` line)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith((_LAB, _TORCH)):
        frame, level = frame.f_back, level + 1
    return level


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """``np.interp`` in torch for ascending ``xp``, clamped at the ends."""
    x = x.clamp(xp[0], xp[-1])
    i = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    lo, hi = xp[i - 1], xp[i]
    w = (x - lo) / (hi - lo)
    return fp[i - 1] + w * (fp[i] - fp[i - 1])


class DiffusersDenoiser(Denoiser):
    """Wraps a diffusers UNet (epsilon or v prediction) trained on a VP schedule.

    ``D = x - sigma * eps_net(x / sqrt(1 + sigma^2), t)`` for epsilon models;
    ``D = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) * v_net(...)`` for v models.

    For a sigma outside the table's range ``[sigma_min, sigma_max]`` the timestep is
    clamped to the table's nearest end, with a warning given once per model; the input
    scaling and the output formula keep the true sigma, as diffusers' own schedulers
    (``_sigma_to_t`` clips ``t``) and k-diffusion's ``DiscreteEpsDDPMDenoiser`` do. (Also
    clamping sigma there would give ``D = x - sigma_min * eps`` at a smaller sigma and
    feed the network a wrongly scaled input at a larger one.)
    """

    def __init__(self, unet, alphas_cumprod, prediction_type: str = "epsilon",
                 timestep: str = "log"):
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got "
                             f"{prediction_type!r} (sample prediction is not supported)")
        if timestep not in TIMESTEP_MAPPINGS:
            raise ValueError(f"timestep must be one of {TIMESTEP_MAPPINGS}, got {timestep!r}")
        self.unet = unet
        self.prediction_type = prediction_type
        self.timestep = timestep
        table = vp_sigmas(alphas_cumprod)
        self.register_buffer("table", table)
        self.register_buffer("log_table", table.log())
        self.sigma_min, self.sigma_max = float(table[0]), float(table[-1])
        self._warned = False
        config = getattr(unet, "config", None)
        if config is not None and hasattr(config, "in_channels") and hasattr(config, "sample_size"):
            size = config.sample_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            self.sample_shape = (config.in_channels, *size)

    def timesteps(self, sigma: Tensor) -> Tensor:
        """The (fractional) timestep the network sees for each sigma, clamped to the table."""
        steps = torch.arange(len(self.table), dtype=torch.float64, device=sigma.device)
        s = sigma.to(torch.float64)
        if self.timestep == "linear":
            return _interp(s, self.table, steps)
        t = _interp(s.log(), self.log_table, steps)
        return t.round() if self.timestep == "round" else t

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        outside = (sigma < self.sigma_min * (1 - 1e-6)) | (sigma > self.sigma_max * (1 + 1e-6))
        if not self._warned and bool(outside.any()):
            bad = float(sigma[outside][0])
            warnings.warn(f"sigma {bad:.4g} is outside the model's table [{self.sigma_min:.4g}, "
                          f"{self.sigma_max:.4g}]: its timestep is clamped to the table's end "
                          "(said once per model)", stacklevel=_caller_stacklevel())
            self._warned = True
        s = per_sample(sigma, x).to(x.dtype)
        scale = 1 / (1 + s**2).sqrt()
        # the network's dtype (a parameter-free network gets x's)
        dtype = getattr(next(self.unet.parameters(), None), "dtype", x.dtype)
        # float32 timesteps whatever the network's dtype, as diffusers' schedulers pass
        # them: a half-precision t would round 999.3 to 999.5.
        t = self.timesteps(sigma).to(torch.float32)
        out = self.unet((x * scale).to(dtype), t)
        out = (out.sample if hasattr(out, "sample") else out[0]).to(x.dtype)
        if self.prediction_type == "epsilon":
            return x - s * out
        return x * scale**2 - s * scale * out


def from_diffusers(unet, scheduler, timestep: str = "log",
                   prediction_type: str | None = None) -> DiffusersDenoiser:
    """A sigma-space denoiser from a diffusers UNet and any of its schedulers.

    The scheduler supplies ``alphas_cumprod`` and ``prediction_type``; ``timestep`` picks
    the sigma-to-timestep map (see :data:`TIMESTEP_MAPPINGS`).
    """
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise TypeError(f"{type(scheduler).__name__} has no alphas_cumprod; pass a diffusers "
                        "VP scheduler (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, ...)")
    abar = torch.as_tensor(np.asarray(abar, dtype=np.float64))
    kind = prediction_type or getattr(scheduler.config, "prediction_type", "epsilon")
    return DiffusersDenoiser(unet, abar, kind, timestep)
