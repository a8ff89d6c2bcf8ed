"""lab.tune: optuna over a rule's declared parameters and the schedule's, resumable from
its SQLite file, never worse than the defaults it starts from, and reproducible."""

import json

import pytest
import torch

import lab
from lab import tune

from .conftest import two_d_mixture


@pytest.fixture
def model():
    m = two_d_mixture()
    m.sigma_min, m.sigma_max, m.sample_shape = 0.002, 40.0, (2,)
    return m


def test_the_search_space_is_the_declared_one(model):
    space = tune.search_space("extrapolate", model)
    assert space["gamma"] == ("float", 0.0, 4.0, False)
    assert space["sigma_min"][1:3] == (0.002, 1.0) and space["sigma_max"][1:3] == (10.0, 40.0)
    adam = tune.search_space("adam", model)
    assert {"betas[0]", "betas[1]", "eps", "normalize"} <= set(adam)
    assert adam["normalize"][0] == "choice" and adam["eps"][3] is False  # eps may be 0
    assert "rule" not in tune.search_space("heavy_ball", model)  # the inner rule stays


def test_tuning_beats_the_defaults_resumes_and_reproduces(model, tmp_path):
    db = tmp_path / "tune.db"
    first = tune.tune(model, "extrapolate", 5, trials=8, storage=db, objective="exact",
                      calibration=32)
    assert first.trials == 8
    x = lab.noise((32, 2), seed=lab.seeding.CALIBRATION_SEED).double()
    target = lab.metrics.exact_solution(model, x * 40.0, 40.0, 0.0)
    defaults = tune.objective_score(model, lab.rules.get("extrapolate"),
                                    lambda n: lab.schedules.karras(n, 0.002, 40.0), 5, x,
                                    "exact", target)
    assert first.value <= defaults  # trial 0 is the defaults
    rule, sigmas = first.build()
    out = lab.sample(model, x * float(sigmas[0]), sigmas, rule,
                     seed=lab.seeding.CALIBRATION_SEED).x
    assert float((out - target).pow(2).mean().sqrt()) == pytest.approx(first.value, rel=1e-9)
    assert lab.rules.nfe(rule, sigmas) <= 5
    again = tune.tune(model, "extrapolate", 5, trials=8, storage=db, objective="exact",
                      calibration=32)
    assert again.trials == 8 and again == first  # read back, not rerun
    more = tune.tune(model, "extrapolate", 5, trials=10, storage=db, objective="exact",
                     calibration=32)
    assert more.trials == 10 and more.value <= first.value


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test asks a trial by hand
def test_a_trial_whose_process_died_is_failed_and_run_again(model, tmp_path, monkeypatch):
    """A search killed mid-trial leaves it RUNNING; the resumed search fails it once its
    heartbeat is stale and runs its parameters again, so no trial is silently lost."""
    import time

    import optuna

    monkeypatch.setattr(tune, "HEARTBEAT_SECONDS", 1)
    db = tmp_path / "tune.db"
    kwargs = dict(storage=db, objective="exact", calibration=16)
    tune.tune(model, "euler", 4, trials=2, **kwargs)
    storage = tune.open_storage(db)
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    dead = study.ask(study.trials[0].distributions)  # suggested, then the process died
    storage.record_heartbeat(dead._trial_id)
    time.sleep(5)  # past the grace period of 3 beats (SQLite's clock has whole seconds)
    assert tune.tune(model, "euler", 4, trials=3, **kwargs).trials == 3
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert trials[dead.number].state == optuna.trial.TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.params == dead.params


def test_bad_requests(model, tmp_path):
    with pytest.raises(ValueError, match="unknown rule"):
        tune.tune(model, "nope", 5, storage=tmp_path / "t.db")
    with pytest.raises(ValueError, match="objective"):
        tune.tune(model, "euler", 5, storage=tmp_path / "t.db", objective="mse")
    bare = two_d_mixture()
    with pytest.raises(ValueError, match="sigma_max"):
        tune.search_space("euler", bare)
    assert torch.is_tensor(tune.Tuned("euler", {}, {"sigma_min": 0.01, "sigma_max": 10.0,
                                                    "rho": 7.0}, 0.0, 1, 3, "exact").build()[1])


def test_the_command_writes_best_json_that_the_frontier_study_reads(tmp_path):
    from experiments.__main__ import main
    from experiments.studies import few_step_frontier

    assert main(["tune", "ghvb", "--budget", "4", "--model", "mixture", "--trials", "3",
                 "--calibration", "16", "--out", str(tmp_path)]) == 0
    best = json.loads((tmp_path / "best.json").read_text())
    entry = best["mixture/ghvb/4"]
    assert entry["trials"] == 3 and entry["objective"] == "exact" and "r" in entry["params"]
    assert (tmp_path / "tune.db").exists()
    entry["model"] = few_step_frontier.MODEL  # as if tuned on the study's model
    (tmp_path / "best.json").write_text(json.dumps(best))
    (spec,) = few_step_frontier.tuned_rules(tmp_path / "best.json")
    assert spec["rule"] == "ghvb" and spec["budgets"] == [4]
    assert spec["schedule"] == {"karras": entry["schedule"]}


def test_trials_belong_to_the_models_weights(model, tmp_path):
    db = tmp_path / "tune.db"
    first = tune.tune(model, "euler", 4, trials=3, storage=db, objective="exact",
                      calibration=16, model_name="m")
    other = two_d_mixture()
    other.sigma_min, other.sigma_max, other.sample_shape = 0.002, 40.0, (2,)
    other.means.add_(1.0)
    second = tune.tune(other, "euler", 4, trials=3, storage=db, objective="exact",
                       calibration=16, model_name="m")
    assert second.trials == 3 and second.value != first.value  # its own trials, not reused
