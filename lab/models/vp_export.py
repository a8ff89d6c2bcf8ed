"""lab denoisers presented to diffusers as VP epsilon-prediction models.

The reverse of :func:`lab.models.from_diffusers`. A sigma-space denoiser ``D(x, sigma)``
becomes a module ``(sample, timestep) -> output with .sample`` (as ``UNet2DModel``
returns) that predicts the noise of a VP sample, with a discrete table of its own:

    unet  = lab.models.to_diffusers(model)                    # 1000 timesteps
    sched = unet.make_scheduler(diffusers.DDIMScheduler)      # any VP scheduler class
    image = diffusers.DDIMPipeline(unet=unet, scheduler=sched)(batch_size=4,
                                                                output_type="np").images
    sched.set_timesteps(20)                                   # diffusers' own loop:
    x, nfe = sample_with_scheduler(unet, sched, noise * float(scheduler_sigmas(sched)[0]))

The table. Timestep ``t`` of ``num_train_timesteps`` has ``sigma_t`` log-linear in ``t``
from the model's ``sigma_min`` to its ``sigma_max`` (0.002 and 80, the EDM defaults, for
models without a finite range) and ``alphas_cumprod_t = 1 / (1 + sigma_t^2)``. diffusers
rebuilds a scheduler's table from ``trained_betas`` in float32 (``betas`` as float32,
``alphas_cumprod = cumprod(1 - betas)``), which cannot hold ``1 - alphas_cumprod`` of a
small sigma exactly; so the betas are chosen with error feedback (each step corrects
the rounding of the product so far), and the table *this module uses* is the one
diffusers computes from them, bit for bit. The requested log-linear sigmas are met to
about 0.3 % at sigma 0.002 and to 1e-7 above sigma 1; the model and every scheduler
built by :meth:`VPEpsilonModel.make_scheduler` agree on the table exactly.

The network. Given ``z = x / sqrt(1 + s^2)`` and a (possibly fractional) timestep ``t``,
``s`` is read off the table (``timestep="log"``: ``log sigma`` interpolated linearly in
``t``, the inverse of diffusers' ``_sigma_to_t``; ``"linear"``: ``sigma`` linear in ``t``,
the inverse of Euler/Heun/LMS ``linspace`` timesteps), then ``x = z sqrt(1 + s^2)`` and
``eps = (x - D(x, s)) / s``. At whole timesteps both maps give the table's sigma.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import math
import warnings

import numpy as np
import torch
from torch import Tensor, nn

from ..tensors import per_sample

__all__ = ["VPEpsilonModel", "to_diffusers", "vp_betas", "diffusers_alphas_cumprod",
           "carries_vp_sample", "scheduler_sigmas", "scheduler_steps", "sample_with_scheduler"]

#: How the module turns a scheduler's timestep into sigma (see the module docstring).
SIGMA_MAPS = ("log", "linear")

#: The sigma range given to models without a finite one (exact models): EDM's defaults.
DEFAULT_SIGMA_MIN, DEFAULT_SIGMA_MAX = 0.002, 80.0

#: The largest relative error of the float32 table's sigmas against the requested ones
#: (0.34 % at sigma 0.002 over 1000 timesteps; 19 % at 0.001).
MAX_TABLE_ERROR = 0.01


def diffusers_alphas_cumprod(betas) -> Tensor:
    """``alphas_cumprod`` exactly as diffusers' schedulers compute it from ``trained_betas``
    (float32: ``torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float32), 0)``)."""
    b = torch.tensor(np.asarray(betas, dtype=np.float64), dtype=torch.float32)
    return torch.cumprod(1.0 - b, dim=0)


def vp_betas(sigmas) -> np.ndarray:
    """float32 ``betas`` whose diffusers ``alphas_cumprod`` tracks ``1 / (1 + sigmas^2)``.

    ``sigmas`` ascending, one per timestep. Each beta is chosen against the product of
    the float32 alphas so far (error feedback), so rounding does not accumulate along
    the table. Raises if float32 cannot follow ``sigmas`` to :data:`MAX_TABLE_ERROR`.
    """
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    if s.ndim != 1 or s.numel() < 2 or not bool((s[1:] > s[:-1]).all() and (s[0] > 0)):
        raise ValueError("sigmas must be a 1-d, strictly ascending, positive table")
    target = (1.0 / (1.0 + s**2)).numpy()
    largest_alpha = np.nextafter(np.float32(1.0), np.float32(0.0))  # beta >= 2^-24
    betas = np.empty(len(target), dtype=np.float32)
    product = 1.0
    for t, goal in enumerate(target):
        alpha = min(np.float32(goal / product), largest_alpha)
        betas[t] = np.float32(1.0) - alpha
        product *= float(np.float32(1.0) - betas[t])
    abar = diffusers_alphas_cumprod(betas).to(torch.float64)
    off = float(((((1 - abar) / abar).sqrt() / s) - 1).abs().max())
    if not bool((abar[1:] < abar[:-1]).all() and (abar > 0).all()) or off > MAX_TABLE_ERROR:
        raise ValueError(
            f"diffusers' float32 alphas_cumprod cannot follow sigmas {float(s[0]):.3g} .. "
            f"{float(s[-1]):.3g} over {len(s)} timesteps (off by up to {off:.1%}, allowed "
            f"{MAX_TABLE_ERROR:.0%}): 1 - alphas_cumprod of a small sigma is below float32's "
            "resolution near 1; use a larger sigma_min or fewer num_train_timesteps")
    return betas


def _interp(t: Tensor, fp: Tensor) -> Tensor:
    """``fp`` (one value per whole timestep) linearly interpolated at fractional ``t``."""
    lo = t.floor().clamp(0, len(fp) - 2)
    w = t - lo
    i = lo.long()
    return fp[i] + w * (fp[i + 1] - fp[i])


def _compute_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype a denoiser computes in: its first floating parameter's, else buffer's."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


class VPEpsilonModel(nn.Module):
    """A lab denoiser as a diffusers VP epsilon model (see the module docstring).

    Attributes diffusers pipelines and schedulers use: ``config`` (``sample_size``,
    ``in_channels``, ``out_channels``, ``num_train_timesteps``, ...), ``dtype``,
    ``device``; ``forward(sample, timestep, return_dict=True)`` returns a
    ``UNet2DOutput``. The table: ``betas`` (float32 numpy, diffusers' ``trained_betas``),
    ``alphas_cumprod`` (float32, as every scheduler computes it) and ``sigmas`` (float64,
    ascending, ``sigmas[t]`` at whole timestep ``t``); ``sigma_min`` / ``sigma_max`` are
    its ends. ``make_scheduler(cls, **kwargs)`` builds a matching scheduler.

    ``dtype`` (the pipelines draw their noise in it) lives in a scalar placeholder
    parameter, as a diffusers model's lives in its weights, so ``.to()`` moves it; the
    denoiser itself is called in the dtype of its own weights or buffers.
    """

    def __init__(self, denoiser: nn.Module, betas, timestep: str = "log",
                 sample_shape: tuple[int, ...] | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        if timestep not in SIGMA_MAPS:
            raise ValueError(f"timestep must be one of {SIGMA_MAPS}, got {timestep!r}")
        self.denoiser = denoiser
        self.timestep = timestep
        self.betas = np.asarray(betas, dtype=np.float32)
        self.alphas_cumprod = diffusers_alphas_cumprod(self.betas)
        abar = self.alphas_cumprod.to(torch.float64)
        self.sigmas = ((1 - abar) / abar).sqrt()
        self.log_sigmas = self.sigmas.log()
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])
        self.placeholder = nn.Parameter(torch.zeros((), dtype=dtype), requires_grad=False)
        if sample_shape is None:
            sample_shape = getattr(denoiser, "sample_shape", None)
        self.sample_shape = None if sample_shape is None else tuple(int(v) for v in sample_shape)
        from diffusers.configuration_utils import FrozenDict

        image = self.sample_shape is not None and len(self.sample_shape) == 3
        size = None
        if image:
            h, w = self.sample_shape[1:]
            size = h if h == w else (h, w)
        self.config = FrozenDict(
            sample_size=size, in_channels=self.sample_shape[0] if image else None,
            out_channels=self.sample_shape[0] if image else None,
            sample_shape=None if self.sample_shape is None else list(self.sample_shape),
            num_train_timesteps=len(self.betas), prediction_type="epsilon",
            timestep=timestep, sigma_min=self.sigma_min, sigma_max=self.sigma_max)

    # -- what diffusers reads ----------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.placeholder.dtype

    @property
    def device(self) -> torch.device:
        return self.placeholder.device

    @property
    def num_train_timesteps(self) -> int:
        return len(self.betas)

    @property
    def scheduler_config(self) -> dict:
        """The keyword arguments every VP scheduler takes to share this table."""
        return {"num_train_timesteps": self.num_train_timesteps,
                "trained_betas": self.betas.tolist(), "prediction_type": "epsilon"}

    def make_scheduler(self, cls, **kwargs):
        """A diffusers scheduler of class ``cls`` on this model's table.

        Passes ``num_train_timesteps``, ``trained_betas`` and ``prediction_type="epsilon"``,
        and ``clip_sample=False`` where the class has it (DDIM and DDPM clip x0_hat to
        [-1, 1] by default; a lab model's data need not lie there). ``kwargs`` override
        everything but the table.
        """
        accepted = inspect.signature(cls.__init__).parameters
        if "trained_betas" not in accepted:
            raise TypeError(f"{cls.__name__} takes no trained_betas: not a VP scheduler "
                            "(DDPM, DDIM, Euler, Heun, LMS, DPM-Solver, UniPC, ...)")
        clash = {"trained_betas", "num_train_timesteps"} & set(kwargs)
        if clash:
            raise ValueError(f"{sorted(clash)} are the model's table; build another "
                             "to_diffusers(...) to change it")
        base = dict(self.scheduler_config)
        if "clip_sample" in accepted:
            base["clip_sample"] = False
        return cls(**{**base, **kwargs})

    # -- the network -------------------------------------------------------------------
    def timestep_to_sigma(self, timestep) -> Tensor:
        """The sigma (float64) the model assumes at each (fractional) timestep."""
        t = torch.as_tensor(timestep).to(torch.float64)
        last = self.num_train_timesteps - 1
        if not bool(torch.isfinite(t).all()) or bool(((t < -1e-4) | (t > last + 1e-4)).any()):
            raise ValueError(f"timesteps must lie in [0, {last}], got "
                             f"{t.flatten()[:4].tolist()}")
        t = t.clamp(0, last)
        table = self.sigmas.to(t.device)
        if self.timestep == "linear":
            sigma = _interp(t, table)
        else:
            sigma = _interp(t, self.log_sigmas.to(t.device)).exp()
        whole = t.round()
        return torch.where(t == whole, table[whole.long()], sigma)  # the table, bit for bit

    def forward(self, sample: Tensor, timestep, class_labels=None, return_dict: bool = True):
        """``eps`` of the denoiser for the VP ``sample`` at ``timestep`` (a number, a 0-d
        or a ``(B,)`` tensor)."""
        if class_labels is not None:
            raise ValueError("a lab denoiser takes no class labels")
        batch = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim > 1 or (t.ndim == 1 and t.numel() not in (1, batch)):
            raise ValueError(f"timestep must be a number or a ({batch},) tensor, got shape "
                             f"{tuple(t.shape)}")
        sigma = self.timestep_to_sigma(t.reshape(-1).expand(batch))
        s = per_sample(sigma, sample)
        x = sample.to(torch.float64) * (1 + s**2).sqrt()
        dtype = _compute_dtype(self.denoiser) or sample.dtype
        d = self.denoiser(x.to(dtype), sigma.to(dtype)).to(torch.float64)
        eps = ((x - d) / s).to(sample.dtype)
        if not return_dict:
            return (eps,)
        from diffusers.models.unets.unet_2d import UNet2DOutput

        return UNet2DOutput(sample=eps)

    def extra_repr(self) -> str:
        return (f"timesteps={self.num_train_timesteps}, sigma={self.sigma_min:.4g}.."
                f"{self.sigma_max:.4g}, timestep={self.timestep!r}")


def to_diffusers(denoiser, num_train_timesteps: int = 1000, *, sigma_min: float | None = None,
                 sigma_max: float | None = None, timestep: str = "log",
                 sample_shape: tuple[int, ...] | None = None,
                 dtype: torch.dtype = torch.float32) -> VPEpsilonModel:
    """Present a lab sigma-space denoiser to diffusers as a VP epsilon model.

    The table spans ``sigma_min .. sigma_max`` (default: the denoiser's own range, or
    0.002 .. 80 where it has none), log-linear over ``num_train_timesteps``. ``timestep``
    picks how a fractional timestep becomes sigma (``"log"`` or ``"linear"``, see the
    module docstring); ``sample_shape`` (default: the denoiser's) gives the pipelines'
    ``config.in_channels`` / ``config.sample_size``; ``dtype`` is the module's (the noise
    a pipeline draws). Build schedulers with :meth:`VPEpsilonModel.make_scheduler`.
    """
    if not isinstance(denoiser, nn.Module):
        raise TypeError(f"denoiser must be a torch.nn.Module (a lab Denoiser), got "
                        f"{type(denoiser).__name__}")
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) \
            or num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got "
                         f"{num_train_timesteps!r}")
    own_min = float(getattr(denoiser, "sigma_min", 0.0) or 0.0)
    own_max = float(getattr(denoiser, "sigma_max", math.inf))
    lo = sigma_min if sigma_min is not None else (own_min if own_min > 0 else DEFAULT_SIGMA_MIN)
    hi = sigma_max if sigma_max is not None else (own_max if math.isfinite(own_max)
                                                  else DEFAULT_SIGMA_MAX)
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"need 0 < sigma_min < sigma_max, both finite; got {lo}, {hi}")
    if lo < own_min * (1 - 1e-9) or hi > own_max * (1 + 1e-9):
        warnings.warn(f"the table's sigmas {lo:.4g} .. {hi:.4g} leave the model's range "
                      f"{own_min:.4g} .. {own_max:.4g}", stacklevel=2)
    sigmas = torch.exp(torch.linspace(math.log(lo), math.log(hi), num_train_timesteps,
                                      dtype=torch.float64))
    return VPEpsilonModel(denoiser, vp_betas(sigmas), timestep, sample_shape, dtype)


# ---- diffusers' own sampling loop, seen from sigma-space -------------------------------


def carries_vp_sample(scheduler) -> bool:
    """Whether ``scheduler`` works on the VP sample ``x / sqrt(1 + sigma^2)`` (DDIM,
    DPM-Solver, UniPC) rather than on ``x`` itself (Euler, Heun, LMS). diffusers starts
    from ``N(0, I) * init_noise_sigma``, which is 1 exactly for the former."""
    return float(scheduler.init_noise_sigma) == 1.0


def scheduler_sigmas(scheduler) -> Tensor:
    """The noise levels a diffusers scheduler steps through after ``set_timesteps``, as a
    lab schedule (float64, descending, ending in its final sigma: 0 by default).

    Schedulers with ``sigmas`` (Euler, Heun, LMS, DPM-Solver, UniPC) keep them in
    sigma-space already; Heun repeats its interior ones, dropped here. DDIM has none: its
    table at its timesteps, then ``final_alpha_cumprod``. DDIM steps from ``t`` to ``t -
    num_train_timesteps // n``, the next listed timestep only with ``"leading"`` or
    ``"trailing"`` spacing and ``num_train_timesteps % n == 0``.
    """
    from ..schedules import validate

    if getattr(scheduler, "sigmas", None) is not None:
        return validate(torch.unique_consecutive(torch.as_tensor(scheduler.sigmas).double()))
    if not hasattr(scheduler, "final_alpha_cumprod"):
        raise TypeError(f"{type(scheduler).__name__} has neither sigmas nor "
                        "final_alpha_cumprod: cannot tell which noise levels it steps through")
    abar = torch.cat([scheduler.alphas_cumprod.double()[scheduler.timesteps],
                      torch.tensor([float(scheduler.final_alpha_cumprod)], dtype=torch.float64)])
    return validate(((1 - abar) / abar).sqrt())


def scheduler_steps(model, scheduler, start: Tensor):
    """diffusers' own sampling loop, as a generator of ``(sigma, x, nfe)`` after each full
    step: ``x`` in sigma-space at noise level ``sigma``, ``nfe`` the model calls so far.

    ``model`` is a diffusers epsilon model (``to_diffusers(denoiser)``, a ``UNet2DModel``);
    call ``scheduler.set_timesteps`` first. ``start`` is the sigma-space state at the
    scheduler's first noise level (``noise * scheduler_sigmas(scheduler)[0]``). The loop
    is the pipelines' (the model on ``scale_model_input(sample, t)``, then ``step``),
    through public API only, on the scheduler's own sample (scaled to VP form where
    :func:`carries_vp_sample`) and in ``model.dtype``.
    """
    sigmas = scheduler_sigmas(scheduler)
    scale = (1 + sigmas**2).sqrt().tolist() if carries_vp_sample(scheduler) else None
    sample = start.to(model.dtype)
    sample = sample / scale[0] if scale else sample
    timesteps, i = scheduler.timesteps, 0
    for nfe, t in enumerate(timesteps, 1):
        with torch.no_grad():  # around each call, not across the yields (thread-local)
            out = model(scheduler.scale_model_input(sample, t), t).sample
            sample = scheduler.step(out, t, sample).prev_sample
        # Heun's step is whole once it is back in its first stage (its last is Euler)
        if getattr(scheduler, "state_in_first_order", True) or nfe == len(timesteps):
            i += 1
            if i == len(sigmas):
                break  # more steps than noise levels: reported below
            yield float(sigmas[i]), (sample * scale[i] if scale else sample), nfe
    if i != len(sigmas) - 1:
        raise RuntimeError(f"{type(scheduler).__name__} took {i} steps over "
                           f"{len(sigmas) - 1} noise levels: not a loop this function knows")


def sample_with_scheduler(model, scheduler, start: Tensor,
                          num_inference_steps: int | None = None) -> tuple[Tensor, int]:
    """The final sample (sigma-space) of diffusers' own loop from ``start``, and its model
    calls (NFE); see :func:`scheduler_steps`. ``num_inference_steps``: call
    ``scheduler.set_timesteps`` with it first (else the timesteps already set)."""
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps)
    ((_, x, nfe),) = collections.deque(scheduler_steps(model, scheduler, start), maxlen=1)
    return x, nfe
