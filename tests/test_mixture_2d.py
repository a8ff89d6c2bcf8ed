"""The 2-D mixture comparison (experiments/mixture_2d.py) in a fast mode, and its helpers."""

import csv

import pytest
import torch

import lab
from experiments import mixture_2d as demo
from lab import study, viz

BUDGETS = (5, 10, 50)
N = 256


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rows = demo.run(out, budgets=BUDGETS, n=N, verbose=False)
    return out, rows


def row(rows, rule, budget):
    return next(r for r in rows if r["rule"] == rule and r["budget"] == budget)


def test_files_exist(result):
    out, rows = result
    for name in ("summary.md", "rows.csv", "rows.jsonl", "setup.json"):
        assert (out / name).stat().st_size > 0, name
    for name in ("paths.png", "metrics_vs_nfe.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"
    assert study.read_jsonl(out / "rows.jsonl") == rows
    with open(out / "rows.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_every_rule_and_budget_has_a_row(result):
    _, rows = result
    labels = list(demo.rule_factories())
    assert {r["family"] for r in rows} == set(lab.rules.available())
    assert sorted((r["rule"], r["budget"]) for r in rows) == sorted(
        (lb, b) for lb in labels for b in BUDGETS)


def test_nfe_fits_the_budget_and_one_more_step_would_not(result):
    _, rows = result
    makers = demo.rule_factories()
    for r in rows:
        rule = makers[r["rule"]]()
        if r["steps"] is None:  # e.g. annealed_langevin: one step costs more than B
            assert r["status"].startswith("does not fit")
            assert lab.rules.nfe(rule, demo.schedule(1)) > r["budget"]
            continue
        assert r["status"] == "ok", (r["rule"], r["budget"], r["status"])
        assert r["nfe"] == lab.rules.nfe(rule, demo.schedule(r["steps"])) <= r["budget"]
        assert lab.rules.nfe(rule, demo.schedule(r["steps"] + 1)) > r["budget"], r["rule"]


def test_summary_lists_every_rule_and_comes_from_the_rows(result):
    out, rows = result
    text = (out / "summary.md").read_text()
    for label in demo.rule_factories():
        assert f"| {label} |" in text, label
    heun = row(rows, "heun", max(BUDGETS))
    assert f"{heun['error_rms']:.3g}" in text
    assert f"{heun['sw']:.3g}" in text


@pytest.mark.parametrize("rule", ["euler", "heun", "dpmpp_2m", "lms", "rk4"])
def test_error_falls_from_5_to_10_calls(result, rule):
    _, rows = result
    assert row(rows, rule, 10)["error_rms"] < row(rows, rule, 5)["error_rms"]


def test_heun_is_close_to_the_exact_ode_at_the_largest_budget(result):
    _, rows = result
    heun = row(rows, "heun", max(BUDGETS))
    assert heun["nfe"] == 49
    assert heun["error_rms"] < 0.1  # measured 0.034 with 256 samples


def test_stochastic_rules_have_sw_but_no_error(result):
    _, rows = result
    for r in rows:
        if r["steps"] is not None:
            assert r["sw"] is not None and r["sw"] > 0
            assert (r["error_rms"] is None) == r["stochastic"], r["rule"]


def test_save_figure_is_atomic_and_needs_a_format(tmp_path):
    fig, ax = viz.new_figure()
    viz.plot_density_2d(ax, demo.mixture(), 0.1, resolution=40)
    viz.plot_paths_2d(ax, torch.zeros(3, 2, 2))
    path = viz.save_figure(fig, tmp_path / "a" / "fig.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="format"):
        viz.save_figure(fig, tmp_path / "fig.unknown")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "fig.png"]


def test_mixture_density_integrates_to_one():
    m = demo.mixture()
    xlim, ylim = viz.bounds_2d(m, margin=6.0)
    X, Y, logp = viz.density_grid(m, 0.0, xlim, ylim, resolution=400)
    cell = (X[0, 1] - X[0, 0]) * (Y[1, 0] - Y[0, 0])
    assert abs(float(torch.from_numpy(logp).exp().sum()) * cell - 1) < 1e-3


def test_markdown_table():
    text = study.markdown_table([{"a": "x", "b": 1.23456}, {"a": "y", "b": None}])
    assert text.splitlines() == ["| a | b |", "|:---|---:|", "| x | 1.235 |", "| y |  |"]
