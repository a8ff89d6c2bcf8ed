"""Studies on Ray (``python -m experiments <study> --backend ray``): the rows equal the local
backend's, the driver alone writes them and a run resumes, a cell whose worker dies is
retried, and bad input (no ray, a cluster out of reach, impossible resources) is a clear
error at once.

One local Ray of two CPUs serves the module (started by the test, as CI would).
"""

import os
import sys
import time
from types import SimpleNamespace

import pytest
import ray  # in [dev]: a broken install fails here rather than skipping

from experiments import __main__ as cli
from experiments.studies import smoke
from lab import study


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def dying_once(marker_dir):
    """A study whose cell 1 kills its worker process the first time it runs (a node lost,
    an out-of-memory kill), and counts its attempts in ``marker_dir``."""

    def run_cell(cell):
        if cell["i"] == 1:
            attempts = sorted(marker_dir.glob("attempt-*"))
            (marker_dir / f"attempt-{len(attempts)}").touch()
            if not attempts:
                os._exit(1)
        return {"square": cell["i"] ** 2}

    return SimpleNamespace(NAME="dying", cells=lambda fast: study.grid(i=[0, 1, 2]),
                           run_cell=run_cell, render=lambda rows, out: None)


def test_ray_rows_equal_the_local_rows_and_resume(local_ray, tmp_path):
    local = study.run(smoke, tmp_path / "local", fast=True, progress=False)
    out = tmp_path / "ray"
    first = study.run(smoke, out, fast=True, progress=False, limit=5, map=study.ray_map())
    assert len(first) == 5 and len(study.read_rows(out / study.ROWS)) == 5
    rows = study.run(smoke, out, fast=True, progress=False, map=study.ray_map())
    on_disk = study.read_rows(out / study.ROWS)
    assert len(on_disk) == len(local) == len({r["key"] for r in on_disk})  # no cell twice
    assert (out / "summary.md").exists()  # rendered once every cell was done
    for a, b in zip(local, rows):
        assert a["key"] == b["key"] and a["cell"] == b["cell"]
        assert (b["device"], b["dtype"]) == (a["device"], a["dtype"]) == ("cpu", "float64")
        for name in (*smoke.METRICS, "steps", "nfe"):
            assert b["metrics"][name] == pytest.approx(a["metrics"][name], rel=1e-6), name


def test_the_cli_runs_a_study_on_ray(local_ray, tmp_path, capsys):
    assert cli.main(["smoke", "--fast", "--quiet", "--backend", "ray", "--cpus-per-cell", "1",
                     "--out", str(tmp_path)]) == 0
    assert "12 cells done" in capsys.readouterr().out
    assert len(study.read_rows(tmp_path / study.ROWS)) == len(smoke.cells(True)) == 12


def test_a_cell_whose_worker_dies_is_retried(local_ray, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    rows = study.run(dying_once(markers), tmp_path / "out", progress=False,
                     map=study.ray_map(max_retries=2))
    assert [r["metrics"]["square"] for r in rows] == [0, 1, 4]
    assert len(list(markers.glob("attempt-*"))) == 2  # died once, then ran again


def test_a_cell_needing_more_than_the_cluster_has_is_refused(local_ray, tmp_path):
    with pytest.raises(study.RayBackendError, match="asks for 3 CPU.*has 2"):
        study.run(smoke, tmp_path, fast=True, progress=False,
                  map=study.ray_map(cpus_per_cell=3))
    with pytest.raises(study.RayBackendError, match="GPU"):
        study.run(smoke, tmp_path, fast=True, progress=False,
                  map=study.ray_map(gpus_per_cell=1))


def test_an_unreachable_address_fails_at_once(tmp_path, capsys):
    start = time.perf_counter()
    code = cli.main(["smoke", "--fast", "--quiet", "--backend", "ray", "--address",
                     "127.0.0.1:9", "--out", str(tmp_path)])  # discard port: nothing answers
    assert code == 2 and time.perf_counter() - start < 30
    err = capsys.readouterr().err
    assert "no Ray cluster answers at 127.0.0.1:9" in err and "ray start --head" in err
    assert not (tmp_path / study.ROWS).exists()


@pytest.mark.parametrize("args, message", [
    (["--cpus-per-cell", "0"], "--cpus-per-cell must be a number > 0"),
    (["--gpus-per-cell", "1.5"], "--gpus-per-cell must be"),
    (["--workers", "2"], "--workers is for the local backend"),
    (["--device", "cuda", "--gpus-per-cell", "0"], "Ray hides the GPUs"),
])
def test_bad_ray_options_are_clear_errors(args, message, tmp_path, capsys):
    assert cli.main(["smoke", "--fast", "--backend", "ray", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_ray_options_without_the_ray_backend_are_refused(tmp_path, capsys):
    assert cli.main(["smoke", "--fast", "--address", "auto", "--out", str(tmp_path)]) == 2
    assert "--address go with --backend ray" in capsys.readouterr().err


def test_without_ray_installed_the_error_names_the_install_command(monkeypatch, tmp_path,
                                                                   capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert cli.main(["smoke", "--fast", "--backend", "ray", "--out", str(tmp_path)]) == 2
    assert 'pip install "sampler-lab[ray]"' in capsys.readouterr().err
