"""Measures of a sampler: distances between sample sets, errors against exact solutions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from .seeding import derive_seed

if TYPE_CHECKING:
    from .trajectory import Trajectory

__all__ = ["sliced_wasserstein", "mmd", "ode_reference", "exact_solution", "sample_distances",
           "rms_distance", "max_abs_error"]


def _flat64(a: Tensor) -> Tensor:
    return torch.as_tensor(a).reshape(len(a), -1).to(torch.float64)


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 512, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance ``sqrt(E_theta W2^2(a.theta, b.theta))``.

    Random unit directions from ``seed``; sets of different sizes are compared
    through their quantile functions on a common grid.
    """
    a, b = _flat64(a), _flat64(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"sample sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    g = torch.Generator().manual_seed(derive_seed(seed))
    theta = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    theta /= theta.norm(dim=0, keepdim=True)
    # sort along the contiguous last axis (projections x samples): much faster
    pa, pb = (theta.T @ a.T).sort(1).values.T, (theta.T @ b.T).sort(1).values.T
    if len(pa) != len(pb):
        q = torch.linspace(0, 1, max(len(pa), len(pb)), dtype=torch.float64)
        pa, pb = _quantiles(pa, q), _quantiles(pb, q)
    return float(((pa - pb) ** 2).mean().sqrt())


def _quantiles(sorted_proj: Tensor, q: Tensor) -> Tensor:
    pos = q * (len(sorted_proj) - 1)
    lo = pos.floor().long().clamp(max=len(sorted_proj) - 1)
    hi = (lo + 1).clamp(max=len(sorted_proj) - 1)
    w = (pos - lo)[:, None]
    return sorted_proj[lo] * (1 - w) + sorted_proj[hi] * w


def mmd(a: Tensor, b: Tensor, bandwidths=(0.1, 0.2, 0.5, 1.0, 2.0)) -> float:
    """Unbiased squared MMD with a sum of Gaussian kernels of the given bandwidths."""
    a, b = _flat64(a), _flat64(b)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("mmd needs at least 2 samples in each set")

    def k(u, v):
        d2 = torch.cdist(u, v) ** 2
        return sum(torch.exp(-d2 / (2 * h**2)) for h in bandwidths)

    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    n, m = len(a), len(b)
    return float((kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
                 + (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1)) - 2 * kab.mean())


def ode_reference(model, x: Tensor, sigma_from: float, sigma_to: float, rtol: float = 1e-10,
                  atol: float = 1e-10) -> Tensor:
    """Tight-tolerance solve of ``dx/dsigma = (x - D(x, sigma)) / sigma`` (scipy DOP853).

    With ``sigma_to = 0`` it integrates to ``1e-6 * sigma_from`` and finishes with one
    denoiser call there, whose error is of that order.
    """
    end = sigma_to if sigma_to > 0 else 1e-6 * sigma_from
    shape, dtype = x.shape, x.dtype

    def rhs(sigma, flat):
        xt = torch.from_numpy(flat).reshape(shape)
        with torch.inference_mode():
            return ((xt - model(xt, float(sigma))) / sigma).reshape(-1).numpy()

    start = x.detach().to(torch.float64).reshape(-1).numpy()
    sol = solve_ivp(rhs, (float(sigma_from), float(end)), start, method="DOP853",
                    rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference ODE solve failed: {sol.message}")
    out = torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).reshape(shape)
    if sigma_to == 0:
        with torch.inference_mode():
            out = model(out, end)
    return out.to(dtype)


def exact_solution(model, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
    """The probability-flow ODE solution from ``x`` at ``sigma_from`` to ``sigma_to``: the
    model's closed form where it has one (``Gaussian.solve``), else :func:`ode_reference`."""
    solve = getattr(model, "solve", None)
    if solve is not None:
        return solve(x, sigma_from, sigma_to)
    return ode_reference(model, x, sigma_from, sigma_to)


def sample_distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distance between paired samples ``a[i]`` and ``b[i]``, float64 ``(B,)``."""
    return (_flat64(a) - _flat64(b)).norm(dim=1)


def rms_distance(a: Tensor, b: Tensor) -> float:
    """``sqrt(mean_i |a_i - b_i|^2)``: e.g. the global error of a sampler's final samples
    against the exact ODE solution from the same noise."""
    return float(sample_distances(a, b).pow(2).mean().sqrt())


def max_abs_error(a: Tensor, b: Tensor) -> float:
    return float((a.to(torch.float64) - b.to(torch.float64)).abs().max())


# ----------------------------------------------------------------------------------
# FID / KID on Fashion-MNIST (implemented in lab.fid; see its docstring)
# ----------------------------------------------------------------------------------

__all__ += ["fid", "kid", "features"]


def features(samples: Tensor, classifier=None, batch_size: int = 500) -> Tensor:
    """Penultimate ``fashion-classifier`` features ``(B, 256)`` of images ``(B, 1, 28, 28)``
    in [-1, 1], batched under ``torch.inference_mode`` (see :func:`lab.fid.features`)."""
    from .fid import features as _features

    return _features(samples, classifier, batch_size)


def fid(samples: Tensor, reference="fashion-test", classifier=None,
        batch_size: int = 500) -> float:
    """FID of images ``(B, 1, 28, 28)`` in [-1, 1] against ``reference`` (default: the
    10,000 Fashion-MNIST test images), on ``fashion-classifier`` features, float64.

    Quote the sample count; the real-vs-real floor is ``lab.fid.floor()``: train images
    against this reference score about 1.6 at 512 samples and 0.39 at 2,048 (two
    disjoint real sets of equal size: 2.7 and 0.68). See :func:`lab.fid.fid`.
    """
    from .fid import fid as _fid

    return _fid(samples, reference, classifier, batch_size)


def kid(samples: Tensor, reference="fashion-test", classifier=None, batch_size: int = 500,
        subsets: int = 100, subset_size: int | None = None, seed: int = 0):
    """KID (unbiased MMD^2, kernel ``(x.y/d + 1)^3``) of images ``(B, 1, 28, 28)`` against
    ``reference``, over ``subsets`` random subsets of ``subset_size`` (default
    ``min(1000, B)``): a ``KID(mean, std)`` named tuple. See :func:`lab.fid.kid`."""
    from .fid import kid as _kid

    return _kid(samples, reference, classifier, batch_size, subsets, subset_size, seed)


__all__ += ["image_scores"]


def image_scores(samples: Tensor, reference="fashion-test") -> dict:
    """``{"fid", "kid", "kid_std"}`` of sampled images, clamped to [-1, 1] first (the
    images a user would see): the scores a Fashion-MNIST study cell records."""
    images = samples.clamp(-1, 1)
    k = kid(images, reference)
    return {"fid": fid(images, reference), "kid": k.mean, "kid_std": k.std}


# ----------------------------------------------------------------------------------
# Metrics of a run: ``traj -> float`` callables (Compare's table column)
# ----------------------------------------------------------------------------------

__all__ += ["exact_error", "sliced_wasserstein_to", "fid_metric", "default_metric"]


def exact_error(model) -> Callable[[Trajectory], float]:
    """Max abs difference between a run's end and :func:`exact_solution` from its start
    (closed form for a ``Gaussian``; otherwise a tight-tolerance solve per call: slow)."""
    def error(traj: Trajectory) -> float:
        start = traj.xs[0].to(torch.float64)  # the reference in full precision
        exact = exact_solution(model, start, float(traj.sigmas[0]), float(traj.sigmas[-1]))
        return max_abs_error(traj.x, exact)

    return error


def sliced_wasserstein_to(reference: Tensor, projections: int = 256
                          ) -> Callable[[Trajectory], float]:
    """Sliced Wasserstein distance of a run's samples to ``reference`` samples."""
    def sw(traj: Trajectory) -> float:
        return sliced_wasserstein(traj.x, reference, projections=projections)

    return sw


def fid_metric(reference="fashion-test") -> Callable[[Trajectory], float]:
    """FID of a run's images (clamped to [-1, 1]) against ``reference`` (:func:`fid`); on
    a small batch it is biased upward: compare rules at the same count only."""
    def fid_of_run(traj: Trajectory) -> float:
        return fid(traj.x.clamp(-1, 1), reference)

    return fid_of_run


def default_metric(model, shape: Sequence[int], reference=None, seed: int = 0):
    """``(name, metric)`` for a model, or ``(None, None)`` when nothing fits:

    - a ``Gaussian`` (it has ``solve``): max error against the exact ODE solution;
    - 2-D samples: sliced Wasserstein to ``reference`` samples, else to the model's own
      exact samples (mixtures) or data (``Empirical``);
    - Fashion-MNIST-shaped images ``(1, 28, 28)``: FID on the batch against ``reference``
      (images) or the shipped ``fashion-test`` features, when they exist.
    """
    per_sample = tuple(shape[1:])
    n = int(shape[0])
    if hasattr(model, "solve"):
        return "max |x - exact ODE solution|", exact_error(model)
    if math.prod(per_sample) == 2:
        if reference is None and hasattr(model, "sample"):
            reference = model.sample(max(n, 512), seed=seed + 1)
        if reference is None and isinstance(getattr(model, "data", None), Tensor):
            reference = model.data
        if reference is not None:
            return "sliced W2 to reference", sliced_wasserstein_to(reference)
        return None, None
    if per_sample == (1, 28, 28):
        if isinstance(reference, Tensor):
            return f"FID ({n} samples)", fid_metric(reference)
        from . import fid as fid_module

        if "fashion-test" in fid_module.references():
            return f"FID ({n} samples)", fid_metric("fashion-test")
    return None, None


# ----------------------------------------------------------------------------------
# Guided samples: is it the class asked for, and did guidance push pixels off the range?
# ----------------------------------------------------------------------------------

__all__ += ["classify", "class_accuracy", "out_of_range"]


def classify(samples: Tensor, classifier="fashion-classifier", batch_size: int = 500) -> Tensor:
    """``fashion-classifier``'s label ``(B,)`` for images ``(B, 1, 28, 28)``, clamped to
    [-1, 1] first (the images a user would see)."""
    from .perceptual import _resolve, check_images

    check_images(samples, "samples")
    net = _resolve(classifier)
    param = next(net.parameters())
    with torch.inference_mode():
        return torch.cat([net(chunk.clamp(-1, 1).to(param.device, param.dtype)).argmax(1).cpu()
                          for chunk in samples.split(int(batch_size))])


def class_accuracy(samples: Tensor, classes: Tensor, classifier="fashion-classifier") -> float:
    """The share of samples the classifier labels as their intended class ``classes``."""
    if classes.shape != samples.shape[:1]:
        raise ValueError(f"classes must hold one class id per sample, shape "
                         f"({samples.shape[0]},), got {tuple(classes.shape)}")
    return float((classify(samples, classifier) == classes.cpu()).double().mean())


def out_of_range(samples: Tensor, limit: float = 1.0, far: float | None = None) -> dict:
    """Divergence artifacts before clamping (strong guidance overshoots the data range;
    Wizadwongsa et al. 2023): ``pixels_out``, the share of pixels with ``|x| > limit``;
    ``samples_out``, the share of samples with any; ``max_abs``, the mean over samples of
    the largest ``|x|``; and with ``far``, ``pixels_far`` and ``samples_far`` likewise
    beyond ``far``. On data whose background sits at the limit (Fashion-MNIST at -1) a
    hair of noise puts many pixels just past it, so a visible artifact needs ``far``."""
    flat = samples.detach().abs().flatten(1)
    out = {"max_abs": float(flat.amax(1).double().mean())}
    for name, bound in (("out", limit), ("far", far)):
        if bound is not None:
            beyond = flat > bound
            out[f"pixels_{name}"] = float(beyond.double().mean())
            out[f"samples_{name}"] = float(beyond.any(1).double().mean())
    return out
