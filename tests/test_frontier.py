"""The few-step frontier study in fast mode, best.json, and lab.recommend."""

import json

import pytest
import torch

import lab
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
    entry = best["budgets"]["5"]
    lab_rows = [r for r in rows if r["metrics"]["kind"] == "lab"]
    assert entry["fid_64"] == min(r["metrics"]["fid"] for r in lab_rows)
    for name in ("summary.md", "frontier.png", "samples.png"):
        assert (out / name).stat().st_size > 0


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
