"""Denoisers in sigma-space: ``x = x0 + sigma * n`` and ``D(x, sigma) -> x0_hat``.

Every model in the lab, analytic or trained or imported from diffusers, is a
:class:`Denoiser`. The "gradient" a sampler follows is the predicted noise
``eps = (x - D(x, sigma)) / sigma = -sigma * grad_x log p(x; sigma)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["Denoiser", "CallCounter", "eps", "score", "as_sigma"]


def as_sigma(sigma, x: Tensor) -> Tensor:
    """Validate ``sigma`` and return it as a ``(B,)`` tensor of ``x``'s dtype and device.

    Accepts a Python number, a 0-d tensor or a ``(B,)`` tensor.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}; "
                        "convert it with x.float()")
    if x.ndim < 2:
        raise ValueError(f"x must have a batch dimension, shape (B, ...), got shape "
                         f"{tuple(x.shape)}; use x[None] for a single sample")
    batch = x.shape[0]
    if isinstance(sigma, Tensor):
        if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.shape[0] != batch):
            raise ValueError(f"sigma must be a number, a 0-d tensor or a ({batch},) tensor "
                             f"matching the batch of x, got shape {tuple(sigma.shape)}")
        s = sigma.to(dtype=_sigma_dtype(x), device=x.device).expand(batch)
    elif isinstance(sigma, (int, float)):
        s = torch.full((batch,), float(sigma), dtype=_sigma_dtype(x), device=x.device)
    else:
        raise TypeError(f"sigma must be a number or a tensor, got {type(sigma).__name__}")
    if not bool(torch.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"sigma must be positive and finite, got {_short(s)}; a denoiser is "
                         "never called at sigma = 0 (the last step of a schedule returns x0_hat)")
    return s


def _sigma_dtype(x: Tensor) -> torch.dtype:
    """Sigma keeps at least float32 precision, even for half-precision samples."""
    return x.dtype if x.dtype == torch.float64 else torch.float32


def _short(t: Tensor) -> str:
    vals = t.flatten()[:4].tolist()
    return ", ".join(f"{v:.4g}" for v in vals) + (", ..." if t.numel() > 4 else "")


def _expand(s: Tensor, x: Tensor) -> Tensor:
    """A ``(B,)`` sigma shaped to broadcast against ``x``, in ``x``'s dtype."""
    return s.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


class Denoiser(nn.Module):
    """Base class: ``forward(x, sigma)`` validates, then calls :meth:`denoise`.

    Subclasses implement ``denoise(x, sigma)`` with ``sigma`` a validated ``(B,)``
    tensor. ``sigma_min`` / ``sigma_max`` give the range the model supports
    (``0`` / ``inf`` for exact models). ``sample_shape``, when set, is the shape of
    one sample, checked on every call.
    """

    sigma_min: float = 0.0
    sigma_max: float = math.inf
    sample_shape: tuple[int, ...] | None = None

    def forward(self, x: Tensor, sigma) -> Tensor:
        s = as_sigma(sigma, x)
        if self.sample_shape is not None and tuple(x.shape[1:]) != tuple(self.sample_shape):
            raise ValueError(f"{type(self).__name__} expects samples of shape (B, "
                             f"{', '.join(map(str, self.sample_shape))}), got {tuple(x.shape)}")
        return self.denoise(x, s)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def eps(self, x: Tensor, sigma) -> Tensor:
        """The predicted noise, the sampler's gradient: ``(x - D(x, sigma)) / sigma``."""
        return eps(self, x, sigma)

    def score(self, x: Tensor, sigma) -> Tensor:
        """``grad_x log p(x; sigma) = (D(x, sigma) - x) / sigma^2``."""
        return score(self, x, sigma)


def eps(model, x: Tensor, sigma) -> Tensor:
    """Predicted noise of any denoiser callable ``model(x, sigma)``."""
    s = _expand(as_sigma(sigma, x), x)
    return (x - model(x, sigma)) / s


def score(model, x: Tensor, sigma) -> Tensor:
    """Score of any denoiser callable: ``-eps / sigma``."""
    s = _expand(as_sigma(sigma, x), x)
    return (model(x, sigma) - x) / s**2


class CallCounter:
    """Wraps a denoiser and counts its calls (the NFE). Rules only ever see this."""

    def __init__(self, model):
        self.model = model
        self.calls = 0

    def __call__(self, x: Tensor, sigma) -> Tensor:
        self.calls += 1
        return self.model(x, sigma)
