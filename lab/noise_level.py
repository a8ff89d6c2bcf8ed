"""Reading the noise level off the image, for models that never see sigma.

``lab.sample(..., sigma_estimate=...)`` replaces the schedule's current sigma by an
estimate from ``x`` alone; the estimate feeds the denoiser's preconditioning and the
rule's step, and the rule still steps toward the schedule's next sigma. Estimators
map ``x`` to a per-sample ``(B,)`` sigma:

- ``"noise"``: ``rms(noise_hat)`` of a noise-predicting model (no extra model call:
  the prediction is reused by the step),
- ``"rms"``: ``sqrt(max(rms(x)^2 - sd^2, sigma_min^2))``, since ``E|x|^2 = sd^2 + sigma^2``
  per pixel for data of second moment ``sd^2``,
- a trained :class:`SigmaRegressor` (``lab.load("fashion-sigma")``), as fast.ai's
  course did, or any callable ``x -> (B,)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import zoo
from .registry import register
from .tensors import per_sample, rms

__all__ = ["SigmaRegressor", "RMSHeuristic", "resolve", "relative_error"]


class RMSHeuristic:
    """``sqrt(max(rms(x)^2 - sd^2, sigma_min^2))``: no model call at all. ``sd`` is the
    data's root mean square (not its standard deviation: ``E rms(x)^2 = E rms(x0)^2 +
    sigma^2``)."""

    def __init__(self, sd: float, sigma_min: float = 0.002):
        self.sd, self.sigma_min = float(sd), float(sigma_min)

    def __call__(self, x: Tensor) -> Tensor:
        return (rms(x) ** 2 - self.sd**2).clamp_min(self.sigma_min**2).sqrt()

    def __repr__(self):
        return f"rms(sd={self.sd:g})"


@register("sigma-regressor")
class SigmaRegressor(nn.Module):
    """A small CNN from ``x`` to ``log sigma``. It sees ``x / rms(x)`` and ``log rms(x)``,
    both functions of ``x`` alone, so one network covers sigma from 0.002 to 80."""

    def __init__(self, channels=(32, 64, 64), in_channels: int = 1):
        super().__init__()
        self.config = {"channels": list(channels), "in_channels": in_channels}
        layers, c_in = [], in_channels
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1, stride=2), nn.SiLU()]
            c_in = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(c_in + 1, 64), nn.SiLU(), nn.Linear(64, 1))

    @classmethod
    def from_config(cls, config: dict) -> SigmaRegressor:
        return cls(**config)

    def log_sigma(self, x: Tensor) -> Tensor:
        r = rms(x).clamp_min(1e-8)
        h = self.features(x / per_sample(r, x))
        # the head predicts log sigma relative to log rms(x), which is the answer at
        # high noise; the network only learns the correction
        return r.log() + self.head(torch.cat([h, r.log()[:, None]], dim=1))[:, 0]

    def forward(self, x: Tensor) -> Tensor:
        return self.log_sigma(x).exp()

    def training_loss(self, x0: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
        """Squared error of the predicted log sigma of a noisy image."""
        return ((self.log_sigma(x0 + per_sample(sigma, x0) * noise) - sigma.log()) ** 2).mean()


def resolve(spec, model) -> Callable[[Tensor], Tensor] | None:
    """An estimator from ``None`` or ``"schedule"`` (use the schedule), ``"noise"``,
    ``"rms"``, the zoo name of a shipped :class:`SigmaRegressor` (``"fashion-sigma"``), or a
    callable ``x -> (B,) sigma``."""
    if spec is None or spec == "schedule":
        return None
    if callable(spec):
        return spec
    if spec == "noise":
        if not hasattr(model, "estimate_sigma"):
            raise ValueError(f"sigma_estimate='noise' needs a noise-predicting model "
                             f"(lab.models.NoisePredictor); {type(model).__name__} has no "
                             "estimate_sigma. Use 'rms' or a trained regressor instead")
        return model.estimate_sigma
    if spec == "rms":
        sd = getattr(model, "data_rms", None)
        if sd is None:
            raise ValueError("sigma_estimate='rms' needs the data's scale: the model has no "
                             "data_rms; pass lab.noise_level.RMSHeuristic(sd=...) instead")
        return RMSHeuristic(sd, max(getattr(model, "sigma_min", 0.0), 1e-3))
    if isinstance(spec, str) and spec in zoo.available():
        return _shipped_regressor(spec)
    raise ValueError(f"sigma_estimate must be None, 'schedule', 'noise', 'rms', a shipped "
                     f"sigma regressor's name or a callable x -> (B,) sigma, got {spec!r}")


@functools.cache
def _shipped_regressor(name: str) -> SigmaRegressor:
    regressor = zoo.load(name)
    if not isinstance(regressor, SigmaRegressor):
        shipped = [n for n in zoo.available() if zoo.info(n)["kind"] == "sigma-regressor"]
        raise ValueError(f"sigma_estimate={name!r} names a {type(regressor).__name__}, not a "
                         "sigma regressor; shipped regressors: " + ", ".join(shipped))
    return regressor


@torch.no_grad()
def relative_error(estimator: Callable[[Tensor], Tensor], images: Tensor, sigmas,
                   seed: int = 0) -> list[float]:
    """Median of ``|sigma_hat / sigma - 1|`` over ``images`` noised at each of ``sigmas``.

    One noise draw per image (``lab.noise(..., seed)``), scaled to each sigma in turn, so
    the levels differ only in sigma. This is the figure the README reports and the tests
    pin for each estimator.
    """
    from .seeding import noise

    eps = noise(images.shape, seed=seed, dtype=images.dtype)
    return [float((estimator(images + s * eps) / s - 1).abs().median()) for s in map(float, sigmas)]


def clamp(sigma: Tensor, model) -> Tensor:
    """Keep an estimate inside the model's supported range (and positive)."""
    lo = max(getattr(model, "sigma_min", 0.0), 1e-6)
    hi = getattr(model, "sigma_max", math.inf)
    return sigma.clamp(lo, hi)
