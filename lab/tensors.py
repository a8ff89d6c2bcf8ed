"""Small tensor helpers every floor of the lab shares (imports nothing from lab)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["per_sample", "rms"]


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Per-sample values ``(B,)`` shaped ``(B, 1, ..., 1)`` to broadcast against ``like``."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def rms(x: Tensor) -> Tensor:
    """Per-sample root mean square, ``(B,)``."""
    return x.flatten(1).pow(2).mean(1).sqrt()
