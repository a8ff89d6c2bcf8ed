"""Steering the denoiser: classifier-free guidance with negative classes and an interval,
loss guidance, img2img and inpainting. Each returns a Denoiser, a Rule or a Trajectory,
so every rule of the lab drives a guided model unchanged.

    g    = lab.guidance.cfg(cm, cond, scale=3.0)            # a Denoiser
    traj = lab.sample(g, x, sigmas, "dpmpp_2m")
    b    = lab.guidance.loss(model, lab.guidance.brightness(0.5), scale=2.0)
    traj = lab.img2img(model, image, 0.6, "euler", steps=20, seed=0)

Formulas (DESIGN.md section 7): classifier-free guidance (Ho & Salimans 2022)
``D = D(x, s, neg) + w (D(x, s, c) - D(x, s, neg))``, ``neg`` the null class unless
negative classes are given; the guidance interval (Kynkaanniemi et al. 2024) applies ``w``
only for sigma in ``[lo, hi]``. Loss guidance ``D - scale s^2 grad_x L(D(x, s))``.
img2img (SDEdit, Meng et al. 2022) with diffusers' meaning of ``strength``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from . import rules as _rules
from . import schedules
from .denoiser import Denoiser
from .rules.base import Param, Wrapper
from .sample import sample
from .seeding import noise as draw_noise
from .tensors import per_sample
from .trajectory import Trajectory

__all__ = ["cfg", "Guided", "balanced_classes", "loss", "LossGuided", "class_log_prob",
           "brightness", "perceptual_distance", "img2img", "inpaint"]


def _check_scale(scale, name: str = "scale") -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
            or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (1 is the plain conditional "
                         f"model), got {scale!r}")
    return float(scale)


class Guided(Denoiser):
    """Classifier-free guidance around a conditional model; see :func:`cfg`.

    ``network_evaluations`` counts the network's per-sample evaluations (two per guided
    call, both branches in one batched network call; one where the scale is 1 or, with
    an interval, where no sample's sigma lies inside it).
    """

    def __init__(self, model, cond, scale: float, negative=None, interval=None):
        super().__init__()
        if not getattr(model, "conditional", False):
            raise TypeError(f"cfg guides a class-conditional model (cm(x, sigma, cond)); "
                            f"{type(model).__name__} is unconditional. Use lab.guidance.loss "
                            "to steer an unconditional model")
        if interval is not None:
            lo, hi = interval
            if not (0 <= lo <= hi):
                raise ValueError(f"interval (lo, hi) needs 0 <= lo <= hi, got {interval!r}")
            interval = (float(lo), float(hi))
        self.model, self.cond, self.negative = model, cond, negative
        self.scale, self.interval = _check_scale(scale), interval
        self.sample_shape = getattr(model, "sample_shape", None)
        self.sigma_min, self.sigma_max = model.sigma_min, model.sigma_max
        self.network_evaluations = 0

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self.scale == 1.0 and self.negative is None and self.interval is None:
            self.network_evaluations += x.shape[0]
            return self.model(x, sigma, self.cond)
        inside = None
        if self.interval is not None:
            lo, hi = self.interval
            inside = (sigma >= lo) & (sigma <= hi)
            if not bool(inside.any()):  # w = 1 for every sample: the conditional branch only
                self.network_evaluations += x.shape[0]
                return self.model(x, sigma, self.cond)
        cond = self.model.check_cond(self.cond, x)
        neg = self.model.check_cond(self.negative, x)
        # One network call for both branches; denoise takes the null class's internal id.
        both = self.model.denoise(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                  torch.cat([cond, neg]))
        self.network_evaluations += 2 * x.shape[0]
        d_cond, d_neg = both.chunk(2)
        w = torch.full_like(sigma, self.scale)
        if inside is not None:
            w = torch.where(inside, w, torch.ones_like(w))
        return d_neg + per_sample(w, x).to(x.dtype) * (d_cond - d_neg)


def cfg(model, cond, scale: float = 3.0, negative=None, interval=None) -> Guided:
    """Classifier-free guidance: a Denoiser every rule can drive.

    ``cond``: ``(B,)`` class ids or None (the null class); ``negative``: ``(B,)`` class
    ids that replace the null class in the guidance difference, so ``cond=None,
    negative=k`` means "anything but k"; ``interval=(lo, hi)``: guidance only there.
    """
    return Guided(model, cond, scale, negative, interval)


class LossGuided(Denoiser):
    """Loss guidance; see :func:`loss`."""

    def __init__(self, model, fn: Callable[[Tensor], Tensor], scale: float):
        super().__init__()
        if not callable(fn):
            raise TypeError(f"fn must map x0_hat (B, ...) to a (B,) loss, got {fn!r}")
        self.model, self.fn, self.scale = model, fn, _check_scale(scale)
        self.sample_shape = getattr(model, "sample_shape", None)
        self.sigma_min = getattr(model, "sigma_min", 0.0)
        self.sigma_max = getattr(model, "sigma_max", math.inf)

    @property
    def network_evaluations(self):
        """The guided model's count, if it keeps one (``loss(cfg(...), ...)``)."""
        return getattr(self.model, "network_evaluations", None)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        # The sampling loop runs in inference mode; the gradient needs real tensors.
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            x0 = self.model(xg, sigma.detach().clone())
            value = self.fn(x0)
            if value.shape != (x.shape[0],):
                raise ValueError(f"the guidance loss must return one value per sample, shape "
                                 f"({x.shape[0]},), got {tuple(value.shape)}")
            (grad,) = torch.autograd.grad(value.sum(), xg)
        return (x0 - self.scale * per_sample(sigma**2, x).to(x.dtype) * grad).detach()


def balanced_classes(n: int, classes: int = 10) -> Tensor:
    """Class-balanced requests ``(n,)``: sample k asks for class ``k mod classes``, so a
    sample's class depends on its index alone, as its noise does on (seed, k)."""
    return torch.arange(int(n)) % int(classes)


def loss(model, fn: Callable[[Tensor], Tensor], scale: float = 1.0) -> LossGuided:
    """Loss guidance (fast.ai's "blue loss", classifier guidance): ``fn(x0_hat) -> (B,)``
    any differentiable loss; the score moves by ``-scale grad_x L``:
    ``D_guided = D - scale sigma^2 grad_x L(D(x, sigma))``. One model call with autograd
    through the denoiser per call. ``model`` may itself be guided (``cfg``)."""
    return LossGuided(model, fn, scale)


def class_log_prob(target: int, classifier="fashion-classifier") -> Callable[[Tensor], Tensor]:
    """``-log p(target | x0_hat)`` under a shipped classifier: classifier guidance."""
    from .perceptual import _frozen, load

    net = load(classifier) if isinstance(classifier, str) else classifier

    def fn(x0: Tensor) -> Tensor:
        with _frozen(net):
            return -net(x0.clamp(-1, 1)).log_softmax(1)[:, target]

    return fn


def brightness(target: float) -> Callable[[Tensor], Tensor]:
    """``(mean pixel - target)^2`` per sample: "make it brighter" (the lectures' blue loss,
    in grey). Pixels in [-1, 1]."""
    def fn(x0: Tensor) -> Tensor:
        return (x0.flatten(1).mean(1) - target) ** 2

    return fn


def perceptual_distance(reference: Tensor, net="fashion-perceptual"
                        ) -> Callable[[Tensor], Tensor]:
    """The ``fashion-perceptual`` feature distance to a reference image (1, 1, 28, 28)."""
    from .perceptual import perceptual_loss

    def fn(x0: Tensor) -> Tensor:
        return perceptual_loss(net, x0, reference.expand_as(x0).to(x0))

    return fn


def _check_image(image, model) -> Tensor:
    if not isinstance(image, Tensor) or not image.is_floating_point():
        raise TypeError("image must be a floating-point tensor (B, ...) in [-1, 1]")
    shape = getattr(model, "sample_shape", None)
    if image.ndim < 2 or (shape is not None and tuple(image.shape[1:]) != tuple(shape)):
        raise ValueError(f"image must be shaped (B, {', '.join(map(str, shape or ['...']))}), "
                         f"got {tuple(image.shape)}")
    if bool((image.abs() > 1 + 1e-6).any()):
        raise ValueError("image must lie in [-1, 1] (the models' data range); rescale it")
    return image


def _schedule(model, steps: int) -> Tensor:
    return schedules.karras(steps, max(getattr(model, "sigma_min", 0.0) or 0.0, 0.002),
                            min(getattr(model, "sigma_max", 80.0), 80.0))


def img2img(model, image: Tensor, strength: float, rule="euler", steps: int = 20,
            seed: int = 0, sigmas: Tensor | None = None, **kwargs) -> Trajectory:
    """SDEdit with diffusers' ``strength``: of a ``steps``-step schedule (Karras in the
    model's range, or ``sigmas``), run the last ``min(int(steps * strength), steps)``,
    starting from ``image + s_start z`` at that step's sigma. Strength 1 is plain
    sampling from ``image + sigma_max z``; small strengths keep the image."""
    image = _check_image(image, model)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) \
            or not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    sig = schedules.validate(sigmas) if sigmas is not None else _schedule(model, steps)
    steps = len(sig) - 1
    run = min(int(steps * strength), steps)
    if run == 0:
        raise ValueError(f"strength {strength} runs no step of {steps}; raise it or the steps")
    sig = sig[steps - run:]
    z = draw_noise(image.shape, seed=seed, dtype=image.dtype, device=image.device)
    return sample(model, image + float(sig[0]) * z, sig, rule, seed=seed, **kwargs)


class Inpainting(Wrapper):
    """Inpainting by replacement: after each step of the wrapped rule, the known pixels
    (``mask == 1``) are the image re-noised to the step's new sigma. Built by
    :func:`inpaint`; not in the registry (it carries an image)."""

    name = ""
    params = (Param("rule", "euler", doc="the deterministic rule it wraps"),)

    def __init__(self, rule, image: Tensor, mask: Tensor):
        super().__init__(rule=rule)
        self.image, self.mask = image, mask

    def step(self, model, x, sigma, sigma_next, noise):
        x, x0 = self.inner.step(model, x, sigma, sigma_next, noise)
        known = self.image + sigma_next * noise(x)
        return torch.where(self.mask.to(torch.bool), known.to(x.dtype), x), x0


def inpaint(model, image: Tensor, mask: Tensor, rule="euler", steps: int = 20,
            seed: int = 0, **kwargs) -> Trajectory:
    """Fill the pixels where ``mask == 0``, keeping those where ``mask == 1`` (shaped like
    ``image`` or broadcastable to it), by replacement (:class:`Inpainting`)."""
    image = _check_image(image, model)
    if not isinstance(mask, Tensor):
        raise TypeError("mask must be a tensor of 0s and 1s shaped like the image")
    try:
        mask = torch.broadcast_to(mask, image.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit the image "
                         f"{tuple(image.shape)}") from None
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0 (fill) and 1 (keep)")
    rule = _rules.resolve(rule)
    if rule.stochastic:
        raise ValueError(f"inpaint re-noises the known pixels itself; give it a deterministic "
                         f"rule, not {rule.config_name}")
    sig = _schedule(model, steps)
    z = draw_noise(image.shape, seed=seed, dtype=image.dtype, device=image.device)
    return sample(model, image + float(sig[0]) * z, sig, Inpainting(rule, image, mask),
                  seed=seed, **kwargs)
