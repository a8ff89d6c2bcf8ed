"""lab.data: the Fashion-MNIST loader (real files, errors, download) and the 2-D toys."""

import functools
import gzip
import http.server
import math
import os
import struct
import threading
from pathlib import Path

import pytest
import torch

from lab import data

NAMES = data.ALL_FILES


# ---------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def real_dir() -> Path:
    """The folder the default search finds (the Debian package here); skip without it,
    except under CI, which installs it and must test it."""
    try:
        return data.find_fashion_mnist()
    except data.FashionMNISTNotFound as e:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"Fashion-MNIST not installed: {e}")


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No env vars, an empty Debian folder and an empty cache under tmp_path."""
    for var in (data.ENV_DIR, data.ENV_URL, data.ENV_DOWNLOAD, "http_proxy", "HTTP_PROXY",
                "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    return tmp_path


def link_all(src: Path, dst: Path, skip=()) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        if name not in skip:
            (dst / name).symlink_to(src / name)
    return dst


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """``serve(folder) -> base URL`` of a local HTTP server on 127.0.0.1 (port 0)."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------- the real files

@pytest.mark.parametrize("split, n", [("train", 60_000), ("test", 10_000)])
def test_real_files(real_dir, split, n):
    images, labels = data.fashion_mnist(split, root=real_dir)
    assert images.shape == (n, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert images.min().item() == -1.0 and images.max().item() == 1.0
    assert torch.bincount(labels).tolist() == [n // 10] * 10
    assert len(data.CLASSES) == 10
    # pixel values are p / 127.5 - 1 for integers p in 0..255
    p = (images[:100] + 1) * 127.5
    assert (p - p.round()).abs().max() < 1e-4
    assert len(torch.unique(images[:1000])) <= 256


def test_fresh_tensors_and_sigma_data(real_dir):
    a, la = data.fashion_mnist("test", root=real_dir)
    a.add_(5.0)
    la.zero_()
    b, lb = data.fashion_mnist("test", root=real_dir)  # the cache was not touched
    assert b.max().item() == 1.0 and lb.max().item() == 9
    assert 0.68 < data.sigma_data(b) < 0.74


def test_env_dir_is_used(real_dir, isolated, monkeypatch):
    folder = link_all(real_dir, isolated / "env")
    monkeypatch.setenv(data.ENV_DIR, str(folder))
    assert data.find_fashion_mnist() == folder
    assert data.fashion_mnist("test")[0].shape == (10_000, 1, 28, 28)


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        data.fashion_mnist("validation")


# ------------------------------------------------------------------------ not found

def test_missing_folder_says_how_to_fix(isolated):
    with pytest.raises(FileNotFoundError) as info:
        data.fashion_mnist("train")
    assert isinstance(info.value, data.FashionMNISTNotFound)
    msg = str(info.value)
    for hint in ("root=", "FASHION_MNIST_DIR", "sudo apt install dataset-fashion-mnist",
                 "download=True", "FASHION_MNIST_DOWNLOAD=1", str(isolated / "cache")):
        assert hint in msg, (hint, msg)


def test_incomplete_explicit_root(real_dir, isolated):
    folder = link_all(real_dir, isolated / "partial", skip=("t10k-labels-idx1-ubyte.gz",))
    with pytest.raises(data.FashionMNISTNotFound, match="t10k-labels-idx1-ubyte.gz") as info:
        data.fashion_mnist("test", root=folder)
    assert "sudo apt install dataset-fashion-mnist" in str(info.value)


# ---------------------------------------------------------------------- corrupt files

def test_truncated_gz(real_dir, isolated):
    folder = link_all(real_dir, isolated / "trunc", skip=("t10k-images-idx3-ubyte.gz",))
    bad = folder / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes((real_dir / bad.name).read_bytes()[:100_000])
    with pytest.raises(ValueError) as info:
        data.fashion_mnist("test", root=folder)
    msg = str(info.value)
    assert str(bad) in msg and "truncated" in msg
    assert "download" in msg and "reinstall" in msg


def _write_gz(path: Path, raw: bytes) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(raw)
    return path


def test_wrong_magic(real_dir, isolated):
    folder = link_all(real_dir, isolated / "magic", skip=("t10k-labels-idx1-ubyte.gz",))
    raw = gzip.decompress((real_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    bad = _write_gz(folder / "t10k-labels-idx1-ubyte.gz", struct.pack(">I", 2050) + raw[4:])
    with pytest.raises(ValueError, match="magic number 2050") as info:
        data.fashion_mnist("test", root=folder)
    assert str(bad) in str(info.value)


def test_other_corruptions(real_dir, tmp_path):
    raw = gzip.decompress((real_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    cases = {
        "extra.gz": (_write_gz(tmp_path / "extra.gz", raw + b"\0"), "bytes after gunzip"),
        "short.gz": (_write_gz(tmp_path / "short.gz", raw[:-1]), "bytes after gunzip"),
        "header.gz": (_write_gz(tmp_path / "header.gz", raw[:5]), "too short"),
        "label.gz": (_write_gz(tmp_path / "label.gz", raw[:8] + b"\x0a" * (len(raw) - 8)),
                     "outside 0..9"),
    }
    plain = tmp_path / "plain.gz"
    plain.write_bytes(raw)
    cases["plain.gz"] = (plain, "bad gzip")
    for path, reason in cases.values():
        with pytest.raises(data.CorruptFileError, match=reason) as info:
            data.read_idx(path)
        assert str(path) in str(info.value)


def test_swapped_files(real_dir, isolated):
    folder = isolated / "swapped"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").symlink_to(real_dir / "t10k-labels-idx1-ubyte.gz")
    (folder / "t10k-labels-idx1-ubyte.gz").symlink_to(real_dir / "t10k-images-idx3-ubyte.gz")
    for name in data.FILES["train"]:
        (folder / name).symlink_to(real_dir / name)
    with pytest.raises(ValueError, match="expected images"):
        data.fashion_mnist("test", root=folder)


# ------------------------------------------------------------------------- download

def test_download_from_local_server(real_dir, isolated, serve, monkeypatch):
    served = link_all(real_dir, isolated / "www")
    monkeypatch.setenv(data.ENV_URL, serve(served))
    with pytest.raises(data.FashionMNISTNotFound):  # never downloads unless asked
        data.find_fashion_mnist()
    images, labels = data.fashion_mnist("test", download=True)
    cache = isolated / "cache"
    assert sorted(p.name for p in cache.iterdir()) == sorted(NAMES)  # no temp files left
    for name in NAMES:
        assert (cache / name).read_bytes() == (real_dir / name).read_bytes()
    ref_images, ref_labels = data.fashion_mnist("test", root=real_dir)
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    assert data.find_fashion_mnist() == cache  # found without downloading again


def test_download_env_var_into_explicit_root(real_dir, isolated, serve, monkeypatch):
    served = isolated / "www"
    served.mkdir()
    for name in data.FILES["test"]:  # only the small files need serving
        (served / name).symlink_to(real_dir / name)
    target = link_all(real_dir, isolated / "mine", skip=data.FILES["test"])
    monkeypatch.setenv(data.ENV_URL, serve(served))
    monkeypatch.setenv(data.ENV_DOWNLOAD, "1")
    assert data.find_fashion_mnist(root=target) == target
    assert all((target / name).is_file() and not (target / name).is_symlink()
               for name in data.FILES["test"])


def test_download_404(isolated, serve, monkeypatch):
    empty = isolated / "www"
    empty.mkdir()
    url = serve(empty)
    monkeypatch.setenv(data.ENV_URL, url)
    with pytest.raises(data.DownloadError, match="HTTP 404") as info:
        data.fashion_mnist("train", download=True)
    assert url in str(info.value) and data.ENV_URL in str(info.value)
    cache = isolated / "cache"
    assert not cache.exists() or not any(cache.iterdir())


def test_download_corrupt_file_is_not_kept(real_dir, isolated, serve):
    www = isolated / "www"
    www.mkdir()
    for name in NAMES:
        (www / name).write_bytes((real_dir / name).read_bytes()[:2000])
    with pytest.raises(data.DownloadError, match="not a valid IDX file"):
        data.download_fashion_mnist(isolated / "dl", url=serve(www))
    assert not any((isolated / "dl").iterdir())


# ---------------------------------------------------------------------------- toys

@pytest.mark.parametrize("name", sorted(data.TOYS))
def test_toy_basics(name):
    x = data.toy(name, 20_000, seed=0)
    assert x.shape == (20_000, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert torch.equal(x, data.toy(name, 20_000, seed=0))
    assert not torch.equal(x[:100], data.toy(name, 100, seed=1))
    # sample j depends on (seed, j) alone
    assert torch.equal(x[:37], data.toy(name, 37, seed=0))
    assert x.mean(0).abs().max() < 0.05
    var = x.var(0)
    assert 0.4 < var.min() and var.max() < 1.6 and abs(var.mean().item() - 1) < 0.15
    assert data.toy(name, 0, seed=0).shape == (0, 2)


def test_toys_do_not_share_streams():
    a = data.two_moons(1000, seed=0, noise=0.0)
    b = data.two_moons(1000, seed=1, noise=0.0)
    assert (a - b).abs().sum(1).gt(1e-6).float().mean() > 0.99


def test_two_moons_shape():
    x = data.two_moons(4000, seed=3, noise=0.05).double()
    raw = x * data._MOONS_SCALE + torch.tensor(data._MOONS_MEAN, dtype=torch.float64)
    outer = (raw.norm(dim=1) - 1).abs()
    inner = ((raw - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs()
    assert torch.minimum(outer, inner).max() < 0.3  # 6 noise std
    on_outer = (outer < inner) & (raw[:, 1] > -0.3)
    assert 0.45 < on_outer.double().mean() < 0.55  # two moons, about half each
    assert x[:, 0].min() < -1.9 and x[:, 0].max() > 1.9  # spans about [-2.1, 2.1]
    clean = data.two_moons(1000, seed=3, noise=0.0)
    assert clean[:, 0].min() >= -1.5 / data._MOONS_SCALE - 1e-5


def test_eight_gaussians_and_mixture():
    x = data.eight_gaussians(4000, seed=0).double()
    mix = data.eight_gaussians_mixture()
    d = torch.cdist(x, mix.means)
    nearest = d.argmin(1)
    assert d.min(1).values.max() < 0.6  # 6 std
    assert torch.bincount(nearest, minlength=8).min() > 400
    assert torch.allclose(mix.means.norm(dim=1), torch.full((8,), 1.4, dtype=torch.float64))


def test_checkerboard_cells():
    x = data.checkerboard(4000, seed=0).double() / (math.sqrt(3) / 2)  # cell units
    assert x.abs().max() <= 2.0
    assert torch.all((x.floor().sum(1) % 2) == 0)


def test_unknown_toy_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown toy.*checkerboard"):
        data.toy("nine_gaussians", 10, 0)
    with pytest.raises(ValueError, match="seed"):
        data.toy("two_moons", 10, -1)
    with pytest.raises(ValueError, match="n must"):
        data.toy("two_moons", 2.5, 0)

