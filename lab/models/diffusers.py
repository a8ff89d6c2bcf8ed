"""diffusers VP models as sigma-space denoisers.

A VP sample ``z = sqrt(abar) x0 + sqrt(1 - abar) n`` is ``x / sqrt(1 + sigma^2)`` for the
sigma-space ``x = x0 + sigma n`` with ``sigma = sqrt((1 - abar) / abar)``. The network
sees that scaled input and a fractional timestep found from sigma in the model's own
table, so samplers never see alphas, betas or timesteps.

A conditional UNet (``UNet2DConditionModel``, the latent UNet of Stable Diffusion) becomes
a conditional denoiser ``cm(x, sigma, cond)``: ``cond`` is the text encoder's output
(``encoder_hidden_states``, shape ``(B, L, D)`` or ``(1, L, D)``), ``None`` the negative
(unconditional) embedding given to :func:`from_diffusers`. Sample it through
``lab.guidance.cfg(cm, prompt_embeds, scale, negative=...)``, or bind the prompt with
``from_diffusers(unet, scheduler, encoder_hidden_states=prompt_embeds)`` for a plain
``model(x, sigma)`` (guidance scale 1).

The two formulas every VP adapter shares (the network's input and its output turned into
``x0_hat``) are :func:`vp_scale` and :func:`x0_from_prediction`; the sigma-to-timestep
map is :func:`sigma_to_timestep`. :class:`lab.LabScheduler` uses the same three.
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

__all__ = ["DiffusersDenoiser", "from_diffusers", "TIMESTEP_MAPPINGS", "PREDICTION_TYPES",
           "tiny_stable_diffusion",
           "sigma_to_timestep", "vp_scale", "x0_from_prediction"]

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


#: What a VP network may predict: the added noise, the velocity, or the clean sample.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def sigma_to_timestep(sigma: Tensor, table: Tensor, mapping: str = "log") -> Tensor:
    """The (fractional, float64) timestep of each sigma in a VP model's ascending sigma
    ``table`` (one per training timestep), clamped to the table; ``mapping`` is one of
    :data:`TIMESTEP_MAPPINGS`."""
    if mapping not in TIMESTEP_MAPPINGS:
        raise ValueError(f"timestep must be one of {TIMESTEP_MAPPINGS}, got {mapping!r}")
    table = table.to(device=sigma.device, dtype=torch.float64)
    steps = torch.arange(len(table), dtype=torch.float64, device=sigma.device)
    s = sigma.to(torch.float64)
    if mapping == "linear":
        return _interp(s, table, steps)
    t = _interp(s.log(), table.log(), steps)
    return t.round() if mapping == "round" else t


def vp_scale(sigma: Tensor) -> Tensor:
    """``1 / sqrt(1 + sigma^2)``: the VP sample is ``x * vp_scale(sigma)``."""
    return 1 / (1 + sigma**2).sqrt()


def x0_from_prediction(x: Tensor, sigma: Tensor, output: Tensor, prediction_type: str) -> Tensor:
    """``x0_hat`` from a VP network's ``output`` on ``x * vp_scale(sigma)`` (``x`` in
    sigma-space, ``sigma`` shaped to broadcast against it): ``x - sigma eps`` for epsilon,
    ``x / (1 + s^2) - s / sqrt(1 + s^2) v`` for v, the output itself for sample."""
    if prediction_type == "epsilon":
        return x - sigma * output
    if prediction_type == "v_prediction":
        scale = vp_scale(sigma)
        return x * scale**2 - sigma * scale * output
    if prediction_type == "sample":
        return output
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got "
                     f"{prediction_type!r}")


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

    A UNet that takes ``encoder_hidden_states`` (its config has ``cross_attention_dim``)
    makes a conditional denoiser, called ``cm(x, sigma, cond)`` (see the module
    docstring); ``negative`` is the embedding ``cond=None`` stands for.
    """

    def __init__(self, unet, alphas_cumprod, prediction_type: str = "epsilon",
                 timestep: str = "log", negative: Tensor | None = None):
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
        self.sigma_min, self.sigma_max = float(table[0]), float(table[-1])
        self._warned = False
        config = getattr(unet, "config", None)
        if config is not None and hasattr(config, "in_channels") and hasattr(config, "sample_size"):
            size = config.sample_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            self.sample_shape = (config.in_channels, *size)
        self.conditional = getattr(config, "cross_attention_dim", None) is not None
        if negative is not None and not self.conditional:
            raise TypeError(f"{type(unet).__name__} takes no encoder_hidden_states: a negative "
                            "embedding is for conditional UNets (UNet2DConditionModel)")
        self.negative = None if negative is None else self._check_embedding(negative, "negative")

    def _check_embedding(self, cond, name: str = "cond") -> Tensor:
        if not isinstance(cond, Tensor) or not cond.is_floating_point() or cond.ndim != 3:
            raise TypeError(f"{name} must be the text encoder's output, a float tensor of shape "
                            f"(B, tokens, {self.unet.config.cross_attention_dim}) (diffusers' "
                            f"prompt_embeds), got {cond!r:.80}")
        return cond

    def check_cond(self, cond, x: Tensor) -> Tensor:
        """``(B, L, D)`` embeddings for ``x``'s batch: ``cond`` (batch B or 1), or the
        negative embedding for None."""
        if cond is None:
            if self.negative is None:
                raise ValueError("cond=None stands for the negative (unconditional) embedding, "
                                 "and none was given: pass negative_encoder_hidden_states= "
                                 "(the empty prompt's embedding) to lab.models.from_diffusers")
            cond = self.negative
        cond = self._check_embedding(cond)
        batch = x.shape[0]
        if cond.shape[0] not in (1, batch):
            raise ValueError(f"cond has a batch of {cond.shape[0]}; it needs one embedding per "
                             f"sample ({batch}) or one for all")
        return cond.to(x.device).expand(batch, *cond.shape[1:])

    def timesteps(self, sigma: Tensor) -> Tensor:
        """The (fractional) timestep the network sees for each sigma, clamped to the table."""
        return sigma_to_timestep(sigma, self.table, self.timestep)

    def denoise(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        outside = (sigma < self.sigma_min * (1 - 1e-6)) | (sigma > self.sigma_max * (1 + 1e-6))
        if not self._warned and bool(outside.any()):
            bad = float(sigma[outside][0])
            warnings.warn(f"sigma {bad:.4g} is outside the model's table [{self.sigma_min:.4g}, "
                          f"{self.sigma_max:.4g}]: its timestep is clamped to the table's end "
                          "(said once per model)", stacklevel=_caller_stacklevel())
            self._warned = True
        s = per_sample(sigma, x).to(x.dtype)
        # the network's dtype (a parameter-free network gets x's)
        dtype = getattr(next(self.unet.parameters(), None), "dtype", x.dtype)
        # float32 timesteps whatever the network's dtype, as diffusers' schedulers pass
        # them: a half-precision t would round 999.3 to 999.5.
        t = self.timesteps(sigma).to(torch.float32)
        extra = {} if cond is None else {"encoder_hidden_states": cond.to(dtype)}
        out = self.unet((x * vp_scale(s)).to(dtype), t, **extra)
        out = (out.sample if hasattr(out, "sample") else out[0]).to(x.dtype)
        return x0_from_prediction(x, s, out, self.prediction_type)


def from_diffusers(unet, scheduler, timestep: str = "log",
                   prediction_type: str | None = None, *,
                   encoder_hidden_states: Tensor | None = None,
                   negative_encoder_hidden_states: Tensor | None = None):
    """A sigma-space denoiser from a diffusers UNet and any of its schedulers.

    The scheduler supplies ``alphas_cumprod`` and ``prediction_type``; ``timestep`` picks
    the sigma-to-timestep map (see :data:`TIMESTEP_MAPPINGS`).

    A conditional UNet (``UNet2DConditionModel``) gives ``cm(x, sigma, cond)`` with
    ``cond`` the prompt's embedding and ``None`` the negative one
    (``negative_encoder_hidden_states``), ready for ``lab.guidance.cfg``. Given
    ``encoder_hidden_states``, the prompt is bound instead: a plain ``model(x, sigma)``
    (``lab.guidance.cfg(cm, encoder_hidden_states, scale=1)``).
    """
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise TypeError(f"{type(scheduler).__name__} has no alphas_cumprod; pass a diffusers "
                        "VP scheduler (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, ...)")
    abar = torch.as_tensor(np.asarray(abar, dtype=np.float64))
    kind = prediction_type or getattr(scheduler.config, "prediction_type", "epsilon")
    model = DiffusersDenoiser(unet, abar, kind, timestep, negative_encoder_hidden_states)
    if encoder_hidden_states is None:
        return model
    if not model.conditional:
        raise TypeError(f"{type(unet).__name__} takes no encoder_hidden_states; leave it out")
    from ..guidance import cfg  # guidance sits above models

    return cfg(model, model._check_embedding(encoder_hidden_states, "encoder_hidden_states"),
               scale=1.0)


def tiny_stable_diffusion(seed: int = 0, text_encoder=None):
    """A Stable Diffusion pipeline with tiny random weights, built from configs (nothing
    downloaded): 4 x 8 x 8 latents, 32-d text embeddings, SD 1.x's noise schedule and
    scheduler config. Its images are noise; it exercises the plumbing (schedulers, CFG,
    call counts) at test speed. ``text_encoder``: None (pass ``prompt_embeds`` of shape
    ``(B, L, 32)`` to the pipeline) or a text model of hidden size 32. No tokenizer.
    """
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's RNG untouched
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32,
            attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                            block_out_channels=(8,), norm_num_groups=8,
                            down_block_types=("DownEncoderBlock2D",),
                            up_block_types=("UpDecoderBlock2D",), sample_size=8)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae.eval(), text_encoder=text_encoder, tokenizer=None,
                                   unet=unet.eval().requires_grad_(False), scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe

