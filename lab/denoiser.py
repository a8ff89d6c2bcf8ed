"""Denoisers in sigma-space: ``x = x0 + sigma * n`` and ``D(x, sigma) -> x0_hat``.

Every model in the lab, analytic or trained or imported from diffusers, is a
:class:`Denoiser`. The "gradient" a sampler follows is the predicted noise
``eps = (x - D(x, sigma)) / sigma = -sigma * grad_x log p(x; sigma)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .tensors import per_sample

__all__ = ["Denoiser", "CallCounter", "eps", "score", "as_sigma", "sigma_dtype", "NO_COND"]

#: The default of ``Denoiser.forward``'s ``cond``: no conditioning given (None is the
#: null class of a conditional model).
NO_COND = object()


def as_sigma(sigma, x: Tensor) -> Tensor:
    """Validate ``sigma`` and return it as a ``(B,)`` tensor of :func:`sigma_dtype`.

    Accepts a Python number, a 0-d tensor, a ``(B,)`` tensor, or per-sample values
    shaped ``(B, 1, ..., 1)`` as the sampling loop hands them to rules.
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
        if sigma.ndim and not (sigma.shape[0] == batch and sigma.numel() == batch):
            raise ValueError(f"sigma must be a number, a 0-d tensor or per-sample values of "
                             f"shape ({batch},) or ({batch}, 1, ...) matching the batch of x, "
                             f"got shape {tuple(sigma.shape)}")
        s = sigma.reshape(-1).to(dtype=sigma_dtype(x), device=x.device).expand(batch)
    elif isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        s = torch.full((batch,), float(sigma), dtype=sigma_dtype(x), device=x.device)
    else:
        raise TypeError(f"sigma must be a number or a tensor, got {type(sigma).__name__}")
    # The loop's sigmas are one value expanded over the batch (stride 0): check it once.
    lo, hi = (s[0],) * 2 if s.stride(0) == 0 else torch.aminmax(s)
    if not 0 < float(lo) <= float(hi) < math.inf:  # NaN fails every comparison
        raise ValueError(f"sigma must be positive and finite, got {_short(s)}; a denoiser is "
                         "never called at sigma = 0 (the last step of a schedule returns x0_hat)")
    return s


def sigma_dtype(x: Tensor) -> torch.dtype:
    """Sigma keeps at least float32 precision, even for half-precision samples."""
    return x.dtype if x.dtype == torch.float64 else torch.float32


def _short(t: Tensor) -> str:
    vals = t.flatten()[:4].tolist()
    return ", ".join(f"{v:.4g}" for v in vals) + (", ..." if t.numel() > 4 else "")


def _expand(s: Tensor, x: Tensor) -> Tensor:
    """A ``(B,)`` sigma shaped to broadcast against ``x``, in ``x``'s dtype."""
    return per_sample(s, x).to(x.dtype)


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
    #: Class-conditional models are called ``model(x, sigma, cond)`` and implement
    #: ``denoise(x, sigma, cond)``; see :meth:`check_cond`.
    conditional: bool = False

    def forward(self, x: Tensor, sigma, cond=NO_COND) -> Tensor:
        s = as_sigma(sigma, x)
        if self.sample_shape is not None and tuple(x.shape[1:]) != tuple(self.sample_shape):
            raise ValueError(f"{type(self).__name__} expects samples of shape (B, "
                             f"{', '.join(map(str, self.sample_shape))}), got {tuple(x.shape)}")
        if not self.conditional:
            if cond is not NO_COND:
                raise TypeError(f"{type(self).__name__} is unconditional: call it as "
                                "model(x, sigma), without a cond")
            return self.denoise(x, s)
        if cond is NO_COND:
            raise TypeError(f"{type(self).__name__} is class-conditional: call it as model(x, "
                            "sigma, cond) with cond a (B,) tensor of class ids, or None for the "
                            "null class; to sample, wrap it: lab.guidance.cfg(model, cond, scale)")
        return self.denoise(x, s, self.check_cond(cond, x))

    def check_cond(self, cond, x: Tensor) -> Tensor:  # pragma: no cover - conditional only
        """The validated conditioning a conditional model's ``denoise`` receives."""
        raise NotImplementedError

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
