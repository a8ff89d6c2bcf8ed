"""The shipped feature networks, the perceptual loss, and FID/KID against fashion-test."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

import lab
from lab import fid as fidlib
from lab import perceptual, zoo
from lab.data import fashion_mnist

NETS = ("fashion-classifier", "fashion-perceptual")
N_ACCURACY = 2000  # a fixed subset: the first 2,000 test images
N_FID = 512


@pytest.fixture(scope="module", autouse=True)
def threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def test_set():
    return fashion_mnist("test")


@pytest.fixture(scope="module")
def real():
    """512 fixed random train images (disjoint from the reference, which is the test set)."""
    images, _ = fashion_mnist("train")
    g = torch.Generator().manual_seed(1234)
    return images[torch.randperm(len(images), generator=g)[:N_FID]]


def blur(x):
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


# ----------------------------------------------------------------------------------
# shipped weights
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NETS)
def test_network_loads_and_checksum_verifies(name):
    meta = zoo.info(name)
    assert zoo.sha256(zoo.WEIGHTS / f"{name}.safetensors") == meta["sha256"]
    net = zoo.load(name)
    assert isinstance(net, perceptual.Classifier) and meta["kind"] == "classifier"
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert perceptual.Classifier.from_config(net.config).config == net.config
    x = torch.zeros(2, 1, 28, 28)
    assert net(x).shape == (2, 10)
    assert net.features(x).shape == (2, net.config["hidden"])
    assert len(net.activations(x)) == len(net.config["channels"])
    for key in ("command", "steps", "epochs", "final_loss", "wall_seconds", "test_accuracy"):
        assert key in meta["training"], key
    assert meta["bytes"] < 2_000_000


def test_the_two_networks_differ():
    a, b = (zoo.info(n) for n in NETS)
    assert a["config"] != b["config"]
    assert a["training"]["seed"] != b["training"]["seed"]


def test_tampered_copies_raise_checksum_error(tmp_path):
    names = [f"{n}.{ext}" for n in (*NETS, "fashion-test-features")
             for ext in ("safetensors", "json")]
    for name in names:
        shutil.copy(zoo.WEIGHTS / name, tmp_path / name)
    zoo.load(NETS[0], folder=tmp_path)  # an intact copy loads
    for name in (*NETS, "fashion-test-features"):
        path = tmp_path / f"{name}.safetensors"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    for name in NETS:
        with pytest.raises(zoo.ChecksumError):
            zoo.load(name, folder=tmp_path)
    with pytest.raises(zoo.ChecksumError):
        fidlib.reference_features("fashion-test", folder=tmp_path)


def test_a_reference_json_without_its_checksums_says_how_to_fix_it(tmp_path):
    for ext in ("safetensors", "json"):
        shutil.copy(zoo.WEIGHTS / f"fashion-test-features.{ext}", tmp_path)
    record = tmp_path / "fashion-test-features.json"
    meta = json.loads(record.read_text())
    del meta["classifier_sha256"]
    record.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"fashion-test-features.json records no "
                       r"classifier_sha256.*train_classifiers features"):
        fidlib.reference_features("fashion-test", folder=tmp_path)
    del meta["sha256"]
    record.write_text(json.dumps(meta))
    with pytest.raises(zoo.ChecksumError, match="records no sha256 or classifier_sha256"):
        fidlib.reference_features("fashion-test", folder=tmp_path)


@pytest.mark.parametrize("name", NETS)
def test_test_accuracy(name, test_set):
    images, labels = test_set
    acc = perceptual.accuracy(perceptual.load(name), images[:N_ACCURACY], labels[:N_ACCURACY])
    recorded = zoo.info(name)["training"]
    assert acc >= 0.90
    assert acc >= recorded["test_accuracy_first_2000"] - 0.002
    assert recorded["test_accuracy"] >= 0.90  # measured on all 10,000 when shipped


# ----------------------------------------------------------------------------------
# reference features, FID, KID
# ----------------------------------------------------------------------------------

def test_reference_features_match_the_classifier(test_set):
    meta = fidlib.reference_info("fashion-test")
    assert meta["count"] == 10_000 and meta["classifier"] == "fashion-classifier"
    assert meta["classifier_sha256"] == zoo.info("fashion-classifier")["sha256"]
    ref = fidlib.reference_features("fashion-test")
    assert ref.shape == (10_000, meta["dim"]) and ref.dtype == torch.float64
    mine = lab.metrics.features(test_set[0][:32]).double()
    torch.testing.assert_close(mine, ref[:32], rtol=2e-3, atol=2e-3)


def test_fid_kid_real_near_the_floor_and_corruptions_far(real):
    floor = fidlib.floor("fashion-test")[str(N_FID)]["train_vs_reference"]
    fid_floor, kid_floor = floor["fid"], floor["kid"]
    noise = torch.rand(N_FID, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fids = {k: lab.metrics.fid(x) for k, x in
            (("real", real), ("blur", blur(real)), ("noise", noise))}
    kids = {k: lab.metrics.kid(x) for k, x in
            (("real", real), ("blur", blur(real)), ("noise", noise))}
    assert fids["real"] < fid_floor["mean"] + 4 * fid_floor["std"] + 0.5
    assert fids["blur"] > 5 * fid_floor["mean"]
    assert fids["noise"] > 50 * fid_floor["mean"]
    assert kids["real"].mean < kid_floor["mean"] + 4 * kid_floor["std"] + 1e-3
    assert kids["blur"].mean > 10 * max(kid_floor["mean"], 1e-3)
    assert kids["noise"].mean > kids["blur"].mean
    assert kids["real"].std > 0


def test_fid_kid_errors(real):
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        lab.metrics.fid(real[:, 0])
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        lab.metrics.fid(real.expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="unknown reference"):
        lab.metrics.fid(real, reference="cifar-test")
    with pytest.raises(ValueError, match="subset_size=1000 needs at least 1000"):
        lab.metrics.kid(real[:100], subset_size=1000)
    with pytest.raises(ValueError, match="NaN"):
        lab.metrics.fid(torch.full((4, 1, 28, 28), float("nan")))
    with pytest.raises(ValueError, match="cannot compare"):
        lab.metrics.fid(real, classifier="fashion-perceptual")


def test_fid_matches_scipy_sqrtm():
    import numpy as np
    from scipy import linalg

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 8, generator=g, dtype=torch.float64)
    b = torch.randn(200, 8, generator=g, dtype=torch.float64) @ torch.randn(
        8, 8, generator=g, dtype=torch.float64) * 0.5 + 0.2
    s1, s2 = np.cov(a.numpy().T), np.cov(b.numpy().T)
    expected = (((a.mean(0) - b.mean(0)) ** 2).sum().item()
                + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))
    assert fidlib.fid_from_features(a, b) == pytest.approx(expected, rel=1e-9)
    assert abs(fidlib.fid_from_features(a, a)) < 1e-9


def test_kid_matches_the_per_subset_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 5, generator=g, dtype=torch.float64)
    y = torch.rand(90, 5, generator=g, dtype=torch.float64) + 0.1
    got = fidlib.kid_from_features(x, y, subsets=4, subset_size=30, seed=7)
    mx = fidlib._subset_masks(60, 4, 30, 7, 1).bool()
    my = fidlib._subset_masks(90, 4, 30, 7, 2).bool()
    values = []
    for k in range(4):
        a, b = x[mx[k]], y[my[k]]
        kaa, kbb, kab = ((u @ v.T / 5 + 1) ** 3 for u, v in ((a, a), (b, b), (a, b)))
        values.append((kaa.sum() - kaa.trace()) / 870 + (kbb.sum() - kbb.trace()) / 870
                      - 2 * kab.mean())
    values = torch.stack(values)
    assert got.mean == pytest.approx(float(values.mean()), rel=1e-10)
    assert got.std == pytest.approx(float(values.std()), rel=1e-10)


# ----------------------------------------------------------------------------------
# perceptual loss
# ----------------------------------------------------------------------------------

def test_perceptual_loss(real):
    net = perceptual.load("fashion-perceptual")
    x = real[:16]
    assert torch.equal(perceptual.perceptual_loss(net, x, x.clone()), torch.zeros(16))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(x.shape, generator=g)
    means = []
    for level in (0.05, 0.2, 0.8):
        means.append(float(perceptual.perceptual_loss(net, x + level * z, x).mean()))
    assert 0 < means[0] < means[1] < means[2]
    a = (x + 0.1 * z).requires_grad_(True)
    d = perceptual.perceptual_loss(net, a, x)
    assert d.shape == (16,) and (d > 0).all()
    d.sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(perceptual.perceptual_loss(None, a.detach(), x), d.detach())


def test_perceptual_loss_keeps_a_trainable_net_trainable(real):
    net = perceptual.Classifier(**perceptual.PERCEPTUAL)
    net.train()
    a = real[:4].clone().requires_grad_(True)
    perceptual.perceptual_loss(net, a, real[4:8]).sum().backward()
    assert net.training and all(p.requires_grad and p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="differ in shape"):
        perceptual.perceptual_loss(net, real[:4], real[:5])
