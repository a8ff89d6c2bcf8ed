"""FID and KID on Fashion-MNIST, fast.ai course22p2 style.

The features are the penultimate activations (256 numbers per image) of the shipped
Fashion-MNIST classifier ``fashion-classifier`` (:mod:`lab.perceptual`), not
Inception's; the reference ``"fashion-test"`` is the 10,000 Fashion-MNIST test images.
So the numbers compare only with other numbers from this lab (same classifier, same
reference, same sample count), never with published ImageNet-Inception FIDs.

    lab.metrics.fid(samples)                 # samples: (B, 1, 28, 28) in [-1, 1]
    lab.metrics.kid(samples)                 # -> KID(mean, std) over random subsets

The reference features ship in fp16 as ``lab/weights/fashion-test-features.safetensors``;
the json beside it records their sha256 (checked on load), the classifier's name and
sha256 (checked against the shipped classifier, so stale features are an error), and
the real-vs-real floor: the FID/KID of real images that a perfect sampler would get.
Quote the sample count with every number: both metrics are biased upward at small
counts (FID strongly so), see ``floor()``.

- **FID** (Heusel et al. 2017): ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``, in
  float64; ``tr (S1 S2)^(1/2)`` is the sum of the square roots of the eigenvalues of
  ``S1 S2`` (real and >= 0 in exact arithmetic; rounding leaves tiny imaginary or
  negative parts, which are dropped), as torchmetrics does.
- **KID** (Binkowski et al. 2018, as torchmetrics ``KernelInceptionDistance``): the
  unbiased squared MMD with the kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over
  ``subsets`` random pairs of subsets of ``subset_size`` samples and reference images;
  returns ``KID(mean, std)`` (std over the subsets). The subsets are fixed by ``seed``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from . import zoo
from .io import atomic_path, write_json
from .seeding import derive_seed

__all__ = ["KID", "features", "fid", "kid", "fid_from_features", "kid_from_features",
           "reference_features", "reference_info", "references", "floor",
           "write_reference", "DEFAULT_CLASSIFIER"]

DEFAULT_CLASSIFIER = "fashion-classifier"
SUFFIX = "-features"
#: How the shipped reference features are written again.
RESHIP = "python -m experiments.train_classifiers features"


class KID(NamedTuple):
    """Kernel inception distance: mean and standard deviation over the subsets."""

    mean: float
    std: float


# ----------------------------------------------------------------------------------
# reference features on disk
# ----------------------------------------------------------------------------------

def _paths(name: str, folder) -> tuple[Path, Path]:
    folder = Path(folder)
    return folder / f"{name}{SUFFIX}.safetensors", folder / f"{name}{SUFFIX}.json"


def references(folder=zoo.WEIGHTS) -> list[str]:
    """Names of the reference feature sets shipped in ``folder``."""
    return sorted(p.name[: -len(SUFFIX + ".json")] for p in Path(folder).glob(f"*{SUFFIX}.json"))


def reference_info(name: str = "fashion-test", folder=zoo.WEIGHTS) -> dict:
    """The json beside a reference's features (checksums, classifier, count, floor)."""
    if not isinstance(name, str):
        raise TypeError(f"reference must be a name or an image tensor, got {type(name).__name__}")
    _, meta_path = _paths(name, folder)
    if not meta_path.exists():
        known = ", ".join(references(folder)) or "none"
        raise ValueError(f"unknown reference {name!r}; shipped references: {known} "
                         "(or pass a (B, 1, 28, 28) tensor of reference images)")
    return zoo.read_record(meta_path, ("sha256", "classifier", "classifier_sha256"),
                           reship=RESHIP)


def reference_features(name: str = "fashion-test", folder=zoo.WEIGHTS) -> Tensor:
    """The reference's classifier features ``(N, D)`` in float64, checksum verified.

    Raises ``lab.zoo.ChecksumError`` if the file does not match its recorded sha256, and
    ``ValueError`` if the shipped classifier is not the one the features came from.
    Read and verified once per file (path, size, modification time); returns a copy.
    """
    return _reference_features(name, folder).clone()


def _reference_features(name: str, folder=zoo.WEIGHTS) -> Tensor:
    """The cached tensor itself (read-only by convention)."""
    meta = reference_info(name, folder)
    path, _ = _paths(name, folder)
    if not path.exists():
        raise ValueError(f"{path} is missing; restore it with `git checkout -- lab/weights`")
    st = path.stat()
    return _load_features(str(path.resolve()), st.st_size, st.st_mtime_ns, meta["sha256"],
                          meta["classifier"], meta["classifier_sha256"], str(folder))


@functools.lru_cache(maxsize=4)
def _load_features(path: str, size: int, mtime_ns: int, digest: str, classifier: str,
                   classifier_digest: str, folder: str) -> Tensor:
    zoo.verify(path, digest)
    current = zoo.info(classifier, folder)["sha256"]
    if current != classifier_digest:
        raise ValueError(f"{path} holds features of an older {classifier!r} (sha256 "
                         f"{classifier_digest[:12]}..., shipped now: {current[:12]}...); "
                         f"regenerate them: {RESHIP}")
    feats = load_file(path)["features"].to(torch.float64)
    feats.requires_grad_(False)
    return feats


def write_reference(name: str, images: Tensor, classifier: str = DEFAULT_CLASSIFIER,
                    folder=zoo.WEIGHTS, extra: dict | None = None,
                    batch_size: int = 500) -> Path:
    """Compute the shipped ``classifier``'s features of ``images`` and ship them in fp16
    as ``<name>-features.safetensors`` + json (sha256, classifier and its sha256, count,
    dimension, and whatever ``extra`` holds). Both files are written atomically."""
    net = zoo.load(classifier, folder)
    feats = features(images, net, batch_size=batch_size).to(torch.float16).contiguous()
    path, meta_path = _paths(name, folder)
    with atomic_path(path) as tmp:
        save_file({"features": feats}, str(tmp))
    meta = {"name": name, "kind": "reference-features", "sha256": zoo.sha256(path),
            "bytes": path.stat().st_size, "count": int(feats.shape[0]),
            "dim": int(feats.shape[1]), "storage": "float16", "classifier": classifier,
            "classifier_sha256": zoo.info(classifier, folder)["sha256"], **(extra or {})}
    write_json(meta_path, meta)
    return path


def floor(name: str = "fashion-test", folder=zoo.WEIGHTS) -> dict:
    """The measured real-vs-real floor stored with a reference (see its json's "floor")."""
    return reference_info(name, folder).get("floor", {})


# ----------------------------------------------------------------------------------
# features
# ----------------------------------------------------------------------------------

def _classifier(classifier):
    from .perceptual import load

    if classifier is None:
        return load(DEFAULT_CLASSIFIER)
    if isinstance(classifier, str):
        return load(classifier)
    if not hasattr(classifier, "features"):
        raise TypeError(f"classifier must be a Classifier or a shipped name, got {classifier!r}")
    return classifier


def features(samples: Tensor, classifier=None, batch_size: int = 500) -> Tensor:
    """Penultimate classifier features ``(B, D)`` (float32, on the CPU) of images
    ``(B, 1, 28, 28)`` in [-1, 1], in batches under ``torch.inference_mode``.

    ``classifier``: a :class:`lab.perceptual.Classifier`, a shipped name, or ``None``
    for ``"fashion-classifier"``. Values are not clamped: clamp samples to [-1, 1]
    first if your images are meant to be.
    """
    from .perceptual import check_images

    check_images(samples, "samples")
    if len(samples) == 0:
        raise ValueError("samples is empty")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    net = _classifier(classifier)
    param = next(net.parameters())
    was = net.training
    net.eval()
    out = []
    try:
        with torch.inference_mode():
            for i in range(0, len(samples), int(batch_size)):
                x = samples[i:i + int(batch_size)].detach().to(param.device, param.dtype)
                if not torch.isfinite(x).all():
                    raise ValueError("samples contain NaN or Inf")
                out.append(net.features(x).float().cpu())
    finally:
        net.train(was)
    return torch.cat(out)


def _feature_pair(samples, reference, classifier, batch_size) -> tuple[Tensor, Tensor]:
    if isinstance(reference, str):
        meta = reference_info(reference)
        if classifier is None:
            classifier = meta["classifier"]
        elif isinstance(classifier, str) and classifier != meta["classifier"]:
            raise ValueError(f"reference {reference!r} holds {meta['classifier']!r} features; "
                             f"cannot compare them with {classifier!r} features")
        ref = _reference_features(reference)
    elif isinstance(reference, Tensor):
        ref = features(reference, classifier, batch_size).to(torch.float64)
    else:
        raise TypeError("reference must be a shipped reference's name (e.g. 'fashion-test') "
                        f"or a (B, 1, 28, 28) image tensor, got {type(reference).__name__}")
    feats = features(samples, classifier, batch_size).to(torch.float64)
    if feats.shape[1] != ref.shape[1]:
        raise ValueError(f"the classifier gives {feats.shape[1]} features but the reference "
                         f"has {ref.shape[1]}: use the reference's classifier")
    return feats, ref


# ----------------------------------------------------------------------------------
# FID
# ----------------------------------------------------------------------------------

def _as_features(f, what: str) -> Tensor:
    f = torch.as_tensor(f)
    if f.ndim != 2:
        raise ValueError(f"{what} must be features shaped (N, D), got {tuple(f.shape)}")
    return f.detach().to(torch.float64)


def _moments(f: Tensor) -> tuple[Tensor, Tensor]:
    return f.mean(0), torch.cov(f.T)


# per-process caches of reference-only quantities, keyed by ("shipped", name, sha256)
_CACHE: dict = {}
_CACHE_SIZE = 16


def _cached(key, compute):
    if key is None:
        return compute()
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = compute()
    return _CACHE[key]


def fid_from_features(f1: Tensor, f2: Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(N, D)``, float64."""
    f1, f2 = _as_features(f1, "f1"), _as_features(f2, "f2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    if len(f1) < 2 or len(f2) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(f1)} and {len(f2)}")
    mu1, s1 = _moments(f1)
    mu2, s2 = _moments(f2)
    return _frechet(mu1, s1, mu2, s2)


def _frechet(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor) -> float:
    eig = torch.linalg.eigvals(s1 @ s2)  # real, >= 0 up to rounding
    tr_sqrt = eig.sqrt().real.sum()
    return float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * tr_sqrt)


def fid(samples: Tensor, reference="fashion-test", classifier=None,
        batch_size: int = 500) -> float:
    """FID of ``samples`` ``(B, 1, 28, 28)`` in [-1, 1] against a reference.

    ``reference``: a shipped reference's name (``"fashion-test"``: the 10,000 test
    images) or a tensor of reference images. ``classifier``: ``None`` for the one the
    reference was made with (``"fashion-classifier"``), a shipped name, or a module.
    Quote the sample count; compare with ``floor()`` (the real-vs-real FID at 512 and
    2,048 samples).
    """
    feats, ref = _feature_pair(samples, reference, classifier, batch_size)
    if len(feats) < 2:
        raise ValueError(f"FID needs at least 2 samples, got {len(feats)}")
    mu1, s1 = _moments(feats)
    key = _reference_key(reference)
    mu2, s2 = _cached(None if key is None else (key, "moments"), lambda: _moments(ref))
    return _frechet(mu1, s1, mu2, s2)


def _reference_key(reference):
    if isinstance(reference, str):
        return ("shipped", reference, reference_info(reference)["sha256"])
    return None


# ----------------------------------------------------------------------------------
# KID
# ----------------------------------------------------------------------------------

def _kernel(a: Tensor, b: Tensor) -> Tensor:
    return (a @ b.T / a.shape[1] + 1).pow(3)


def _subset_masks(n: int, subsets: int, size: int, seed: int, stream: int) -> Tensor:
    """``(subsets, n)`` float64 0/1 rows, each marking ``size`` indices drawn without
    replacement; fixed by ``(seed, stream, n)``."""
    g = torch.Generator().manual_seed(derive_seed(seed, stream, n))
    mask = torch.zeros(subsets, n, dtype=torch.float64)
    for k in range(subsets):
        mask[k, torch.randperm(n, generator=g)[:size]] = 1.0
    return mask


def _masked_sums(a: Tensor, b: Tensor, ma: Tensor, mb: Tensor, block: int = 2048) -> Tensor:
    """``out[k] = sum_{i in A_k, j in B_k} k(a_i, b_j)`` for 0/1 masks ``ma``, ``mb``:
    ``diag(ma K mb^T)``, with the kernel ``K`` computed in ``block x block`` tiles."""
    out = torch.zeros(ma.shape[0], dtype=torch.float64)
    for i in range(0, len(a), block):
        for j in range(0, len(b), block):
            kb = _kernel(a[i:i + block], b[j:j + block])
            out += ((ma[:, i:i + block] @ kb) * mb[:, j:j + block]).sum(1)
    return out


def _reference_kid_term(ref: Tensor, subsets: int, size: int, seed: int
                        ) -> tuple[Tensor, Tensor]:
    """Reference subsets' masks and their mean off-diagonal kernel values."""
    masks = _subset_masks(len(ref), subsets, size, seed, 2)
    kyy = torch.empty(subsets, dtype=torch.float64)
    for k in range(subsets):
        y = ref[masks[k].bool()]
        kk = _kernel(y, y)
        kyy[k] = (kk.sum() - kk.diagonal().sum()) / (size * (size - 1))
    return masks, kyy


def kid_from_features(f1: Tensor, f2: Tensor, subsets: int = 100,
                      subset_size: int | None = None, seed: int = 0,
                      reference_key=None) -> KID:
    """KID between feature sets ``f1`` (samples) and ``f2`` (reference), float64.

    For each of ``subsets`` random pairs of subsets (``subset_size`` rows of each set,
    without replacement; default ``min(1000, len(f1), len(f2))``) the unbiased MMD^2
    with ``k(x, y) = (x.y / d + 1)^3``; returns their mean and standard deviation.
    The subsets are fixed by ``seed`` (and the set sizes). ``reference_key``, if given,
    is a hashable naming ``f2``: its reference-only terms (the costliest part) are then
    cached per process and reused by later calls with the same key.
    """
    f1, f2 = _as_features(f1, "f1"), _as_features(f2, "f2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    n, m = len(f1), len(f2)
    if int(subsets) < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    if subset_size is None:
        subset_size = min(1000, n, m)
    size = int(subset_size)
    if size < 2:
        raise ValueError(f"KID needs subset_size >= 2 (and so at least 2 samples), got {size}")
    if size > n:
        raise ValueError(f"KID subset_size={size} needs at least {size} samples, got {n}; "
                         f"pass more samples or a smaller subset_size")
    if size > m:
        raise ValueError(f"KID subset_size={size} exceeds the reference's {m} images")
    subsets = int(subsets)
    key = None if reference_key is None else (reference_key, "kid", subsets, size, seed)
    my, kyy = _cached(key, lambda: _reference_kid_term(f2, subsets, size, seed))
    mx = _subset_masks(n, subsets, size, seed, 1)
    diag = mx @ (f1.pow(2).sum(1) / f1.shape[1] + 1).pow(3)
    kxx = (_masked_sums(f1, f1, mx, mx) - diag) / (size * (size - 1))
    kxy = _masked_sums(f1, f2, mx, my) / (size * size)
    values = kxx + kyy - 2 * kxy
    std = float(values.std()) if subsets > 1 else float("nan")
    return KID(float(values.mean()), std)


def kid(samples: Tensor, reference="fashion-test", classifier=None, batch_size: int = 500,
        subsets: int = 100, subset_size: int | None = None, seed: int = 0) -> KID:
    """KID of ``samples`` ``(B, 1, 28, 28)`` against a reference: ``KID(mean, std)``.

    ``subset_size`` defaults to ``min(1000, B)`` (torchmetrics' 1000 when there are
    enough samples); an explicit ``subset_size`` larger than ``B`` is an error.
    ``reference``, ``classifier`` as in :func:`fid`. The reference's own kernel terms
    are cached per process, so repeated calls cost about ``B * 10,000`` kernel values.
    """
    feats, ref = _feature_pair(samples, reference, classifier, batch_size)
    return kid_from_features(feats, ref, subsets, subset_size, seed,
                             reference_key=_reference_key(reference))
