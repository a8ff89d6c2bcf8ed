"""The main job (experiments/demo.py) in a fast mode: Fashion-MNIST from the shipped
model, a grid per rule and a table of FID, KID and NFE."""

import csv

import pytest

import lab
from experiments import demo


def test_fast_demo_writes_grids_and_a_table(tmp_path):
    rules = [lab.rules.get("euler"), lab.rules.get("heun"), lab.rules.get("annealed_langevin")]
    rows = demo.run(tmp_path, n=24, budget=5, rules=rules, verbose=False)
    assert [r["rule"] for r in rows] == ["euler", "heun"]  # annealed_langevin: 6 calls a step
    assert [r["nfe"] for r in rows] == [5, 5] and [r["steps"] for r in rows] == [5, 3]
    for r in rows:
        assert (tmp_path / f"grid_{r['rule']}.png").stat().st_size > 1000
        assert r["fid"] > 0 and r["kid_std"] >= 0
    table = list(csv.DictReader((tmp_path / "rows.csv").open()))
    assert [t["rule"] for t in table] == ["euler", "heun"]
    summary = (tmp_path / "summary.md").read_text()
    assert "| euler |" in summary and "grid_heun.png" in summary


def test_demo_scores_samples_clamped_like_the_studies(tmp_path):
    """Adam leaves pixels far outside [-1, 1]; the demo scores what one sees, clamped,
    as the studies do (lab.metrics.image_scores), and the summary says so."""
    rule, n, budget = lab.rules.optim("Adam"), 24, 5
    (row,) = demo.run(tmp_path, n=n, budget=budget, rules=[rule], verbose=False)
    model = lab.load(demo.MODEL)
    x = lab.noise((n, *model.sample_shape), seed=0) * 80.0
    samples = lab.sample_at_budget(model, x, rule, budget, demo.schedule, seed=0,
                                   record="final").x
    assert samples.abs().max() > 2  # the case where clamping matters
    clamped = lab.metrics.image_scores(samples)
    assert row["fid"] == pytest.approx(clamped["fid"], rel=1e-6)
    assert row["kid"] == pytest.approx(clamped["kid"], rel=1e-6, abs=1e-9)
    assert "clamped to [-1, 1]" in (tmp_path / "summary.md").read_text()
