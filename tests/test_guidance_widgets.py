"""The guidance panels (lab.widgets.guidance) driven without a browser, on an exact
class-conditional image model: each run is lab.sample / lab.img2img of the guided model
the controls describe, the sliders rerun, and the figures shown are the run's."""

import pytest
import torch

import lab
from lab import guidance
from lab.tensors import per_sample
from lab.widgets import GuidancePanel, Img2ImgPanel, LossPanel, default_schedule
from lab.widgets.guidance import EACH_CLASS, NULL_CLASS, class_ids

N, STEPS = 4, 5


class GreyClasses(lab.Denoiser):
    """Class k: every pixel N(-0.8 + 0.16 k, 0.04), independently; the null class (id 10):
    N(0, 0.04). The exact denoiser of each."""

    conditional = True
    sample_shape = (1, 28, 28)
    sigma_min, sigma_max = 0.002, 80.0
    num_classes, null_class = 10, 10
    var = 0.04

    def __init__(self):
        super().__init__()
        self.means = torch.cat([torch.linspace(-0.8, 0.64, 10), torch.zeros(1)])

    def check_cond(self, cond, x):
        if cond is None:
            return torch.full((x.shape[0],), self.null_class)
        if cond.shape != (x.shape[0],) or bool(((cond < 0) | (cond > 9)).any()):
            raise ValueError("cond: (B,) class ids in 0..9")
        return cond

    def denoise(self, x, sigma, cond):
        s2 = per_sample(sigma, x) ** 2
        mu = self.means[cond].to(x.dtype)[:, None, None, None]
        return (self.var * x + s2 * mu) / (self.var + s2)


@pytest.fixture(scope="module")
def model():
    return GreyClasses()


def start(model, steps=STEPS, seed=0):
    sig = default_schedule(model)(steps)
    return sig, lab.noise((N, 1, 28, 28), seed) * sig[0]


def test_guidance_panel_runs_cfg_of_its_controls(model):
    panel = GuidancePanel(model, n=N, scale=2.5, rule="euler", steps=STEPS)
    sig, x = start(model)
    expected = lab.sample(guidance.cfg(model, torch.arange(N), 2.5), x, sig, "euler")
    assert torch.equal(panel.traj.x, expected.x)
    assert panel.stats["network_evaluations"] == 2 * STEPS  # both branches, every step
    assert 0 <= panel.stats["accuracy"] <= 1 and "negative_share" not in panel.stats
    assert "classified as the intended class" in panel.stats_box.value
    assert panel.scrubber.steps == STEPS


def test_sliders_rerun_and_update_sets_rule_parameters(model):
    panel = GuidancePanel(model, n=N, scale=2.5, rule="euler", steps=STEPS)
    before = panel.traj
    panel.scale.value = 1.0  # live: letting go of the slider reruns
    assert panel.traj is not before and panel.stats["network_evaluations"] == STEPS
    stats = panel.update(scale=6.0, rule="heavy_ball", beta=0.5)
    assert panel.traj.rule == "heavy_ball(beta=0.5)" and panel.controls["beta"].value == 0.5
    sig, x = start(model)
    expected = lab.sample(guidance.cfg(model, torch.arange(N), 6.0), x, sig,
                          lab.rules.get("heavy_ball", beta=0.5))
    assert torch.equal(panel.traj.x, expected.x) and stats is panel.stats
    with pytest.raises(ValueError, match="no control 'bogus'"):
        panel.update(bogus=1)


def test_negative_class_and_interval(model):
    panel = GuidancePanel(model, n=N, cls=NULL_CLASS, negative="Trouser", steps=STEPS,
                          rule="euler")
    assert "negative_share" in panel.stats and "accuracy" not in panel.stats
    assert panel.guidance_interval() is None
    panel.set_interval(0.1, 1.0)  # live: reruns with guidance only there
    lo, hi = panel.guidance_interval()
    assert 0.08 < lo < 0.12 and 0.8 < hi < 1.2
    inside = sum(lo <= s <= hi for s in panel.traj.sigmas[:-1].tolist())
    assert panel.stats["network_evaluations"] == STEPS + inside < 2 * STEPS


def test_class_choices_and_bad_input(model):
    assert torch.equal(class_ids(EACH_CLASS, 12), torch.arange(12) % 10)
    assert class_ids(NULL_CLASS, 3) is None
    assert torch.equal(class_ids("Bag", 2), torch.tensor([8, 8]))
    with pytest.raises(ValueError, match="unknown class 'Cat'"):
        class_ids("Cat", 2)
    with pytest.raises(TypeError, match="class-conditional"):
        GuidancePanel(lab.load("moons-mlp"))


def test_img2img_panel_runs_the_last_part_of_the_schedule(model):
    images = torch.linspace(-0.5, 0.5, 3)[:, None, None, None].expand(3, 1, 28, 28).clone()
    panel = Img2ImgPanel(model, images, index=1, n=N, strength=0.2, steps=10)
    expected = lab.img2img(guidance.cfg(model, None, 1.0), images[1].expand(N, 1, 28, 28),
                           0.2, "dpmpp_2m", sigmas=default_schedule(model)(10))
    assert panel.traj.steps == 2 and torch.equal(panel.traj.x, expected.x)
    small = panel.stats["rms_change"]
    panel.strength.value = 1.0
    assert panel.traj.steps == 10 and bool((panel.stats["rms_change"] > small).all())
    assert len(panel.stats["labels"]) == N and panel.original.value


def test_loss_panel_draws_the_loss_along_both_paths(model):
    panel = LossPanel(model, n=N, loss="brightness", target=0.5, scale=0.1, scale_max=1e5,
                      steps=STEPS)
    assert panel.stats["guided_loss"] == pytest.approx(panel.stats["unguided_loss"], rel=1e-3)
    reference = panel.reference
    panel.scale.value = 1e4  # the unguided run is kept; the guided one follows the slider
    assert panel.reference is reference
    curves = panel.stats["curves"]
    assert len(curves["guided"]) == len(curves["unguided"]) == STEPS
    assert panel.stats["guided_loss"] < 0.5 * panel.stats["unguided_loss"]
    assert bytes(panel.loss_plot.value[:4]) == b"\x89PNG"
    panel.update(loss="class log-prob", cls="Bag")
    assert panel.reference is reference and "loss of the samples" in panel.stats_box.value
