"""The class-conditional EDM (fashion-edm-cond's kind): its call, its errors, its label
dropout, and that it saves and loads like every shipped model."""

import pytest
import torch

import lab
from lab import zoo
from lab.models import ConditionalEDM

TINY = {"block_out_channels": [8, 16, 16], "norm_num_groups": 4, "attention_head_dim": 8}


@pytest.fixture(scope="module")
def cm():
    torch.manual_seed(0)
    return ConditionalEDM(network_config=TINY, sigma_data=0.71).eval()


def test_the_class_changes_the_output_and_none_is_the_null_class(cm):
    x = lab.noise((4, 1, 28, 28), seed=0)
    with torch.no_grad():
        a = cm(x, 1.0, torch.tensor([0, 1, 2, 3]))
        b = cm(x, 1.0, torch.tensor([4, 5, 6, 7]))
        null = cm(x, 1.0, None)
        same = cm.denoise(x, torch.ones(4), torch.full((4,), cm.null_class))
    assert (a - b).abs().max() > 1e-4  # the embedding is live (random weights)
    assert torch.equal(null, same) and cm.null_class == 10


@pytest.mark.parametrize("cond,err,match", [
    (torch.tensor([0, 10, 1]), ValueError, r"0\.\.9"),
    (torch.tensor([0, -1, 1]), ValueError, r"0\.\.9"),
    (torch.tensor([0, 1]), ValueError, r"shape \(3,\)"),
    (torch.tensor([0.0, 1.0, 2.0]), TypeError, "long tensor"),
    ([0, 1, 2], TypeError, "long tensor"),
])
def test_bad_conditioning_is_named(cm, cond, err, match):
    with pytest.raises(err, match=match):
        cm(lab.noise((3, 1, 28, 28)), 1.0, cond)


def test_calling_without_cond_says_how_to_sample(cm):
    with pytest.raises(TypeError, match="lab.guidance.cfg"):
        cm(lab.noise((2, 1, 28, 28)), 1.0)


def test_label_dropout_is_drawn_from_the_trainers_generator(cm):
    x0 = lab.noise((16, 1, 28, 28), seed=1).clamp(-1, 1)
    sigma, noise = torch.full((16,), 0.8), lab.noise((16, 1, 28, 28), seed=2)
    labels = torch.arange(16) % 10

    def loss(seed, dropout):
        cm.label_dropout = dropout
        with torch.no_grad():
            return cm.training_loss(x0, sigma, noise, labels,
                                    torch.Generator().manual_seed(seed))

    try:
        assert loss(0, 0.5) == loss(0, 0.5)  # same generator state, same mask
        assert loss(0, 0.5) != loss(0, 0.0)  # some labels dropped to the null class
        assert loss(0, 0.0) == loss(1, 0.0)  # no dropout: the generator does not matter
    finally:
        cm.label_dropout = 0.1
    with pytest.raises(ValueError, match="label_dropout"):
        ConditionalEDM(network_config=TINY, label_dropout=1.0)


def test_it_ships_and_loads_as_its_kind(cm, tmp_path):
    zoo.save(cm, "tiny-cond", {"steps": 0}, folder=tmp_path)
    back = zoo.load("tiny-cond", folder=tmp_path)
    assert type(back) is ConditionalEDM and back.kind == "edm-cond"
    assert back.config == cm.config
    x = lab.noise((2, 1, 28, 28), seed=3)
    with torch.no_grad():
        assert torch.allclose(back(x, 2.0, torch.tensor([3, 4])),
                              cm(x, 2.0, torch.tensor([3, 4])), atol=1e-6)


def test_cfg_drives_it_with_any_rule(cm):
    g = lab.guidance.cfg(cm, torch.tensor([1, 2]), scale=2.0)
    sig = lab.schedules.karras(3)
    traj = lab.sample(g, lab.noise((2, 1, 28, 28)) * sig[0], sig, "dpmpp_2m")
    assert traj.nfe == 3 and traj.meta["network_evaluations"] == 2 * 2 * 3


def test_it_trains_on_labelled_fashion_mnist_and_resumes_bit_identically(tmp_path):
    from lab.train import TrainConfig, Trainer

    cfg = TrainConfig(name="cond", model={"kind": "edm-cond", "network": "unet",
                                          "sigma_data": 0.71, "network_config": TINY,
                                          "label_dropout": 0.5},
                      data="fashion-mnist", data_size=256, steps=6, batch_size=16, lr=2e-3,
                      warmup=2, checkpoint_every=3, seed=0, threads=2)
    straight = Trainer(cfg, tmp_path / "a")
    straight.run(progress=False)
    interrupted = Trainer(cfg, tmp_path / "b")
    interrupted.run(until=3, progress=False)
    resumed = Trainer(cfg, tmp_path / "b")
    assert resumed.resume()
    resumed.run(progress=False)
    assert resumed.losses == straight.losses  # label dropout drawn from the saved stream
    with pytest.raises(ValueError, match="labelled data"):
        Trainer(TrainConfig(name="x", model={"kind": "edm-cond", "network": "unet",
                                             "network_config": TINY},
                            data="two_moons", data_size=64), tmp_path / "c")
