"""Trainable denoisers: a network F inside EDM preconditioning, or a noise predictor.

Two networks, both ``F(x_in, c_noise) -> out``:

- :class:`MLP` for 2-D toys,
- :class:`UNet`, a diffusers ``UNet2DModel`` for 28 x 28 Fashion-MNIST (two
  downsamplings: 28 -> 14 -> 7). Its positional time embedding is built for
  timesteps in [0, 1000], so ``c_noise = ln(sigma) / 4`` enters as
  ``t = 250 (c_noise + 2)``, clamped to [0, 1000] (sigma from e^-8 to e^8).

Two ways to wrap them as denoisers, rebuilt from their ``config`` by ``lab.load``:

- :class:`EDM`: ``D = c_skip x + c_out F(c_in x, c_noise)`` (Karras et al. 2022).
  With ``sigma_input=False`` the network never sees the noise level: it gets a
  constant ``c_noise = 0``, while the preconditioning still uses sigma (Sun et al.
  2025, "Is Noise Conditioning Necessary?").
- :class:`NoisePredictor`: F predicts the added noise ``x - x0`` from ``x / rms(x)``
  (a function of x alone, so sigma appears nowhere; fast.ai lesson 9's model).
  ``D = x - rms(x) F(x / rms(x), 0)``, and ``rms(noise_hat)`` estimates sigma.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import compile_requested
from ..denoiser import Denoiser
from ..registry import register
from ..tensors import per_sample, rms

__all__ = ["MLP", "UNet", "EDM", "ConditionalEDM", "NoisePredictor", "NETWORKS", "rms"]


class MLP(nn.Module):
    """Residual MLP for low-dimensional data; c_noise enters through Fourier features."""

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, fourier: int = 32):
        super().__init__()
        self.config = {"dim": dim, "hidden": hidden, "depth": depth, "fourier": fourier}
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(64), fourier // 2)))
        self.inp = nn.Linear(dim + fourier, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden),
                          nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth))
        self.emb = nn.ModuleList(nn.Linear(fourier, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        angles = c_noise[:, None] * self.freqs[None]
        feats = torch.cat([angles.sin(), angles.cos()], dim=1).to(x.dtype)
        h = self.inp(torch.cat([x, feats], dim=1))
        for block, emb in zip(self.blocks, self.emb):
            h = h + block(h + emb(feats))
        return self.out(h)


FASHION_UNET = {
    "sample_size": 28, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
    "block_out_channels": [32, 64, 64], "norm_num_groups": 8, "attention_head_dim": 32,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
}


class UNet(nn.Module):
    """A diffusers ``UNet2DModel`` taking ``c_noise``; ``t = 250 (c_noise + 2)`` in [0, 1000]."""

    TIME_MAP = "t = clamp(250 * (c_noise + 2), 0, 1000), c_noise = ln(sigma) / 4"
    # Large batches run in slices of this many samples: on a CPU a slice's activations stay
    # in cache, so a large batch runs faster per sample in slices. GroupNorm is per sample,
    # so slicing does not change the maths.
    max_batch = 64

    def __init__(self, **unet_config):
        super().__init__()
        from diffusers import UNet2DModel

        self.config = {**FASHION_UNET, **unet_config}
        self.unet = UNet2DModel(**self.config)
        self._compiled = None

    def _slice(self, x: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        if compile_requested() and not torch.is_grad_enabled():
            if self._compiled is None:
                self._compiled = torch.compile(self.unet.forward, dynamic=False)
            return self._compiled(x, t, class_labels=labels).sample
        return self.unet(x, t, class_labels=labels).sample

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None
                ) -> Tensor:
        """``class_labels`` (B,) feed the UNet's class embedding (``num_class_embeds``)."""
        t = (250 * (c_noise + 2)).clamp(0, 1000).to(x.dtype)
        if x.shape[0] <= self.max_batch:
            return self._slice(x, t, class_labels)
        labels = (class_labels.split(self.max_batch) if class_labels is not None
                  else [None] * len(t.split(self.max_batch)))
        return torch.cat([self._slice(xs, ts, ls) for xs, ts, ls in
                          zip(x.split(self.max_batch), t.split(self.max_batch), labels)])


NETWORKS = {"mlp": MLP, "unet": UNet}


def _network(name: str, config: dict) -> nn.Module:
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {sorted(NETWORKS)}")
    return NETWORKS[name](**config)


def _version(x: Tensor) -> int | None:
    """In-place edits bump a tensor's version; inference tensors have none (nor edits)."""
    return None if x.is_inference() else x._version


@register("edm")
class EDM(Denoiser):
    """EDM-preconditioned network; ``sigma_input=False`` hides sigma from the network.

    ``sigma_data`` is the data's standard deviation (the preconditioning's); ``data_rms``,
    its root mean square ``sqrt(E x0^2)``, is what the ``"rms"`` noise-level estimate
    subtracts (``E rms(x)^2 = data_rms^2 + sigma^2``). It differs from ``sigma_data`` when
    the data's mean is not 0 (Fashion-MNIST: 0.83 against 0.71); None means the same.
    """

    def __init__(self, network: str = "unet", network_config: dict | None = None,
                 sigma_data: float = 0.5, sigma_input: bool = True,
                 sample_shape=(1, 28, 28), sigma_min: float = 0.002, sigma_max: float = 80.0,
                 data_rms: float | None = None):
        super().__init__()
        self.net = _network(network, network_config or {})
        self.network, self.sigma_data, self.sigma_input = network, float(sigma_data), sigma_input
        self.data_rms = float(data_rms) if data_rms is not None else self.sigma_data
        self.sample_shape = tuple(sample_shape)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    @property
    def config(self) -> dict:
        return {"network": self.network, "network_config": self.net.config,
                "sigma_data": self.sigma_data, "data_rms": self.data_rms,
                "sigma_input": self.sigma_input, "sample_shape": list(self.sample_shape),
                "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    @classmethod
    def from_config(cls, config: dict) -> EDM:
        return cls(**config)

    def preconditioning(self, sigma: Tensor):
        """``(c_skip, c_out, c_in, c_noise)`` for a ``(B,)`` sigma."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        c_noise = sigma.log() / 4 if self.sigma_input else torch.zeros_like(sigma)
        return c_skip, c_out, c_in, c_noise

    def raw(self, x: Tensor, sigma: Tensor, *labels: Tensor) -> Tensor:
        """The network's output F for the preconditioned input (``labels``: class ids of
        a conditional model)."""
        _, _, c_in, c_noise = self.preconditioning(sigma)
        return self.net(per_sample(c_in, x).to(x.dtype) * x, c_noise, *labels)

    def denoise(self, x: Tensor, sigma: Tensor, *labels: Tensor) -> Tensor:
        c_skip, c_out, _, _ = self.preconditioning(sigma)
        return (per_sample(c_skip, x).to(x.dtype) * x
                + per_sample(c_out, x).to(x.dtype) * self.raw(x, sigma, *labels))

    def training_loss(self, x0: Tensor, sigma: Tensor, noise: Tensor, perceptual=None,
                      perceptual_weight: float = 0.0) -> Tensor:
        """EDM-weighted MSE, ``(s^2 + sd^2) / (s sd)^2 |D(x0 + s n) - x0|^2`` per sample,
        plus ``perceptual_weight * perceptual(D, x0)`` when a feature distance is given;
        the batch mean."""
        denoised = self(x0 + per_sample(sigma, x0) * noise, sigma)
        return self.weighted_loss(denoised, x0, sigma, perceptual, perceptual_weight)

    def weighted_loss(self, denoised: Tensor, x0: Tensor, sigma: Tensor, perceptual=None,
                      perceptual_weight: float = 0.0) -> Tensor:
        """The loss of :meth:`training_loss` for a given ``denoised``."""
        s = per_sample(sigma, x0)
        sd = self.sigma_data
        weight = (s**2 + sd**2) / (s * sd) ** 2
        loss = (weight * (denoised - x0) ** 2).flatten(1).mean(1)
        if perceptual is not None:
            loss = loss + perceptual_weight * perceptual(denoised, x0)
        return loss.mean()


@register("edm-cond")
class ConditionalEDM(EDM):
    """A class-conditional EDM: the UNet's class embedding (``num_classes`` classes and
    one null class, id ``num_classes``) joins its time embedding. Called as
    ``cm(x, sigma, cond)`` with ``cond`` a ``(B,)`` long tensor of class ids, or None for
    the null class (the unconditional model classifier-free guidance needs); trained
    with each label dropped to the null class with probability ``label_dropout`` (Ho &
    Salimans 2022: 0.1). ``lab.guidance.cfg`` turns it into a Denoiser any rule drives.
    """

    conditional = True

    def __init__(self, num_classes: int = 10, label_dropout: float = 0.1, **edm_config):
        network_config = {**(edm_config.pop("network_config", None) or {}),
                          "num_class_embeds": num_classes + 1}
        super().__init__(network_config=network_config, **edm_config)
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        self.num_classes, self.label_dropout = int(num_classes), float(label_dropout)

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def config(self) -> dict:
        return {**super().config, "num_classes": self.num_classes,
                "label_dropout": self.label_dropout}

    def check_cond(self, cond, x: Tensor) -> Tensor:
        """``(B,)`` class ids on x's device; None becomes the null class."""
        batch = x.shape[0]
        if cond is None:
            return torch.full((batch,), self.null_class, dtype=torch.long, device=x.device)
        if not isinstance(cond, Tensor) or cond.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"cond must be a (B,) long tensor of class ids or None, got "
                            f"{cond!r:.60}")
        if cond.shape != (batch,):
            raise ValueError(f"cond has shape {tuple(cond.shape)}; it needs one class id per "
                             f"sample, shape ({batch},)")
        if bool(((cond < 0) | (cond >= self.num_classes)).any()):
            raise ValueError(f"class ids must be in 0..{self.num_classes - 1} (None for the "
                             f"null class), got {sorted(set(cond.tolist()))}")
        return cond.to(device=x.device, dtype=torch.long)

    def training_loss(self, x0: Tensor, sigma: Tensor, noise: Tensor, labels: Tensor,
                      generator: torch.Generator | None = None, perceptual=None,
                      perceptual_weight: float = 0.0) -> Tensor:
        """The EDM loss of ``D(x0 + s n, s, label)``, each label dropped to the null class
        with probability ``label_dropout`` (drawn from ``generator``, so a resumed run
        draws the same)."""
        drop = torch.rand(labels.shape, generator=generator).to(labels.device) < self.label_dropout
        labels = torch.where(drop, self.null_class, labels)  # ids users may not pass
        denoised = self.denoise(x0 + per_sample(sigma, x0) * noise, sigma, labels)
        return self.weighted_loss(denoised, x0, sigma, perceptual, perceptual_weight)


@register("noise")
class NoisePredictor(Denoiser):
    """Predicts the added noise from ``x / rms(x)``; sigma appears nowhere."""

    def __init__(self, network: str = "unet", network_config: dict | None = None,
                 sample_shape=(1, 28, 28), sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__()
        self.net = _network(network, network_config or {})
        self.network = network
        self._last = None
        self.sample_shape = tuple(sample_shape)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    @property
    def config(self) -> dict:
        return {"network": self.network, "network_config": self.net.config,
                "sample_shape": list(self.sample_shape), "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max}

    @classmethod
    def from_config(cls, config: dict) -> NoisePredictor:
        return cls(**config)

    def raw(self, x: Tensor) -> Tensor:
        """The network's output: the noise in units of ``rms(x)``."""
        scale = per_sample(rms(x), x)
        return self.net(x / scale, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))

    def noise(self, x: Tensor) -> Tensor:
        """The predicted added noise ``x - x0_hat``.

        The last prediction is reused when asked again for the same, unchanged ``x``:
        estimating sigma from it and then denoising costs one network call, not two.
        """
        cached = self._last
        if cached is not None and cached[0] is x and cached[1] == _version(x):
            return cached[2]
        out = per_sample(rms(x), x) * self.raw(x)
        if not torch.is_grad_enabled():
            self._last = (x, _version(x), out)
        return out

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return x - self.noise(x)

    def estimate_sigma(self, x: Tensor) -> Tensor:
        """The noise level read off the image: ``rms(noise_hat)``, ``(B,)``."""
        return rms(self.noise(x))

    def training_loss(self, x0: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
        """MSE of the predicted noise, in the units the network works in (``rms(x)``)."""
        s = per_sample(sigma, x0)
        x = x0 + s * noise
        target = s * noise / per_sample(rms(x), x)
        return ((self.raw(x) - target) ** 2).mean()
