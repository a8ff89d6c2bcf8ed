"""Feature networks for Fashion-MNIST, and a perceptual loss built on them.

Two small CNN classifiers ship in ``lab/weights/``, trained independently (different
seeds *and* architectures) so that a model trained against one network's features can
be judged by the other's:

- ``fashion-classifier``: its penultimate activations are the FID/KID features
  (``lab.metrics.fid``, ``lab.metrics.kid``; fast.ai course22p2 style);
- ``fashion-perceptual``: its intermediate feature maps serve :func:`perceptual_loss`.

    net = lab.perceptual.load("fashion-perceptual")     # = lab.zoo.load(...), frozen
    d = lab.perceptual.perceptual_loss(net, a, b)        # (B,), differentiable in a and b

Both take images ``(B, 1, 28, 28)`` in [-1, 1] (``lab.data.fashion_mnist``'s scaling).
A :class:`Classifier` is built from its ``config`` (a stack of conv stages, then global
average pooling, a hidden layer and the 10-way output):

- ``forward(x)`` -> logits ``(B, 10)``;
- ``features(x)`` -> the penultimate activations ``(B, hidden)``, the FID features;
- ``activations(x)`` -> one feature map per conv stage (after its last activation,
  before the downsampling), the perceptual-loss layers.

:func:`train_classifier` is the supervised loop that made the shipped weights
(``experiments/train_classifiers.py`` is the command).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import zoo
from .registry import register
from .seeding import derive_seed

__all__ = ["Classifier", "CLASSIFIER", "PERCEPTUAL", "load", "perceptual_loss",
           "normalize_channels", "train_classifier", "accuracy", "check_images",
           "augment"]

#: the FID/KID feature network's architecture (``fashion-classifier``).
CLASSIFIER = {"channels": [32, 64, 128], "kernel_sizes": [3, 3, 3], "convs_per_stage": 1,
              "norm": "batch", "downsample": "maxpool", "hidden": 256, "dropout": 0.2,
              "head_grid": 3}
#: the perceptual-loss network's architecture (``fashion-perceptual``): other widths,
#: a 5x5 stem, strided convolutions instead of max pooling, a narrower hidden layer.
#: (GroupNorm is supported, ``norm="group"``, but learned more slowly here.)
PERCEPTUAL = {"channels": [24, 48, 96], "kernel_sizes": [5, 3, 3], "convs_per_stage": 1,
              "norm": "batch", "downsample": "stride", "hidden": 192, "dropout": 0.2,
              "head_grid": 3}


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


@register("classifier")
class Classifier(nn.Module):
    """A small CNN classifier for 1 x 28 x 28 images in [-1, 1].

    Stage ``i`` is ``convs_per_stage`` (an int, or one per stage) times
    conv(``kernel_sizes[i]``) -> norm -> ReLU at ``channels[i]`` channels. Between stages
    the resolution halves (28 -> 14 -> 7 for
    three stages): by 2x2 max pooling (``downsample="maxpool"``) or by giving the next
    stage's first conv stride 2 (``"stride"``). Then adaptive average pooling to a
    ``head_grid`` x ``head_grid`` grid (1: global pooling), flattened, a hidden linear
    layer with ReLU (the ``features``), dropout and the linear output layer.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128),
                 kernel_sizes: Sequence[int] = (3, 3, 3), convs_per_stage: int | Sequence[int] = 1,
                 norm: str = "batch", downsample: str = "maxpool", hidden: int = 256,
                 dropout: float = 0.2, num_classes: int = 10, in_channels: int = 1,
                 head_grid: int = 1):
        super().__init__()
        channels, kernel_sizes = [int(c) for c in channels], [int(k) for k in kernel_sizes]
        if len(channels) != len(kernel_sizes) or not channels:
            raise ValueError("channels and kernel_sizes need the same, non-zero length")
        if downsample not in ("maxpool", "stride"):
            raise ValueError(f"downsample must be 'maxpool' or 'stride', got {downsample!r}")
        convs = ([int(convs_per_stage)] * len(channels) if isinstance(convs_per_stage, int)
                 else [int(c) for c in convs_per_stage])
        if len(convs) != len(channels) or min(convs) < 1:
            raise ValueError(f"convs_per_stage must be >= 1 per stage, got {convs_per_stage}")
        if any(k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel sizes must be odd, got {kernel_sizes}")
        self._config = {"channels": channels, "kernel_sizes": kernel_sizes,
                        "convs_per_stage": (convs_per_stage if isinstance(convs_per_stage, int)
                                            else convs), "norm": norm,
                        "downsample": downsample, "hidden": int(hidden),
                        "dropout": float(dropout), "num_classes": int(num_classes),
                        "in_channels": int(in_channels), "head_grid": int(head_grid)}
        self.stages = nn.ModuleList()
        c_in = in_channels
        for i, (c, k, n) in enumerate(zip(channels, kernel_sizes, convs)):
            layers = []
            for j in range(n):
                stride = 2 if (downsample == "stride" and i > 0 and j == 0) else 1
                layers += [nn.Conv2d(c_in if j == 0 else c, c, k, stride=stride,
                                     padding=k // 2, bias=False),
                           _norm(norm, c), nn.ReLU(inplace=True)]
            self.stages.append(nn.Sequential(*layers))
            c_in = c
        self.pool = nn.MaxPool2d(2) if downsample == "maxpool" else nn.Identity()
        self.head_pool = nn.AdaptiveAvgPool2d(int(head_grid))
        self.hidden = nn.Sequential(nn.Linear(channels[-1] * int(head_grid) ** 2, hidden),
                                    nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_classes)

    @property
    def config(self) -> dict:
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict) -> Classifier:
        return cls(**config)

    def _trunk(self, x: Tensor, keep: bool):
        check_images(x)
        maps = []
        h = x
        for i, stage in enumerate(self.stages):
            if i > 0:
                h = self.pool(h)
            h = stage(h)
            if keep:
                maps.append(h)
        return h, maps

    def activations(self, x: Tensor) -> list[Tensor]:
        """One feature map per stage, ``(B, channels[i], H_i, W_i)``: the perceptual layers."""
        return self._trunk(x, keep=True)[1]

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``(B, hidden)`` (after the hidden ReLU): FID features."""
        h, _ = self._trunk(x, keep=False)
        return self.hidden(self.head_pool(h).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``."""
        return self.out(self.dropout(self.features(x)))


def check_images(x, what: str = "images") -> None:
    """Raise a clear ``ValueError`` unless ``x`` is a float tensor ``(B, 1, 28, 28)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"{what} must be shaped (B, 1, 28, 28) (Fashion-MNIST in [-1, 1]), "
                         f"got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be floating point in [-1, 1], got {x.dtype}")


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, digest: str) -> Classifier:
    return zoo.load(name)


def load(name: str = "fashion-classifier") -> Classifier:
    """A shipped feature network, checksum verified, in eval mode with frozen weights.

    Cached per (name, recorded sha256): repeated calls return the same module, so do not
    modify it (use ``lab.zoo.load`` for a private copy).
    """
    return _load_cached(name, zoo.info(name)["sha256"])


def _resolve(net) -> Classifier:
    if net is None:
        return load("fashion-perceptual")
    if isinstance(net, str):
        return load(net)
    if not hasattr(net, "activations"):
        raise TypeError(f"net must be a Classifier or a shipped model's name, got {net!r}")
    return net


@contextlib.contextmanager
def _frozen(net: nn.Module):
    """Eval mode and no parameter gradients for the duration; restores both afterwards."""
    training = net.training
    flags = [(p, p.requires_grad) for p in net.parameters()]
    net.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield net
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        net.train(training)


def normalize_channels(h: Tensor, eps: float = 1e-6) -> Tensor:
    """``h / sqrt(|h|^2 + eps^2)`` with the norm over channels at each location.

    Unit vectors where the activation is large, a smooth shrink to 0 where it is
    ~0 (ReLU maps are often exactly 0; plain ``h / |h|`` has no gradient there).
    """
    return h * torch.rsqrt(h.pow(2).sum(1, keepdim=True) + eps * eps)


def perceptual_loss(net, a: Tensor, b: Tensor, weights: Sequence[float] | None = None,
                    eps: float = 1e-6) -> Tensor:
    """LPIPS-style distance between two image batches, per sample ``(B,)``.

    For each stage ``l`` of ``net.activations`` (feature maps ``f_l``, ``C_l`` channels):

        d_l = mean over (h, w) of  sum over c of  (n(f_l(a)) - n(f_l(b)))^2
        d   = sum_l  w_l * d_l

    with ``n`` the per-location channel normalisation :func:`normalize_channels` (as in
    LPIPS, Zhang et al. 2018, but with uniform channel weights instead of learned ones),
    so each ``d_l`` lies in [0, 4]; ``weights`` (default all 1) weigh the layers.

    ``net`` is a :class:`Classifier`, a shipped model's name, or ``None`` for
    ``"fashion-perceptual"``. The network is frozen while it runs (eval mode, no
    parameter gradients; restored afterwards); gradients flow to ``a`` and ``b``.
    Identical inputs give exactly 0. For a training loss use
    ``functools.partial(perceptual_loss, net)``.
    """
    net = _resolve(net)
    check_images(a, "a")
    check_images(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    with _frozen(net):
        fa, fb = net.activations(a), net.activations(b)
    if weights is None:
        weights = [1.0] * len(fa)
    if len(weights) != len(fa):
        raise ValueError(f"{len(weights)} weights for {len(fa)} layers")
    total = a.new_zeros(a.shape[0])
    for w, ha, hb in zip(weights, fa, fb):
        diff = normalize_channels(ha, eps) - normalize_channels(hb, eps)
        total = total + w * diff.pow(2).sum(1).mean((1, 2))
    return total


# ----------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------

def augment(x: Tensor, generator: torch.Generator, max_shift: int = 2,
            flip: bool = True) -> Tensor:
    """Random translation by up to ``max_shift`` pixels (background -1 fills in) and a
    random horizontal flip, independently per image."""
    b = x.shape[0]
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    if max_shift:
        s = max_shift
        padded = F.pad(x, (s, s, s, s), value=-1.0)
        dy = torch.randint(0, 2 * s + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * s + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(28))[:, :, None]  # (B, 28, 1)
        cols = (dx[:, None] + torch.arange(28))[:, None, :]  # (B, 1, 28)
        x = padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)
    return x


@torch.inference_mode()
def accuracy(net: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``net`` (in eval mode) on a labelled set."""
    was = net.training
    net.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = net(images[i:i + batch_size])
        correct += int((logits.argmax(1) == labels[i:i + batch_size]).sum())
    net.train(was)
    return correct / len(images)


def train_classifier(net: Classifier, images: Tensor, labels: Tensor, *, epochs: int = 3,
                     batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 0.05,
                     label_smoothing: float = 0.1, seed: int = 0, flip: bool = True,
                     max_shift: int = 0, progress: bool = True,
                     desc: str = "classifier") -> dict:
    """Supervised training: AdamW, one-cycle learning rate, cross-entropy with label
    smoothing, light augmentation (:func:`augment`: random horizontal flips, and shifts
    by up to ``max_shift`` pixels; shifts slowed learning too much for a 3-epoch budget).
    Seeded: data order, flips and dropout come from ``seed`` (initialisation is the
    caller's). Returns ``{"steps", "epochs", "final_loss", "wall_seconds"}`` (final
    loss = mean of the last 100 steps' batch losses)."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(derive_seed(seed, 0))
    torch.manual_seed(derive_seed(seed, 1))  # dropout
    steps_per_epoch = math.ceil(len(images) / batch_size)
    total = epochs * steps_per_epoch
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total,
                                                pct_start=0.25)
    net.train()
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc, disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for i in range(0, len(images), batch_size):
            idx = order[i:i + batch_size]
            x, y = images[idx], labels[idx]
            if flip or max_shift:
                x = augment(x, g, max_shift=max_shift, flip=flip)
            loss = F.cross_entropy(net(x), y, label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update()
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{sum(losses[-20:]) / 20:.4f}")
    bar.close()
    net.eval()
    tail = losses[-100:]
    return {"steps": len(losses), "epochs": epochs, "final_loss": round(sum(tail) / len(tail), 6),
            "wall_seconds": round(time.perf_counter() - start, 1)}
