"""Per-sample random streams.

Sample k of a batch draws from a generator seeded by hashing ``(seed, k)`` into 32
bits with numpy's ``SeedSequence``. So sample k is the same whatever the batch size,
and seeds 0 and 1 share nothing. (``seed + k`` would make them share all but one
sample; torch's CPU generator keeps only the low 32 bits of a seed.)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["noise", "NoiseSource", "derive_seed", "random_seed", "CALIBRATION_SEED"]

#: Noise for calibrating (tuned schedules, tuned rules) comes from this seed, which no
#: study or test samples from: a tuned configuration is never scored on its own noise.
CALIBRATION_SEED = 7_000_003


def derive_seed(*key: int) -> int:
    """A 32-bit generator seed from a tuple of non-negative integers."""
    for k in key:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"seeds must be non-negative integers, got {k!r}")
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


def random_seed() -> int:
    """A fresh seed from torch's global generator, for runs not given one (then recorded,
    so the run can be repeated)."""
    return int(torch.randint(0, 2**31 - 1, (1,)))


def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*key))


def noise(shape, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Standard normal ``(B, ...)`` noise; sample k depends on ``(seed, k)`` alone."""
    try:
        shape = tuple(int(n) for n in shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of sizes, e.g. (16, 1, 28, 28), got "
                        f"{shape!r}") from None
    if len(shape) < 1:
        raise ValueError("shape needs a batch dimension, e.g. (16, 1, 28, 28)")
    if min(shape) < 1:
        raise ValueError(f"every size in shape must be at least 1, got {shape}; the first is "
                         "the batch (number of samples)")
    out = torch.stack([torch.randn(shape[1:], generator=_generator(seed, k), dtype=dtype)
                       for k in range(shape[0])])
    return out.to(device) if device is not None else out


class NoiseSource:
    """The noise a stochastic rule draws during sampling, one stream per sample.

    The stream of sample k is keyed by ``(seed, k, 1)``, disjoint from the initial
    noise ``lab.noise`` draws for ``(seed, k)``. Calling it returns fresh noise
    shaped like ``x``.
    """

    STREAM = 1

    def __init__(self, seed: int, batch: int):
        self.seed, self.batch = seed, batch
        self._generators: list[torch.Generator] | None = None

    @property
    def generators(self) -> list[torch.Generator]:
        # Made on the first draw: deterministic rules never pay for B generators.
        if self._generators is None:
            self._generators = [_generator(self.seed, k, self.STREAM) for k in range(self.batch)]
        return self._generators

    def __call__(self, like: Tensor) -> Tensor:
        if like.shape[0] != self.batch:
            raise ValueError(f"noise source made for a batch of {self.batch}, "
                             f"asked for {like.shape[0]}")
        # Half-precision samples get float32 noise rounded: the same stream at every dtype.
        dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
        z = torch.stack([torch.randn(like.shape[1:], generator=g, dtype=dtype)
                         for g in self.generators])
        return z.to(device=like.device, dtype=like.dtype)
