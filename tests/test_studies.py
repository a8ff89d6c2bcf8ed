"""The studies of ``experiments/studies``: each one's ``--fast`` run through
``lab.study.run`` (its summary generated, naming every cell) and checks of its own parts."""

import sys

import pytest
import torch

import lab
from experiments.studies import (
    dropping_timestep,
    exact_error_vs_nfe,
    model_zoo,
    noise_reinjection,
    perceptual_loss,
    rules_vs_nfe,
)

# ---- rules_vs_nfe ------------------------------------------------------------------------
# Time budget: its --fast run 10 CPU s (measured 7 CPU s: 16 samples a cell); the parity
# checks a few seconds.
# Library-level peer parity (each lab rule and its diffusers scheduler through
# to_diffusers, at the same sigmas, 1e-4) is in test_to_diffusers.py;
# here the study's own peer path on fashion-edm.

# diffusers 0.42 calls np.array on torch tensors in set_timesteps (numpy 2 "copy" notice)
quiet_diffusers = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")


@pytest.fixture(scope="module")
def rules_vs_nfe_run(tmp_path_factory):
    return run_fast(rules_vs_nfe, tmp_path_factory)


@pytest.mark.slow
@quiet_diffusers
def test_rules_vs_nfe_fast_summary_names_every_cell(rules_vs_nfe_run):
    out, rows = rules_vs_nfe_run
    check_summary_names_every_cell(rules_vs_nfe, out, rows, ["fid_vs_nfe.png"])
    summary = (out / "summary.md").read_text()
    for row in rows:
        assert 0 < row["metrics"]["fid"] and row["nfe"] <= row["cell"]["budget"]
    # Heun costs 2n - 1 calls; its FID at 10 calls is a mean over three seeds, with a std
    assert {r["cell"]["budget"]: r["nfe"] for r in rows if r["cell"].get("rule") == "heun"
            and r["cell"]["seed"] == 0} == {5: 5, 10: 9}
    line = next(ln for ln in summary.splitlines() if ln.startswith("| heun | 10 | 5 | 9 |"))
    assert line.split("|")[6].strip()  # the FID std column


@quiet_diffusers
@pytest.mark.parametrize("scheduler, rule", [("DDIMScheduler", "euler"),
                                             ("HeunDiscreteScheduler", "heun"),
                                             ("DPMSolverMultistepScheduler", "dpmpp_2m")])
def test_rules_vs_nfe_peer_is_the_lab_rule_on_its_sigmas(scheduler, rule):
    """The study's peer path (fashion-edm through to_diffusers, diffusers' loop, counted
    NFE) against the lab rule on the scheduler's own sigmas, from the same noise."""
    diffusers = pytest.importorskip("diffusers")
    cell = {"model": "fashion-edm", "budget": 5,
            **next(p for p in rules_vs_nfe.PEERS if p["peer"] == scheduler)}
    noise = lab.noise((4, 1, 28, 28), seed=3)
    with lab.study.threads(1):
        x, nfe, steps = rules_vs_nfe.sample_peer(cell, noise)
        model = rules_vs_nfe.model("fashion-edm")
        sched = lab.models.to_diffusers(model).make_scheduler(getattr(diffusers, scheduler),
                                                               **cell["params"])
        sched.set_timesteps(steps)
        sigmas = lab.models.scheduler_sigmas(sched)
        traj = lab.sample(model, noise * float(sigmas[0]), sigmas, rule, record="final")
    assert nfe == traj.nfe <= 5 and float(sigmas[0]) == pytest.approx(80.0, rel=1e-6)
    assert float((x - traj.x).norm() / traj.x.norm()) < 1e-4


# ---- shared checks -----------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"


def run_fast(module, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"{module.NAME}-fast")
    return out, lab.study.run(module, out, fast=True, progress=False)


def check_summary_names_every_cell(module, out, rows, images):
    assert [r["cell"] for r in rows] == module.cells(fast=True)
    summary = (out / "summary.md").read_text()
    for row in rows:
        assert f"| {row['key']} |" in summary and row["metrics"]["label"] in summary
        assert row["metrics"]["status"] in ("ok", "does not fit the budget"), row
    for name in images:
        assert (out / name).read_bytes()[:8] == PNG, name


def metric_of(rows, name, **where):
    """The metric ``name`` of the one row whose cell or metrics match ``where``."""
    found = [r["metrics"][name] for r in rows
             if all({**r["cell"], **r["metrics"]}.get(k) == v for k, v in where.items())]
    assert len(found) == 1, (where, len(found))
    return found[0]


# ---- exact_error_vs_nfe ------------------------------------------------------------------
# Time budget: its --fast run 10 s on two busy cores (measured 8 s as a fresh process).


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory):
    return run_fast(exact_error_vs_nfe, tmp_path_factory)


def test_exact_error_vs_nfe_fast_summary_names_every_cell(exact_run):
    out, rows = exact_run
    check_summary_names_every_cell(exact_error_vs_nfe, out, rows,
                                   ["error_rms_vs_nfe.png", "sw_vs_nfe.png"])
    summary = (out / "summary.md").read_text()
    for model in exact_error_vs_nfe.MODELS:  # each model's SW floor, from its rows
        floor = metric_of(rows, "sw_floor", model=model, rule="euler", budget=5)
        assert f"**{floor:.3g}**" in summary
    # the plain gradient step is Euler (DESIGN section 2), and the summary finds it
    assert summary.count("- Same error_rms in every cell: euler = plain.") == 2


@pytest.mark.parametrize("model", ["mixture", "gaussian"])
def test_exact_errors_fall_with_nfe(exact_run, model):
    _, rows = exact_run
    for rule in ("euler", "heun", "rk4", "dpmpp_2m"):
        err = {b: metric_of(rows, "error_rms", model=model, rule=rule, budget=b) for b in (5, 10)}
        assert err[10] < err[5], (rule, err)
    assert metric_of(rows, "error_rms", model=model, rule="ancestral", budget=10) is None


def test_exact_error_ranking_on_the_image_like_gaussian_at_10_calls(exact_run):
    """At 10 calls on the stiff 784-d Gaussian the exponential integrator leads and Heun's
    5 steps lose to Euler's 10 (second order pays only from about 50 calls on: see
    results/exact_error_vs_nfe); the closed-form reference makes this exact."""
    _, rows = exact_run
    err = {r: metric_of(rows, "error_rms", model="gaussian", rule=r, budget=10)
           for r in ("dpmpp_2m", "euler", "heun")}
    assert err["dpmpp_2m"] < err["euler"] < err["heun"], err


def test_exact_solution_is_the_closed_form_and_agrees_with_the_numerical_solve():
    g = lab.data.image_gaussian(dim=12, scale=4.0, seed=3)
    assert torch.allclose(g.eigvals[0].flip(0),
                          4.0 * torch.arange(1, 13, dtype=torch.float64) ** -1.3)
    x = lab.noise((3, 12), seed=0, dtype=torch.float64) * 80.0
    closed = lab.metrics.exact_solution(g, x, 80.0, 0.0)
    numeric = lab.metrics.ode_reference(g, x, 80.0, 0.0)
    assert lab.metrics.rms_distance(closed, numeric) < 1e-5


# ---- noise_reinjection -------------------------------------------------------------------
# Time budget: its --fast run 8 CPU s (measured 6 CPU s; Fashion sampling, 16 samples a
# cell, is most of it).


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory):
    return run_fast(noise_reinjection, tmp_path_factory)


@pytest.mark.slow
def test_noise_reinjection_fast_summary_names_every_cell(noise_run):
    out, rows = noise_run
    check_summary_names_every_cell(noise_reinjection, out, rows,
                                   ["sw_vs_nfe.png", "fid_vs_nfe.png"])


@pytest.mark.slow
def test_noise_reinjection_has_every_eta_and_eta_0_is_euler(noise_run):
    out, rows = noise_run
    metric = {"mixture": "sw", noise_reinjection.FASHION: "fid"}
    places = {(r["cell"]["model"], r["cell"]["budget"], r["cell"]["seed"]) for r in rows}
    assert {m for m, _, _ in places} == set(metric)
    for model, budget, seed in places:
        where = {"model": model, "budget": budget, "seed": seed}
        value = {eta: metric_of(rows, metric[model], label=lab.rules.get(
            "ancestral", eta=eta).config_name, **where) for eta in noise_reinjection.ETAS}
        euler = metric_of(rows, metric[model], rule="euler", **where)
        assert value[0.0] == euler  # bit for bit: the wrapper at zero draws no noise
        assert value[1.0] != euler  # and at eta 1 it does
    summary = (out / "summary.md").read_text()
    for name in metric.values():
        assert f"- Same {name} in every cell: euler = ancestral(eta=0).\n" in summary



# ---- results/README.md -------------------------------------------------------------------

def test_results_readme_has_a_section_per_study_from_rows_and_reading(tmp_path):
    """A finished study gets its generated headline, plot and hand-written reading; an
    unfinished one the command that runs it. Built here from the committed exact rows."""
    import shutil

    from experiments import readme
    from experiments.__main__ import RESULTS

    shutil.copytree(RESULTS / "exact_error_vs_nfe", tmp_path / "exact_error_vs_nfe")
    (tmp_path / "exact_error_vs_nfe" / "READING.md").write_text("**Reading.** test prose")
    text = readme.main(tmp_path).read_text()
    for name in readme.ORDER:
        assert f"## {name}" in text
    exact = text.split("## exact_error_vs_nfe")[1].split("\n## ")[0]
    assert "**Reading.** test prose" in exact
    assert "(exact_error_vs_nfe/error_rms_vs_nfe.png)" in exact
    assert "| euler | 7.18 | 3.74 | 1.9 | 0.765 | 0.99 |" in exact  # from the rows
    rules = text.split("## rules_vs_nfe")[1].split("\n## ")[0]
    assert "`python -m experiments rules_vs_nfe`" in rules and "0 of 76 cells" in rules


# ---- model_zoo ---------------------------------------------------------------------------
# Time budget: its --fast run 10 s (measured 8 s beside a training run).

def test_model_zoo_fast_scores_and_previews_its_samples(tmp_path_factory):
    out, rows = run_fast(model_zoo, tmp_path_factory)
    check_summary_names_every_cell(model_zoo, out, rows, ["samples.png"])
    (row,) = rows
    assert row["nfe"] == 7 and row["metrics"]["fid_64"] > 0
    preview = lab.viz.images_from_text(row["metrics"]["preview"])
    samples = lab.sample(model_zoo.model("fashion-edm"),
                         lab.noise((2, 1, 28, 28)) * 80.0,
                         lab.schedules.karras(4, sigma_min=0.002, sigma_max=80.0), "heun",
                         record="final").x
    # the preview holds the run's own first samples, to 8-bit precision
    assert preview.shape == (16, 1, 28, 28)
    assert (preview[:2] - samples.clamp(-1, 1)).abs().max() < 1 / 127.5 + 1e-3


# ---- dropping_timestep -------------------------------------------------------------------
# Time budget: its --fast run 8 CPU s (measured 6.5 CPU s: 16 samples a cell).

@pytest.fixture(scope="module")
def dropping_run(tmp_path_factory):
    return run_fast(dropping_timestep, tmp_path_factory)


@pytest.mark.slow
def test_dropping_timestep_fast_summary_names_every_cell(dropping_run):
    out, rows = dropping_run
    check_summary_names_every_cell(dropping_timestep, out, rows,
                                   ["fid_by_sigma_source.png", "samples.png"])
    summary = (out / "summary.md").read_text()
    assert "| fashion-noise-blind, noise |" in summary  # the headline pivot, from the rows
    for row in rows:
        # only runs that estimate sigma record how far the estimate was from the schedule
        estimated = row["cell"]["sigma_from"] != "schedule"
        assert (row["metrics"]["sigma_error"] is not None) == estimated, row["cell"]


@pytest.mark.slow
def test_dropping_timestep_estimates_track_the_schedule(dropping_run):
    """Along euler's own path on the seeing model (whose states follow the schedule) the
    regressor reads the noise level to within 0.05 (median over steps and samples)."""
    _, rows = dropping_run
    error = metric_of(rows, "sigma_error", model="fashion-edm", sigma_from="fashion-sigma")
    assert error < 0.05


# ---- perceptual_loss ---------------------------------------------------------------------
# Time budget: its --fast run 5 CPU s (measured 3.6 CPU s; 2 x 32 samples, 10 FIDs of x0_hat
# per trajectory; 32, not 16: the first x0_hat FID is then 4.7x the samples', not 3.9x).

@pytest.fixture(scope="module")
def perceptual_run(tmp_path_factory):
    return run_fast(perceptual_loss, tmp_path_factory)


@pytest.mark.slow
def test_perceptual_loss_fast_summary_names_every_cell(perceptual_run):
    out, rows = perceptual_run
    check_summary_names_every_cell(perceptual_loss, out, rows, ["fid.png", "samples.png"])
    assert {r["cell"]["model"] for r in rows} == set(perceptual_loss.MODELS)


@pytest.mark.slow
def test_perceptual_loss_x0_hat_path_ends_at_the_samples(perceptual_run):
    """x0_hat's FID is recorded at every step; euler's last step (to sigma 0) lands on
    x0_hat, so the path's last FID is the samples' FID, and the first (at sigma 80,
    x0_hat about the data mean) is far worse."""
    _, rows = perceptual_run
    for row in rows:
        m = row["metrics"]
        assert len(m["x0_fid"]) == len(m["x0_sigma"]) == m["steps"]
        assert m["x0_sigma"][0] == pytest.approx(perceptual_loss.SIGMA_MAX)
        assert m["x0_fid"][-1] == pytest.approx(m["fid"], rel=1e-4)
        assert m["x0_fid"][0] > 3 * m["fid"], m["x0_fid"]


# ---- every study -------------------------------------------------------------------------

@pytest.mark.slow
@quiet_diffusers
@pytest.mark.parametrize("module, run", [(rules_vs_nfe, "rules_vs_nfe_run"),
                                         (exact_error_vs_nfe, "exact_run"),
                                         (noise_reinjection, "noise_run"),
                                         (dropping_timestep, "dropping_run"),
                                         (perceptual_loss, "perceptual_run")],
                         ids=lambda v: getattr(v, "NAME", None))
def test_a_failed_cell_renders_as_its_status(module, run, request, tmp_path, monkeypatch):
    """A cell whose samples turn NaN mid-trajectory is a row, not a crash: the cell
    records the failure as its status, the study still renders, and the summary names it
    (a render once raised KeyError on such a row of dropping_timestep)."""
    _, rows = request.getfixturevalue(run)
    message = "rule euler produced NaN/Inf at step 3 (sigma 2.1 -> 1.3); a test"

    def non_finite(*args, **kwargs):
        raise lab.NonFiniteError(message)

    monkeypatch.setattr(sys.modules["lab.sample"], "sample_at_budget", non_finite)
    monkeypatch.setattr(lab, "sample_at_budget", non_finite)
    i = next(i for i, r in enumerate(rows) if "peer" not in r["cell"])  # a lab rule's cell
    metrics = module.run_cell(rows[i]["cell"])
    assert metrics["status"] == f"non-finite: {message}"
    module.render([*rows[:i], {**rows[i], "metrics": metrics}, *rows[i + 1:]], tmp_path)
    assert metrics["status"] in (tmp_path / "summary.md").read_text()
