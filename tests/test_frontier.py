"""The few-step frontier study in fast mode, best.json, and lab.recommend."""

import json

import pytest
import torch

import lab
from experiments.studies import exact_error_vs_nfe
from experiments.studies import few_step_frontier as frontier
from lab import study
from lab.recommend import RECOMMENDATIONS


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("few_step_frontier")
    with pytest.MonkeyPatch.context() as mp:  # tuned schedules are searched afresh
        mp.setenv("LAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        return out, study.run(frontier, out, fast=True, progress=False)


def test_fast_run_scores_every_cell_and_writes_best_json(fast_run):
    out, rows = fast_run
    assert len(rows) == len(frontier.cells(True))
    assert all(r["metrics"]["status"] == "ok" and r["metrics"]["nfe"] <= 5 for r in rows)
    best = json.loads((out / "best.json").read_text())
    assert best["model"] == "fashion-edm" and list(best["budgets"]) == ["5"]
    entry = best["budgets"]["5"]  # the exact models' rows stay out of best.json
    lab_rows = [r for r in rows if r["metrics"]["kind"] == "lab"
                and r["cell"]["model"] == "fashion-edm"]
    assert entry["fid_64"] == min(r["metrics"]["fid"] for r in lab_rows)
    for name in ("summary.md", "frontier.png", "samples.png", "exact_frontier.png"):
        assert (out / name).stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "### mixture, 128 samples" in summary and "### gaussian, 128 samples" in summary


def exact_rows(rows, model):
    return {(r["metrics"]["label"]): r["metrics"] for r in rows if r["cell"]["model"] == model}


@pytest.mark.parametrize("model", ["mixture", "gaussian"])
def test_exact_cells_measure_the_error_to_the_exact_solution(fast_run, model):
    _, rows = fast_run
    at = exact_rows(rows, model)
    assert all(m["status"] == "ok" and m["nfe"] <= 5 and 0 < m["error_rms"] < float("inf")
               for m in at.values())
    # extrapolation at gamma 1 is Euler: the same samples, so the same errors, exactly
    same = at["extrapolate(gamma=1)"]
    assert (same["error_rms"], same["sw"]) == (at["euler"]["error_rms"], at["euler"]["sw"])
    assert at["dpmpp_2m"]["error_rms"] < at["euler"]["error_rms"]
    # the same noise, schedule and references as exact_error_vs_nfe: its cell agrees
    cell = {"model": model, "rule": "dpmpp_2m", "params": {}, "budget": 5, "seed": 0,
            "samples": 128}
    theirs = exact_error_vs_nfe.run_cell(cell)
    assert at["dpmpp_2m"]["error_rms"] == pytest.approx(theirs["error_rms"], rel=1e-12)
    assert at["dpmpp_2m"]["sw"] == pytest.approx(theirs["sw"], rel=1e-12)
    # the schedule searched in pixel distance on calibration noise helps on other noise
    tuned = at["dpmpp_2m, optimized schedule"]
    assert tuned["schedule_error"] <= tuned["karras_error"] and tuned["schedule_calls"] > 0
    assert tuned["error_rms"] < at["dpmpp_2m"]["error_rms"]
    assert at["DPMSolverMultistep2 (diffusers)"]["error_rms"] < at["euler"]["error_rms"]


def test_axis_positions_and_the_data_scale_afs_assumes():
    position = frontier.axis_position
    assert position({"rule": "euler", "params": {}}) == {"gamma": 1.0, "r": 1.0}
    assert position({"rule": "momentum", "params": {"beta": 0.2}}) == {"r": 0.8}
    assert position({"rule": "ipndm", "params": {}}) == {"r": 4.0}
    assert position({"rule": "extrapolate", "params": {}}) == {"gamma": 2.0}
    assert position({"rule": "dpmpp_2m", "params": {}}) == {}
    for name, factory in frontier.EXACT.items():  # E|x|^2 / dim of the exact model
        state = factory().state_dict()
        w, mu, cov = state["weights"], state["means"], state["covs"]
        second = (w * (mu.pow(2).sum(-1) + cov.diagonal(dim1=-2, dim2=-1).sum(-1))).sum()
        rms = float((second / w.sum() / mu.shape[-1]).sqrt())
        assert frontier.DATA_RMS[name] == pytest.approx(rms, abs=0.005), name


def test_best_json_reproduces_its_fid(fast_run, tmp_path):
    """DESIGN.md section 4: lab.rules.get and lab.sample reproduce an entry."""
    out, rows = fast_run
    path = tmp_path / "recommendations.json"
    path.write_text((out / "best.json").read_text())
    best = lab.recommend(5, path=path)
    assert lab.rules.nfe(best.rule, best.sigmas) <= 5 and best.samples == 64
    x = lab.noise((64, 1, 28, 28), seed=0) * best.sigmas[0]
    with study.threads(1):  # cells run on one thread; kernels round by thread count
        images = lab.sample(lab.load("fashion-edm"), x, best.sigmas, best.rule, seed=0).x
    assert lab.metrics.fid(images.clamp(-1, 1)) == pytest.approx(best.fid, rel=1e-4)
    assert lab.recommend(7, path=path).budget == 5  # the largest measured budget that fits
    with pytest.raises(ValueError, match="nothing fits 4"):
        lab.recommend(4, path=path)


def test_recommend_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="few_step_frontier"):
        lab.recommend(5, path=tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="damaged"):
        lab.recommend(5, path=bad)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"model": "fashion-edm", "budgets": {"5": {
        "rule": "warp_drive", "params": {}, "sigmas": [80.0, 0.0], "fid_1024": 3.0}}}))
    with pytest.raises(ValueError, match="warp_drive"):
        lab.recommend(5, path=unknown)


def test_shipped_recommendations_match_the_study():
    results = frontier.RESULTS / "best.json"
    if not RECOMMENDATIONS.exists():
        assert not results.exists(), "best.json exists but was not shipped to lab/weights"
        return
    assert json.loads(RECOMMENDATIONS.read_text()) == json.loads(results.read_text())
    best = lab.recommend(10)
    assert isinstance(best.rule, lab.rules.Rule) and torch.is_tensor(best.sigmas)


def test_recommend_names_an_entry_without_a_score(tmp_path):
    path = tmp_path / "noscore.json"
    path.write_text(json.dumps({"model": "fashion-edm", "budgets": {"5": {
        "rule": "euler", "params": {}, "sigmas": [80.0, 0.0]}}}))
    with pytest.raises(ValueError, match="damaged"):
        lab.recommend(5, path=path)
