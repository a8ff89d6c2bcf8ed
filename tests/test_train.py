"""The training loop: the loss falls, and a resumed run takes the bit-identical next step."""

import json
from pathlib import Path

import pytest
import torch

from lab import registry
from lab.train import TrainConfig, Trainer, build_model, load_config

CONFIGS = sorted((Path(__file__).parent.parent / "experiments" / "configs").glob("*.json"))

TINY_UNET = {"block_out_channels": [8, 16, 16], "norm_num_groups": 4, "attention_head_dim": 8}


def fashion_config(**kw):
    base = dict(name="smoke", model={"kind": "edm", "network": "unet", "sigma_data": 0.71,
                                     "network_config": TINY_UNET},
                data="fashion-mnist", data_size=512, steps=30, batch_size=32, lr=2e-3,
                warmup=5, checkpoint_every=10, seed=0, threads=2)
    return TrainConfig(**{**base, **kw})


def test_loss_falls_on_fashion_mnist(tmp_path):
    trainer = Trainer(fashion_config(), tmp_path)
    trainer.run(progress=False)
    first, last = trainer.losses[:8], trainer.losses[-8:]
    assert sum(last) / 8 < 0.8 * sum(first) / 8, (first, last)


@pytest.mark.parametrize("kind", ["edm", "noise"])
def test_resume_gives_the_identical_next_step(tmp_path, kind):
    model = {"kind": kind, "network": "mlp", "network_config": {"dim": 2, "hidden": 32, "depth": 2},
             "sample_shape": [2]}
    if kind == "edm":
        model["sigma_data"] = 1.0
    cfg = TrainConfig(name="moons", model=model, data="two_moons", data_size=2000, steps=12,
                      batch_size=64, warmup=3, checkpoint_every=6, seed=3)
    straight = Trainer(cfg, tmp_path / "a")
    straight.run(progress=False)
    interrupted = Trainer(cfg, tmp_path / "b")
    interrupted.run(until=6, progress=False)
    resumed = Trainer(cfg, tmp_path / "b")
    assert resumed.resume() and resumed.step == 6
    resumed.run(progress=False)
    assert resumed.losses == straight.losses
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(resumed.ema.state_dict().values(), straight.ema.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_refuses_a_different_config(tmp_path):
    cfg = fashion_config(steps=2, checkpoint_every=1, data_size=64)
    Trainer(cfg, tmp_path).run(progress=False)
    other = Trainer(fashion_config(steps=2, checkpoint_every=1, data_size=64, lr=1e-3), tmp_path)
    with pytest.raises(ValueError, match="different config"):
        other.resume()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_experiment_config_builds_its_model(path):
    cfg = load_config(path)
    model = build_model(cfg.model)
    assert model.kind == cfg.model["kind"] and callable(model.training_loss)
    assert json.loads(path.read_text())["model"]["kind"] in registry.trainable_kinds()


class Shift(torch.nn.Module):
    """A kind train.py has never heard of: one parameter, its own loss."""

    def __init__(self, dim: int = 2):
        super().__init__()
        self.config = {"dim": dim}
        self.shift = torch.nn.Parameter(torch.zeros(dim))

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def training_loss(self, x0, sigma, noise):
        return ((x0 + 1 - self.shift) ** 2).mean() + 0 * sigma.mean() + 0 * noise.mean()


def test_a_newly_registered_kind_trains_without_touching_train(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_CLASSES", dict(registry._CLASSES))
    registry.register("test-shift")(Shift)
    cfg = TrainConfig(name="shift", model={"kind": "test-shift", "dim": 2}, data="two_moons",
                      data_size=256, steps=40, batch_size=64, lr=0.1, warmup=1,
                      checkpoint_every=40, seed=0)
    trainer = Trainer(cfg, tmp_path)
    trainer.run(progress=False)
    assert isinstance(trainer.model, Shift) and trainer.step == 40
    best = trainer.data.mean(0) + 1  # the shift that minimises its loss; it started at 0
    assert (trainer.model.shift - best).norm() < 0.2 * best.norm(), (trainer.model.shift, best)
    able = r"\['edm', 'edm-cond'\]"  # the kinds whose loss takes a perceptual term
    with pytest.raises(ValueError, match=r"perceptual loss needs .*'test-shift'.*" + able):
        TrainConfig(name="x", model={"kind": "test-shift"}, loss="perceptual")


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"model.kind must be one of \[.*'edm'.*got 'gan'"):
        TrainConfig(name="x", model={"kind": "gan"})
    with pytest.raises(ValueError, match="model.kind must be one of"):
        TrainConfig(name="x", model={"kind": "classifier"})  # registered, not trainable here
    with pytest.raises(ValueError, match="perceptual loss needs"):
        TrainConfig(name="x", model={"kind": "noise"}, loss="perceptual")
    with pytest.raises(FileNotFoundError, match="no training config"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"name": "x", "model": {"kind": "edm"}, "stepz": 3}')
    with pytest.raises(ValueError, match="not a valid training config"):
        load_config(tmp_path / "bad.json")
