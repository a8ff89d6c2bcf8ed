"""Data: Fashion-MNIST from its IDX files, and 2-D toy distributions.

Fashion-MNIST
    ``images, labels = fashion_mnist("train")`` gives float32 images in [-1, 1] shaped
    ``(N, 1, 28, 28)`` (pixel ``p`` in 0..255 becomes ``p / 127.5 - 1``, so 0 -> -1 and
    255 -> 1 exactly) and int64 labels 0..9 (names in ``CLASSES``). The four gzipped IDX
    files are looked for, in this order, in

    1. ``root=`` when given, else ``$FASHION_MNIST_DIR`` when set (an explicit folder
       is never silently replaced by another one);
    2. ``DEBIAN_DIR``, where ``sudo apt install dataset-fashion-mnist`` puts them;
    3. the user cache ``cache_dir()`` (``$XDG_CACHE_HOME/sampler-lab/fashion-mnist``,
       default ``~/.cache/...``), which ``download=True`` (or ``FASHION_MNIST_DOWNLOAD=1``)
       fills from ``BASE_URL`` (override with ``$FASHION_MNIST_URL``).

    Parsed arrays are kept in memory (keyed by path, size and mtime), so training that
    re-reads the set pays for the gunzip once. A truncated or corrupt file raises
    ``CorruptFileError`` (a ``ValueError``) naming the file and the fix; no folder raises
    ``FashionMNISTNotFound`` (a ``FileNotFoundError``) listing the three ways to get one.

Toy distributions
    ``two_moons``, ``eight_gaussians``, ``checkerboard``, ``swiss_roll`` (and ``toy(name,
    n, seed)``, ``TOYS``) return ``(n, 2)`` float32 tensors, centred and scaled by fixed
    constants so that the noise-free distribution has mean about 0 and per-coordinate
    variance about 1. Randomness is counter-based: draw ``i`` of sample ``j`` is a hash
    (SplitMix64) of ``(key, j, i)``, with a 64-bit ``key`` from numpy's
    ``SeedSequence((seed, tag))`` and a fixed ``tag`` per distribution. So sample ``j``
    depends on ``(seed, j)`` alone, like ``lab.noise``: ``toy(name, 10, s)`` equals
    ``toy(name, 1000, s)[:10]``, and different seeds or distributions share nothing.
"""

from __future__ import annotations

import functools
import gzip
import http.client
import math
import os
import shutil
import struct
import sys
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .io import atomic_path

__all__ = [
    "CLASSES", "FILES", "BASE_URL", "DEBIAN_DIR", "CorruptFileError", "DownloadError",
    "FashionMNISTNotFound", "cache_dir", "download_fashion_mnist", "fashion_mnist",
    "find_fashion_mnist", "read_idx", "sigma_data", "data_rms",
    "TOYS", "toy", "two_moons", "eight_gaussians", "eight_gaussians_mixture",
    "checkerboard", "swiss_roll", "ring_mixture", "image_gaussian",
]

# ----------------------------------------------------------------------------------
# Fashion-MNIST
# ----------------------------------------------------------------------------------

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")

#: split -> (images file, labels file)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
ALL_FILES = tuple(name for pair in FILES.values() for name in pair)

#: the official source (Zalando Research); ``$FASHION_MNIST_URL`` overrides it.
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
#: where the Debian package ``dataset-fashion-mnist`` installs the files.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: the download cache; ``None`` means ``$XDG_CACHE_HOME/sampler-lab/fashion-mnist``
#: (default ``~/.cache/sampler-lab/fashion-mnist``). Tests monkeypatch it.
CACHE_DIR: Path | None = None

ENV_DIR = "FASHION_MNIST_DIR"
ENV_URL = "FASHION_MNIST_URL"
ENV_DOWNLOAD = "FASHION_MNIST_DOWNLOAD"
DOWNLOAD_TIMEOUT = 60.0  # seconds without data before a download gives up

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


class FashionMNISTNotFound(FileNotFoundError):
    """No folder with the four Fashion-MNIST files; the message says how to get one."""


class CorruptFileError(ValueError):
    """A Fashion-MNIST file that is not a complete, valid gzipped IDX file."""


class DownloadError(OSError):
    """A download failed (HTTP error, no connection, or a corrupt file from the server)."""


def cache_dir() -> Path:
    """The download cache: ``CACHE_DIR`` if set, else under ``$XDG_CACHE_HOME`` or ~/.cache."""
    if CACHE_DIR is not None:
        return Path(CACHE_DIR)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sampler-lab" / "fashion-mnist"


def _base_url() -> str:
    return os.environ.get(ENV_URL) or BASE_URL


def _env_download() -> bool:
    return os.environ.get(ENV_DOWNLOAD, "").strip().lower() in ("1", "true", "yes", "on")


def _missing(folder: Path) -> list[str]:
    return [name for name in ALL_FILES if not (folder / name).is_file()]


def _how_to_fix() -> str:
    return (
        "Get the files one of three ways:\n"
        f"  1. pass root='/path/to/folder' or set {ENV_DIR} to a folder holding "
        f"{', '.join(ALL_FILES)};\n"
        "  2. install the Debian package: sudo apt install dataset-fashion-mnist "
        f"(puts them in {DEBIAN_DIR});\n"
        f"  3. when online, pass download=True (or set {ENV_DOWNLOAD}=1) to fetch them from "
        f"{_base_url()} into {cache_dir()}."
    )


def find_fashion_mnist(root=None, download: bool = False) -> Path:
    """The folder holding the four Fashion-MNIST ``.gz`` files, downloading if allowed.

    Order: ``root``, else ``$FASHION_MNIST_DIR``; else ``DEBIAN_DIR``; else the cache.
    An explicit folder (``root`` or the env var) that lacks files is an error, or with
    ``download`` (``download=True`` or ``FASHION_MNIST_DOWNLOAD=1``) the download target.
    Only file presence is checked here; parsing validates the contents.
    """
    download = download or _env_download()
    explicit, how = (root, "root=") if root is not None else (os.environ.get(ENV_DIR), ENV_DIR)
    if explicit:
        folder = Path(explicit).expanduser()
        missing = _missing(folder)
        if not missing:
            return folder
        if download:
            return download_fashion_mnist(folder)
        raise FashionMNISTNotFound(
            f"Fashion-MNIST not found in {folder} (given by {how}): missing "
            f"{', '.join(missing)}.\n" + _how_to_fix())
    if not _missing(DEBIAN_DIR):
        return DEBIAN_DIR
    cache = cache_dir()
    if not _missing(cache):
        return cache
    if download:
        return download_fashion_mnist(cache)
    raise FashionMNISTNotFound(
        "Fashion-MNIST not found. Looked in:\n"
        f"  - ${ENV_DIR}: not set\n"
        f"  - {DEBIAN_DIR} (Debian package dataset-fashion-mnist): "
        f"{_describe_missing(DEBIAN_DIR)}\n"
        f"  - {cache} (download cache): {_describe_missing(cache)}\n" + _how_to_fix())


def _describe_missing(folder: Path) -> str:
    if not folder.is_dir():
        return "no such folder"
    return "missing " + ", ".join(_missing(folder))


def download_fashion_mnist(dest=None, url: str | None = None) -> Path:
    """Fetch the files ``dest`` lacks (default: ``cache_dir()``) from ``url``.

    ``url`` defaults to ``$FASHION_MNIST_URL`` or ``BASE_URL``. Each file is written
    atomically and only after it parses, so an interrupted or corrupt download never
    leaves a file behind. Raises ``DownloadError`` naming the URL on any failure.
    """
    dest = cache_dir() if dest is None else Path(dest).expanduser()
    base = (url or _base_url()).rstrip("/") + "/"
    for name in _missing(dest):
        _download_file(urllib.parse.urljoin(base, name), dest / name)
    return dest


def _download_file(url: str, path: Path) -> None:
    print(f"downloading {url} -> {path}", file=sys.stderr)
    hint = (f"Check the connection and the URL ({ENV_URL} overrides {BASE_URL}), or "
            "install the Debian package: sudo apt install dataset-fashion-mnist.")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, \
                atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                shutil.copyfileobj(response, f, length=1 << 20)
            try:
                read_idx(tmp)
            except CorruptFileError as e:
                raise DownloadError(f"downloaded {url} is not a valid IDX file "
                                    f"({e.reason}); nothing was saved. Try again. "
                                    + hint) from None
    except urllib.error.HTTPError as e:
        e.close()  # it holds the response's socket
        raise DownloadError(f"could not download {url}: HTTP {e.code} {e.reason}. "
                            + hint) from None
    except urllib.error.URLError as e:
        raise DownloadError(f"could not download {url}: {e.reason}. " + hint) from None
    except (http.client.HTTPException, TimeoutError, ConnectionError) as e:
        raise DownloadError(f"could not download {url}: {type(e).__name__}: {e}. "
                            + hint) from None


def read_idx(path) -> np.ndarray:
    """Parse one gzipped IDX file of unsigned bytes into a read-only uint8 array.

    Images (magic 2051) come back ``(N, rows, cols)``, labels (magic 2049) ``(N,)``.
    Checks the magic number, the dimensions and that the byte count matches them;
    anything wrong raises ``CorruptFileError`` naming the file and the fix.
    """
    path = Path(path)

    def corrupt(reason: str) -> CorruptFileError:
        err = CorruptFileError(
            f"{path} is not a valid Fashion-MNIST IDX file: {reason}. It is probably "
            "truncated or corrupt: delete it and download it again (download=True), or, "
            "if it came from the Debian package, reinstall it with "
            "sudo apt install --reinstall dataset-fashion-mnist.")
        err.reason = reason
        err.path = path
        return err

    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except EOFError:
        raise corrupt("the gzip stream ends early (truncated file)") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise corrupt(f"bad gzip data ({e})") from None
    if len(data) < 8:
        raise corrupt(f"only {len(data)} bytes after gunzip, too short for an IDX header")
    magic, n = struct.unpack(">II", data[:8])
    if magic == IMAGES_MAGIC:
        if len(data) < 16:
            raise corrupt(f"only {len(data)} bytes, too short for an image header")
        rows, cols = struct.unpack(">II", data[8:16])
        shape, header = (n, rows, cols), 16
        if (rows, cols) != (28, 28):
            raise corrupt(f"images are {rows}x{cols}, expected 28x28")
    elif magic == LABELS_MAGIC:
        shape, header = (n,), 8
    else:
        raise corrupt(f"magic number {magic} (0x{magic:08x}), expected {IMAGES_MAGIC} "
                      f"for images or {LABELS_MAGIC} for labels")
    expected = header + math.prod(shape)
    if len(data) != expected:
        raise corrupt(f"{len(data)} bytes after gunzip, but the header's dimensions "
                      f"{shape} need {expected}")
    arr = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    if magic == LABELS_MAGIC and n and int(arr.max()) >= len(CLASSES):
        raise corrupt(f"label {int(arr.max())} outside 0..{len(CLASSES) - 1}")
    return arr  # frombuffer over bytes is read-only already


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, size: int, mtime_ns: int) -> np.ndarray:
    return read_idx(path)


def _load(path: Path, magic: int) -> np.ndarray:
    st = path.stat()
    arr = _read_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)
    want = 3 if magic == IMAGES_MAGIC else 1
    if arr.ndim != want:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise CorruptFileError(f"{path} holds {'labels' if arr.ndim == 1 else 'images'}, "
                               f"expected {kind}; are the files renamed or mixed up?")
    return arr


def fashion_mnist(split: str = "train", root=None, download: bool = False
                  ) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` of a split: float32 ``(N, 1, 28, 28)`` in [-1, 1], int64 ``(N,)``.

    ``split`` is "train" (60,000) or "test" (10,000). ``root``/``download`` as in
    ``find_fashion_mnist``. Fresh tensors each call (safe to modify); the parsed bytes
    are cached in memory.
    """
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    folder = find_fashion_mnist(root, download)
    images_file, labels_file = (folder / name for name in FILES[split])
    images = _load(images_file, IMAGES_MAGIC)
    labels = _load(labels_file, LABELS_MAGIC)
    if len(images) != len(labels):
        raise CorruptFileError(f"{images_file} holds {len(images)} images but {labels_file} "
                               f"{len(labels)} labels; one of them is from another set or "
                               "damaged: reinstall or re-download both.")
    x = images.astype(np.float32)  # a fresh, writable copy
    x /= 127.5
    x -= 1.0
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def sigma_data(images: Tensor) -> float:
    """The global standard deviation of a data set (EDM's ``sigma_data``); 0.706 for
    Fashion-MNIST's training images in [-1, 1]."""
    return float(images.detach().float().std(correction=0))


def data_rms(images: Tensor) -> float:
    """The global root mean square of a data set (an EDM model's ``data_rms``, for the
    ``"rms"`` noise-level estimate); 0.826 for Fashion-MNIST's training images."""
    return float(images.detach().double().pow(2).mean().sqrt())


# ----------------------------------------------------------------------------------
# 2-D toy distributions
# ----------------------------------------------------------------------------------

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _uniforms(seed: int, tag: int, n: int, k: int) -> Tensor:
    """``(n, k)`` float64 uniforms in (0, 1); entry ``[j, i]`` depends on (seed, tag, j, i).

    SplitMix64's output number ``j * k + i`` for a 64-bit key from ``SeedSequence``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    key = np.random.SeedSequence([int(seed), tag]).generate_state(1, dtype=np.uint64)[0]
    z = key + (np.arange(int(n) * k, dtype=np.uint64) + np.uint64(1)) * _GAMMA
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    u = ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53
    return torch.from_numpy(u.reshape(int(n), k))


def _normal2(u1: Tensor, u2: Tensor) -> Tensor:
    """Two independent standard normals per row from two uniforms (Box-Muller)."""
    r = torch.sqrt(-2.0 * torch.log(u1))
    theta = 2.0 * math.pi * u2
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1)


# Population moments of the noise-free sklearn-style moons: outer (cos t, sin t), inner
# (1 - cos t, 1/2 - sin t), t ~ U[0, pi], each moon with probability 1/2.
_MOONS_MEAN = (0.5, 0.25)
_MOONS_SCALE = math.sqrt((0.75 + (0.5 - 4 / math.pi ** 2) + (2 / math.pi - 0.25) ** 2) / 2)


def two_moons(n: int, seed: int = 0, noise: float = 0.05) -> Tensor:
    """Two interleaved half circles (as sklearn's ``make_moons``), ``(n, 2)`` float32.

    Each sample picks a moon with probability 1/2 and ``t ~ U[0, pi]``: outer moon
    ``(cos t, sin t)``, inner ``(1 - cos t, 1/2 - sin t)``; plus Gaussian noise of std
    ``noise`` in those units. Then centred (mean (0.5, 0.25)) and divided by 0.705 so
    the noise-free set has per-coordinate variance 1 on average: x spans about
    [-2.1, 2.1].
    """
    u = _uniforms(seed, 1, n, 4)
    t = math.pi * u[:, 0]
    inner = u[:, 1] < 0.5
    x = torch.where(inner, 1.0 - torch.cos(t), torch.cos(t))
    y = torch.where(inner, 0.5 - torch.sin(t), torch.sin(t))
    pts = torch.stack([x, y], dim=-1) + noise * _normal2(u[:, 2], u[:, 3])
    pts = (pts - torch.tensor(_MOONS_MEAN, dtype=torch.float64)) / _MOONS_SCALE
    return pts.float()


def eight_gaussians(n: int, seed: int = 0, radius: float = 1.4, std: float = 0.1) -> Tensor:
    """Eight equal Gaussians at angles ``k * pi/4`` on a circle, ``(n, 2)`` float32.

    Isotropic std ``std``; per-coordinate variance ``radius^2/2 + std^2`` (0.99 by
    default). ``eight_gaussians_mixture`` gives the same distribution as an exact model.
    """
    u = _uniforms(seed, 2, n, 3)
    k = torch.clamp((u[:, 0] * 8).floor(), max=7)
    angle = k * (math.pi / 4)
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    return (centres + std * _normal2(u[:, 1], u[:, 2])).float()


def eight_gaussians_mixture(radius: float = 1.4, std: float = 0.1):
    """The exact ``lab.models.GaussianMixture`` that ``eight_gaussians`` samples from."""
    from .models import GaussianMixture

    angle = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    covs = (std ** 2) * torch.eye(2, dtype=torch.float64).expand(8, 2, 2).clone()
    return GaussianMixture(means, covs, torch.full((8,), 1 / 8, dtype=torch.float64))


def ring_mixture():
    """An exact 2-D test problem with hard features: a ring of six tangentially stretched
    components of unequal weight (radius 5), a broad tilted one in the middle, and a small
    tight mode far out at (11, 9). A ``lab.models.GaussianMixture`` of 8 components."""
    from .models import GaussianMixture

    def cov(angle, major, minor):
        c, s = math.cos(angle), math.sin(angle)
        u = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        return u @ torch.diag(torch.tensor([major, minor], dtype=torch.float64)) @ u.T

    angles = [2 * math.pi * k / 6 for k in range(6)]
    means = [[5 * math.cos(a), 5 * math.sin(a)] for a in angles] + [[0.0, 0.0], [11.0, 9.0]]
    covs = [cov(a + math.pi / 2, 0.6, 0.04) for a in angles] + [cov(0.5, 1.0, 0.25),
                                                                 cov(0.0, 0.05, 0.05)]
    weights = [0.20, 0.15, 0.12, 0.10, 0.08, 0.05, 0.25, 0.05]
    return GaussianMixture(torch.tensor(means), torch.stack(covs), torch.tensor(weights))


def image_gaussian(dim: int = 784, scale: float = 80.0, exponent: float = 1.3, seed: int = 0):
    """A zero-mean ``lab.models.Gaussian`` in ``dim`` dimensions whose spectrum is spread
    like image data: eigenvalues ``scale * k^-exponent``, k = 1..dim.

    The defaults are the power law of Fashion-MNIST's pixel covariance (images in
    [-1, 1]; fit over principal components 5 to 400 of the test set: 80 k^-1.32), so the
    ODE is as stiff as an image model's: variances from 80 down to 0.014. The eigenbasis
    is a random rotation fixed by ``seed``, not the pixel axes, because rules with
    per-coordinate scaling (Adam) would otherwise see an easier, diagonal problem.
    """
    from .models import Gaussian
    from .seeding import derive_seed

    g = torch.Generator().manual_seed(derive_seed(seed, dim))
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    q = q * r.diagonal().sign()  # the Haar-distributed rotation, not QR's sign convention
    lam = scale * torch.arange(1, dim + 1, dtype=torch.float64) ** -exponent
    cov = (q * lam) @ q.T
    return Gaussian(torch.zeros(dim, dtype=torch.float64), (cov + cov.T) / 2)


def checkerboard(n: int, seed: int = 0) -> Tensor:
    """Uniform on the 8 black squares of a 4x4 checkerboard, ``(n, 2)`` float32.

    The board is ``[-sqrt 3, sqrt 3]^2`` (cells of side sqrt(3)/2), so each coordinate is
    uniform on it: mean 0, variance 1. A point is on the board where
    ``floor(x) + floor(y)`` is even in cell units.
    """
    u = _uniforms(seed, 3, n, 3)
    x = 4.0 * u[:, 0] - 2.0                      # cell units, [-2, 2)
    parity = torch.remainder(torch.floor(x), 2.0)
    row = torch.floor(2.0 * u[:, 1]).clamp(max=1)
    y = -2.0 + 2.0 * row + parity + u[:, 2]      # floor(y) has floor(x)'s parity
    return (torch.stack([x, y], dim=-1) * (math.sqrt(3) / 2)).float()


# Population moments of (t cos t, t sin t), t ~ U[1.5 pi, 4.5 pi]: mean (2, 2/(3 pi))
# exactly; the per-coordinate variances are 43.86 and 48.32 (numerical quadrature).
_ROLL_MEAN = (2.0, 2.0 / (3.0 * math.pi))
_ROLL_SCALE = 6.789094610971587


def swiss_roll(n: int, seed: int = 0, noise: float = 0.5) -> Tensor:
    """The 2-D Swiss roll ``(t cos t, t sin t)``, ``t ~ U[1.5 pi, 4.5 pi]``, ``(n, 2)`` float32.

    As sklearn's ``make_swiss_roll`` seen from the side, with Gaussian noise of std
    ``noise`` in those units (where the arms are ~2 pi apart); then centred and divided
    by 6.79 so the noise-free roll has per-coordinate variance 1 on average.
    """
    u = _uniforms(seed, 4, n, 3)
    t = 1.5 * math.pi * (1.0 + 2.0 * u[:, 0])
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=-1)
    pts = pts + noise * _normal2(u[:, 1], u[:, 2])
    return ((pts - torch.tensor(_ROLL_MEAN, dtype=torch.float64)) / _ROLL_SCALE).float()


TOYS = {
    "two_moons": two_moons,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "swiss_roll": swiss_roll,
}


def toy(name: str, n: int, seed: int = 0, **kwargs) -> Tensor:
    """``(n, 2)`` samples of the toy distribution ``name`` (a key of ``TOYS``)."""
    try:
        fn = TOYS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown toy distribution {name!r}; "
                         f"choose one of {', '.join(sorted(TOYS))}") from None
    return fn(n, seed, **kwargs)
