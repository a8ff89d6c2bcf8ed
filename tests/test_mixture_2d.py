"""The 2-D mixture study (experiments/studies/mixture_2d.py) in its ``--fast`` mode,
through the same resumable runner as every study, and the plotting helpers it uses."""

import pytest
import torch

import lab
from experiments.studies import mixture_2d
from lab import study, viz


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixture_2d-fast")
    return out, study.run(mixture_2d, out, fast=True, progress=False)


def metrics(rows, label, budget):
    (found,) = [r["metrics"] for r in rows
                if r["metrics"]["label"] == label and r["cell"]["budget"] == budget]
    return found


def test_files_exist_and_rows_are_the_runners(result):
    out, rows = result
    for name in ("summary.md", study.ROWS, study.MANIFEST):
        assert (out / name).stat().st_size > 0, name
    for name in ("paths.png", mixture_2d.PLOT):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"
    assert study.read_rows(out / study.ROWS) == rows
    assert [r["cell"] for r in rows] == mixture_2d.cells(fast=True)


def test_every_rule_and_budget_has_a_row(result):
    _, rows = result
    assert {r["metrics"]["family"] for r in rows} == set(lab.rules.available())
    budgets = mixture_2d.FAST["budgets"]
    labels = {lab.rules.get(r["rule"], **r["params"]).config_name for r in mixture_2d.rules()}
    assert sorted((r["metrics"]["label"], r["cell"]["budget"]) for r in rows) == sorted(
        (lb, b) for lb in labels for b in budgets)


def test_nfe_fits_the_budget_and_one_more_step_would_not(result):
    _, rows = result
    for r in rows:
        m, budget = r["metrics"], r["cell"]["budget"]
        rule = lab.rules.get(r["cell"]["rule"], **r["cell"]["params"])
        if m.get("steps") is None:  # e.g. annealed_langevin: one step costs more than B
            assert m["status"] == "does not fit the budget"
            assert lab.rules.nfe(rule, mixture_2d.schedule(1)) > budget
            continue
        assert m["status"] == "ok", (m["label"], budget, m["status"])
        predicted = lab.rules.nfe(rule, mixture_2d.schedule(m["steps"]))
        assert r["nfe"] == m["nfe"] == predicted <= budget
        assert lab.rules.nfe(rule, mixture_2d.schedule(m["steps"] + 1)) > budget, m["label"]


def test_summary_lists_every_rule_and_comes_from_the_rows(result, tmp_path):
    out, rows = result
    text = (out / "summary.md").read_text()
    for r in rows:
        assert f"| {r['metrics']['label']} |" in text and f"| {r['key']} |" in text
    heun = metrics(rows, "heun", 50)
    assert f"{heun['error_rms']:.3g}" in text and f"{heun['sw']:.3g}" in text
    assert f"**{heun['sw_floor']:.3g}**" in text
    assert "euler = optim(SGD) = plain" in text  # the plain step is Euler, found from the rows
    mixture_2d.render(study.read_rows(out / study.ROWS), tmp_path)  # from the rows alone
    assert (tmp_path / "summary.md").read_text() == text


@pytest.mark.parametrize("rule", ["euler", "heun", "dpmpp_2m", "lms", "rk4"])
def test_error_falls_from_5_to_10_calls(result, rule):
    _, rows = result
    assert metrics(rows, rule, 10)["error_rms"] < metrics(rows, rule, 5)["error_rms"]


def test_heun_is_close_to_the_exact_ode_at_the_largest_budget(result):
    _, rows = result
    heun = metrics(rows, "heun", 50)
    assert heun["nfe"] == 49
    assert heun["error_rms"] < 0.1
    assert heun["schedule_floor_rms"] < 1e-4  # the schedule's own floor is far below


def test_stochastic_rules_have_sw_but_no_error(result):
    _, rows = result
    for r in rows:
        m = r["metrics"]
        if m.get("steps") is not None:
            assert m["sw"] > 0
            assert ("error_rms" not in m) == m["stochastic"], m["label"]


def test_paths_are_recorded_at_the_path_budget_only(result):
    _, rows = result
    for r in rows:
        m = r["metrics"]
        if r["cell"]["budget"] != mixture_2d.PATH_BUDGET or m.get("steps") is None:
            assert "path" not in m
            continue
        path = torch.tensor(m["path"])
        assert path.shape == (m["steps"] + 1, mixture_2d.PATH_SAMPLES, 2)
        assert path[0].abs().max() > 10  # it starts in the sigma = 80 noise


def test_the_old_module_entry_point_is_gone():
    """One way to run it: ``python -m experiments mixture_2d`` (the runner)."""
    from experiments import __main__ as cli

    assert cli.load("mixture_2d") is mixture_2d
    with pytest.raises(ModuleNotFoundError):
        __import__("experiments.mixture_2d")


def test_save_figure_is_atomic_and_needs_a_format(tmp_path):
    fig, ax = viz.new_figure()
    viz.plot_density_2d(ax, mixture_2d.model("mixture"), 0.1, resolution=40)
    viz.plot_paths_2d(ax, torch.zeros(3, 2, 2))
    path = viz.save_figure(fig, tmp_path / "a" / "fig.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="format"):
        viz.save_figure(fig, tmp_path / "fig.unknown")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "fig.png"]


def test_mixture_density_integrates_to_one():
    m = mixture_2d.model("mixture")
    xlim, ylim = viz.bounds_2d(m, margin=6.0)
    X, Y, logp = viz.density_grid(m, 0.0, xlim, ylim, resolution=400)
    cell = (X[0, 1] - X[0, 0]) * (Y[1, 0] - Y[0, 0])
    assert abs(float(torch.from_numpy(logp).exp().sum()) * cell - 1) < 1e-3


def test_markdown_table():
    text = study.markdown_table([{"a": "x", "b": 1.23456}, {"a": "y", "b": None}])
    assert text.splitlines() == ["| a | b |", "|:---|---:|", "| x | 1.235 |", "| y |  |"]


def test_a_failed_cell_renders_as_its_status(result, tmp_path, monkeypatch):
    """A cell whose samples turn NaN is a row with its status, and the summary says so."""
    import sys

    _, rows = result
    message = "rule heun produced NaN/Inf at step 3 (sigma 2.1 -> 1.3); a test"

    def non_finite(*args, **kwargs):
        raise lab.NonFiniteError(message)

    monkeypatch.setattr(sys.modules["lab.sample"], "sample_at_budget", non_finite)
    i = next(i for i, r in enumerate(rows) if r["metrics"]["label"] == "heun"
             and r["cell"]["budget"] == mixture_2d.PATH_BUDGET)
    metrics = mixture_2d.run_cell(rows[i]["cell"])
    assert metrics["status"] == f"non-finite: {message}" and "sw" not in metrics
    mixture_2d.render([*rows[:i], {**rows[i], "metrics": metrics}, *rows[i + 1:]], tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert f"**heun at B={mixture_2d.PATH_BUDGET}: non-finite: {message}**" in text
    assert (tmp_path / "paths.png").read_bytes()[:4] == b"\x89PNG"  # drawn without heun
