"""The guidance study's fast run, and the metrics it scores guided samples by.

Time budget: the fast run about 20 s of CPU (64 samples, 10 calls, 6 cells); the target
checks on the shipped model about 15 s."""

import pytest
import torch

import lab
from experiments.studies import guidance_momentum as gm
from tests.test_studies import check_summary_names_every_cell, metric_of, run_fast


def test_out_of_range_counts_pixels_and_samples_beyond_the_limit():
    x = torch.zeros(4, 1, 28, 28)
    x[0, 0, 0, :3] = 1.5   # 3 pixels of sample 0
    x[1, 0, 5, 5] = -1.01  # 1 pixel of sample 1
    x[2] = 1.0             # exactly at the limit: inside
    got = lab.metrics.out_of_range(x)
    assert got["pixels_out"] == pytest.approx(4 / (4 * 784))
    assert got["samples_out"] == 0.5
    assert got["max_abs"] == pytest.approx((1.5 + 1.01 + 1.0 + 0.0) / 4)
    assert "samples_far" not in got
    far = lab.metrics.out_of_range(x, far=1.2)  # only sample 0's three pixels
    assert far["pixels_far"] == pytest.approx(3 / (4 * 784))
    assert far["samples_far"] == 0.25
    assert {k: far[k] for k in got} == got


def test_class_accuracy_of_test_images_and_a_clear_error_on_mismatched_classes():
    images, labels = lab.data.fashion_mnist("test")
    acc = lab.metrics.class_accuracy(images[:500], labels[:500])
    assert 0.85 < acc <= 1.0  # fashion-classifier's test accuracy, not a constant
    wrong = lab.metrics.class_accuracy(images[:500], (labels[:500] + 1) % 10)
    assert wrong < 0.1
    with pytest.raises(ValueError, match="one class id per sample"):
        lab.metrics.class_accuracy(images[:10], labels[:9])


@pytest.fixture(scope="module")
def guidance_run(tmp_path_factory):
    return run_fast(gm, tmp_path_factory)


def test_fast_run_summarises_every_cell_with_plots(guidance_run):
    out, rows = guidance_run
    check_summary_names_every_cell(gm, out, rows,
                                   ["guidance.png", "samples_scale_1.png", "samples_scale_4.png"])
    for r in rows:
        assert r["metrics"]["status"] == "ok", r["metrics"]


def test_guided_cells_count_network_evaluations_per_branch(guidance_run):
    """Scale 1 is the conditional model alone; any other scale runs both branches."""
    _, rows = guidance_run
    for r in rows:
        if r["metrics"]["kind"] != "cfg":
            continue
        branches = 1 if r["cell"]["scale"] == 1.0 else 2
        assert r["metrics"]["nfe"] == 10
        assert r["metrics"]["network_evaluations"] == branches * 10 * r["cell"]["samples"]
        m = r["metrics"]
        assert 0 <= m["pixels_far"] <= m["pixels_out"] <= m["samples_out"] <= 1
        assert m["pixels_far"] <= m["samples_far"] <= m["samples_out"]
        assert m["max_abs"] > 1.0  # every 10-call sample overshoots the data range somewhere


def test_guidance_raises_accuracy(guidance_run):
    _, rows = guidance_run
    for label in ("dpmpp_2m", "heavy_ball(rule=dpmpp_2m, beta=0.2)"):
        acc1 = metric_of(rows, "accuracy", label=label, scale=1.0)
        acc4 = metric_of(rows, "accuracy", label=label, scale=4.0)
        assert acc4 > acc1 and acc4 >= 0.9, (label, acc1, acc4)


def test_img2img_keeps_the_image_at_low_strength_and_redraws_it_at_high(guidance_run):
    _, rows = guidance_run
    low = {k: metric_of(rows, k, img2img=0.1) for k in ("rms_change", "label_changed")}
    high = {k: metric_of(rows, k, img2img=0.9) for k in ("rms_change", "label_changed")}
    assert low["rms_change"] < 0.1 < high["rms_change"]
    assert low["label_changed"] < 0.1 < high["label_changed"]


# ---- the targets on the shipped model, small and cheap ----------------------------

@pytest.fixture(scope="module")
def cm():
    return lab.load("fashion-edm-cond")


def guided_labels(cm, cond, scale, negative=None, n=200, calls=10):
    x = lab.noise((n, 1, 28, 28), seed=0) * 80.0
    sig = lab.schedules.karras(calls, 0.002, 80.0)
    g = lab.guidance.cfg(cm, cond, scale, negative=negative)
    return lab.metrics.classify(lab.sample(g, x, sig, "dpmpp_2m", record="final").x)


def test_scale_3_gives_the_class_asked_for_and_beats_scale_1(cm):
    wanted = lab.guidance.balanced_classes(200)
    acc = {s: float((guided_labels(cm, wanted, s) == wanted).double().mean()) for s in (1.0, 3.0)}
    assert acc[3.0] >= 0.95 and acc[3.0] > acc[1.0], acc


def test_anything_but_k_avoids_k(cm):
    k = lab.guidance.balanced_classes(200)
    share = float((guided_labels(cm, None, 3.0, negative=k) == k).double().mean())
    assert share <= 0.02, share


def test_class_balanced_fid_at_scale_1_is_no_worse_than_the_unconditional_model():
    """The model zoo's rows (heun, 39 calls, 2,048 samples of seed 0): the issue's target."""
    from tests.test_fashion_models import ZOO_ROWS

    fid = {r["metrics"]["label"]: r["metrics"]["fid_2048"] for r in lab.study.read_rows(ZOO_ROWS)}
    assert fid["fashion-edm-cond, balanced"] <= fid["fashion-edm, schedule"], fid
