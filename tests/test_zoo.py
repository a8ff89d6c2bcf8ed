"""Shipped weights: every file loads with its checksum verified; damage is a clear error."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

import lab
from lab import registry, zoo


@pytest.mark.parametrize("name", [n for n in zoo.available() if
                                  (zoo.WEIGHTS / f"{n}.safetensors").exists()])
def test_every_shipped_weight_loads_and_verifies(name):
    meta = zoo.info(name)
    assert meta["sha256"] == zoo.sha256(zoo.WEIGHTS / f"{name}.safetensors")
    assert (zoo.WEIGHTS / f"{name}.safetensors").stat().st_size <= 8 * 2**20
    for key in ("command", "machine", "steps", "wall_seconds"):
        assert key in meta["training"], (name, key)
    model = lab.load(name)
    assert not any(p.requires_grad for p in model.parameters())


def weights_copy(tmp_path, name):
    folder = tmp_path / "weights"
    folder.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(zoo.WEIGHTS / f"{name}{suffix}", folder / f"{name}{suffix}")
    return folder


def test_tampered_weights_raise_a_checksum_error(tmp_path):
    folder = weights_copy(tmp_path, "moons-mlp")
    path = folder / "moons-mlp.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(zoo.ChecksumError, match="does not match its recorded sha256"):
        zoo.load("moons-mlp", folder)


def test_missing_and_unknown_weights(tmp_path):
    with pytest.raises(ValueError, match="no shipped model 'nope'; available: .*moons-mlp"):
        lab.load("nope")
    folder = weights_copy(tmp_path, "moons-mlp")
    (folder / "moons-mlp.safetensors").unlink()
    with pytest.raises(ValueError, match="is missing"):
        zoo.load("moons-mlp", folder)


def test_a_json_without_sha256_says_how_to_fix_it(tmp_path):
    folder = weights_copy(tmp_path, "moons-mlp")
    record = folder / "moons-mlp.json"
    meta = json.loads(record.read_text())
    del meta["sha256"]
    record.write_text(json.dumps(meta))
    with pytest.raises(zoo.ChecksumError, match=r"moons-mlp.json records no sha256.*"
                       r"git checkout.*python -m lab train <config> --ship"):
        zoo.load("moons-mlp", folder)


def test_a_corrupt_json_names_the_file(tmp_path):
    folder = weights_copy(tmp_path, "moons-mlp")
    (folder / "moons-mlp.json").write_text('{"kind": "edm", "config": ')
    with pytest.raises(ValueError, match=r"moons-mlp.json is not valid json"):
        zoo.load("moons-mlp", folder)


def test_an_unknown_kind_names_the_known_ones(tmp_path):
    folder = weights_copy(tmp_path, "moons-mlp")
    meta = json.loads((folder / "moons-mlp.json").read_text())
    meta["kind"] = "gan"
    (folder / "moons-mlp.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"'gan' model, which this lab does not know.*edm"):
        zoo.load("moons-mlp", folder)


def test_every_shipped_model_json_has_a_registered_kind():
    records = {p.stem: json.loads(p.read_text())["kind"] for p in zoo.WEIGHTS.glob("*.json")}
    models = {name for name, kind in records.items() if kind != "reference-features"}
    assert set(zoo.available()) == models, set(records.items())


def test_the_kinds_are_known_whichever_lab_module_is_imported_first():
    """lab.zoo imports no model module; the kinds are registered by the time it is used."""
    script = ("import sys, lab.zoo, lab.registry; "
              "print(lab.zoo.available(), lab.registry.kinds(), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"{zoo.available()} {registry.kinds()}"


def test_registry_lookup_and_duplicate_kinds(monkeypatch):
    monkeypatch.setattr(registry, "_CLASSES", dict(registry._CLASSES))
    assert registry.lookup("edm") is lab.models.EDM and lab.models.EDM.kind == "edm"
    assert {"edm", "noise", "sigma-regressor", "classifier"} <= set(registry.kinds())
    assert set(registry.trainable_kinds()) == {"edm", "edm-cond", "noise", "sigma-regressor"}
    with pytest.raises(ValueError, match="no model kind 'gan'; known kinds: .*edm"):
        registry.lookup("gan")
    with pytest.raises(ValueError, match="kind 'edm' is registered twice"):
        registry.register("edm")(type("Other", (), {}))


def test_save_and_load_roundtrip(tmp_path):
    model = lab.models.EDM("mlp", {"dim": 2, "hidden": 16, "depth": 1}, sigma_data=1.0,
                           sample_shape=[2])
    zoo.save(model, "tiny", training={"command": "test", "steps": 0, "wall_seconds": 0},
             folder=tmp_path)
    back = zoo.load("tiny", tmp_path)
    x = lab.noise((4, 2))
    assert torch.equal(back(x, 0.5), model.eval()(x, 0.5))
    meta = json.loads((tmp_path / "tiny.json").read_text())
    assert meta["kind"] == "edm" and meta["config"]["sigma_data"] == 1.0


# Measured (heun, 30 steps, 2,000 samples): moons-mlp 0.028, moons-mlp-blind 0.128; the
# Gaussian fit 0.248; two independent moons sets 0.026 (the floor).
@pytest.mark.parametrize("name,bound", [("moons-mlp", 0.06), ("moons-mlp-blind", 0.2)])
def test_moons_models_beat_a_gaussian_fit(name, bound):
    """SW(model samples, moons) < SW(the moons' best Gaussian, moons), on 2,000 samples."""
    moons = lab.data.toy("two_moons", 2000, seed=123)
    model = lab.load(name)
    sig = lab.schedules.karras(30, sigma_max=80.0)
    x = lab.noise((2000, 2), seed=5) * sig[0]
    samples = lab.sample(model, x, sig, "heun", record="final").x
    fit = lab.models.Gaussian(moons.double().mean(0), torch.cov(moons.double().T))
    gaussian = fit.sample(2000, seed=6)
    sw_model = lab.metrics.sliced_wasserstein(samples, moons)
    sw_gauss = lab.metrics.sliced_wasserstein(gaussian, moons)
    assert sw_model < sw_gauss and sw_model < bound, (sw_model, sw_gauss)


def test_unet_batch_slicing_is_exact(monkeypatch):
    """Large batches run in slices (for CPU cache); slicing must not change the maths.

    Not bitwise: the CPU kernels pick their algorithm by batch size and thread count, so
    a slice of 4 and a batch of 10 round differently (equal on 2 threads, ~1e-7 on 1)."""
    from lab.models.networks import UNet

    model = lab.load("fashion-edm")
    x = lab.noise((10, 1, 28, 28), seed=0) * 3.0
    with torch.inference_mode():
        whole = model(x, 3.0)
        monkeypatch.setattr(UNet, "max_batch", 4)
        sliced = model(x, 3.0)
    assert ((sliced - whole).norm() / whole.norm()).item() < 1e-6


def test_unet_compile_matches_eager(monkeypatch):
    """LAB_COMPILE=1 (the studies' --compile) is a speed switch only: the compiled UNet
    agrees with eager to float rounding, and training (grad enabled) stays eager."""
    model = lab.load("fashion-edm")
    x = lab.noise((4, 1, 28, 28), seed=1) * 2.0
    with torch.inference_mode():
        eager = model(x, 2.0)
        monkeypatch.setenv("LAB_COMPILE", "1")
        compiled = model(x, 2.0)
    unet = next(m for m in model.modules() if type(m).__name__ == "UNet")
    assert unet._compiled is not None, "LAB_COMPILE=1 did not route through torch.compile"
    assert ((compiled - eager).norm() / eager.norm()).item() < 1e-5
    assert not any(k.startswith("_compiled") or "._compiled" in k for k in model.state_dict())
