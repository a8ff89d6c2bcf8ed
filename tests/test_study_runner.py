"""The study runner (``lab.study.run``, ``python -m experiments``): cell keys, resuming
after an interruption with no duplicate and no lost cell, atomic rows and images under
a crash mid-write, provenance in every row, and the smoke study's ``--fast`` mode.

Time budget: the smoke study's ``--fast`` run, as a fresh ``python -m experiments``
process, within 60 s on two busy cores (most of it importing torch and drawing the
figure).
"""

import functools
import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import lab
from experiments import __main__ as cli
from experiments.studies import smoke
from lab import io, study

ROOT = Path(__file__).resolve().parents[1]
FAST_BUDGET_SECONDS = 60


# ---- helpers ---------------------------------------------------------------------------


def lines_of(path: Path) -> list[dict]:
    """Parse a rows file line by line, insisting every line is complete JSON."""
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "the last row is not terminated"
    return [json.loads(line) for line in text.splitlines()]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def fake(n=6, interrupt_at=None, name="fake"):
    """A study without torch: cells i = 0..n-1, metric i^2; ``interrupt_at`` = k makes the
    k-th call of this object's run_cell raise KeyboardInterrupt (a Ctrl-C mid-cell)."""
    calls = []

    def run_cell(cell):
        calls.append(cell["i"])
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return {"square": cell["i"] ** 2, "nfe": cell["i"] + 1}

    def render(rows, out_dir):
        flat = [study.flat(r) for r in rows]
        io.write_text(out_dir / "summary.md", study.markdown_table(flat, ["key", "i", "square"]))

    return SimpleNamespace(NAME=name, cells=lambda fast: study.grid(i=list(range(n)), fast=fast),
                           run_cell=run_cell, render=render, calls=calls)


def interrupting(module, k):
    """``module`` as a study whose run_cell raises KeyboardInterrupt on its (k+1)-th call."""
    calls = []

    def run_cell(cell):
        calls.append(study.cell_key(cell))
        if len(calls) == k + 1:
            raise KeyboardInterrupt
        return module.run_cell(cell)

    return SimpleNamespace(NAME=module.NAME, cells=module.cells, run_cell=run_cell,
                           render=module.render, calls=calls)


def counting(module):
    calls = []

    def run_cell(cell):
        calls.append(study.cell_key(cell))
        return module.run_cell(cell)

    return SimpleNamespace(NAME=module.NAME, cells=module.cells, run_cell=run_cell,
                           render=module.render, calls=calls)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One complete ``--fast`` run of the smoke study, in process."""
    out = tmp_path_factory.mktemp("smoke-fast")
    rows = study.run(smoke, out, fast=True, progress=False)
    return out, rows


# ---- cells and keys --------------------------------------------------------------------


def test_cell_key_is_a_stable_hash_of_the_content():
    a = {"model": "mixture", "rule": "heun", "params": {"beta": 0.5}, "budget": 10, "seed": 0}
    b = dict(reversed(list(a.items())))
    assert study.cell_key(a) == study.cell_key(b)
    assert study.cell_key(a) != study.cell_key({**a, "seed": 1})
    assert study.cell_key(a) != study.cell_key({**a, "params": {"beta": 0.9}})
    # pinned: sha256 of the canonical JSON, first 16 hex digits
    assert study.cell_key({"b": 1, "a": [0.5, "x"]}) == \
        hashlib.sha256(b'{"a":[0.5,"x"],"b":1}').hexdigest()[:16]
    with pytest.raises(TypeError, match="JSON"):
        study.cell_key({"x": object()})
    with pytest.raises(TypeError, match="JSON"):
        study.cell_key({"x": float("nan")})


def test_grid_is_the_product_of_its_axes():
    cells = study.grid([{"rule": "euler", "params": {}}, {"rule": "momentum",
                                                          "params": {"beta": 0.5}}],
                       budget=[5, 10], seed=range(2), samples=64)
    assert len(cells) == 8
    assert cells[0] == {"rule": "euler", "params": {}, "budget": 5, "seed": 0, "samples": 64}
    assert cells[-1]["rule"] == "momentum" and cells[-1]["seed"] == 1
    assert len({study.cell_key(c) for c in cells}) == 8
    with pytest.raises(ValueError, match="overlap"):
        study.grid([{"seed": 0}], seed=[1])


def test_duplicate_cells_are_refused(tmp_path):
    s = fake()
    s.cells = lambda fast: [{"i": 1}, {"i": 1}]
    with pytest.raises(study.StudyError, match="same"):
        study.run(s, tmp_path, progress=False)


def test_a_study_missing_a_function_is_refused(tmp_path):
    s = fake()
    del s.render
    with pytest.raises(study.StudyError, match=r"'fake' is not a lab.study.Study: it has no "
                                               r"render\(rows, out_dir\)"):
        study.run(s, tmp_path, progress=False)
    assert not (tmp_path / study.ROWS).exists()  # refused before any cell ran
    s.render, s.run_cell = "not a function", None
    with pytest.raises(study.StudyError, match=r"no run_cell\(cell\), no render\(rows"):
        study.run(s, tmp_path, progress=False)


def test_the_study_contract_is_a_protocol_every_study_satisfies():
    """Every study of experiments/studies satisfies lab.study.Study; those with a
    results/README.md section (experiments.readme.ORDER) satisfy ReportedStudy too, and
    the check names each missing member."""
    from experiments import readme

    for name in cli.available():
        study.check_study(cli.load(name), study.Study)
    for name in readme.ORDER:
        study.check_study(cli.load(name), study.ReportedStudy)
    with pytest.raises(study.StudyError, match=r"no NOTEBOOK, no PLOT, no headline\(rows\)"):
        study.check_study(fake(), study.ReportedStudy)


# ---- what run_cell shares --------------------------------------------------------------


def test_model_loader_builds_each_model_once_per_name():
    built = []

    def gaussian():
        built.append("gaussian")
        return smoke.gaussian()

    model = study.model_loader(gaussian=gaussian)
    assert model("gaussian") is model("gaussian") and built == ["gaussian"]
    with pytest.raises(ValueError, match="nope"):  # any other name is a zoo name
        model("nope")


def test_sample_cell_samples_the_cells_noise_at_its_budget_or_says_why_not():
    m = smoke.model("gaussian")
    cell = {"rule": "heun", "params": {}, "budget": 5, "seed": 3, "samples": 4}
    traj, status = study.sample_cell(m, cell, smoke.schedule, sigma_max=80.0,
                                     dtype=torch.float64)
    x = lab.noise((4, 2), seed=3, dtype=torch.float64) * 80.0
    direct = lab.sample(m, x, smoke.schedule(3), "heun", seed=3)  # 3 steps: 5 calls
    assert status == "ok" and traj.nfe == 5 and torch.equal(traj.x, direct.x)
    cell = {**cell, "rule": "annealed_langevin", "budget": 1}
    assert study.sample_cell(m, cell, smoke.schedule, sigma_max=80.0) == (
        None, "does not fit the budget")


def test_sample_cell_starts_its_noise_where_the_schedule_starts():
    """A tuned schedule from sigma 35 starts from noise of size 35, not the study's 80
    (the bug that once scored tuned cells at FID 131 instead of about 6)."""
    m = smoke.model("gaussian")
    cell = {"rule": "euler", "params": {}, "budget": 4, "seed": 3, "samples": 4}
    tuned = lambda n: lab.schedules.karras(n, 0.01, 35.0)  # noqa: E731
    traj, _ = study.sample_cell(m, cell, tuned, dtype=torch.float64)
    x = lab.noise((4, 2), seed=3, dtype=torch.float64) * 35.0
    assert torch.equal(traj.x, lab.sample(m, x, tuned(4), "euler", seed=3).x)
    with pytest.raises(ValueError, match="schedule starts at sigma 35.*drop sigma_max"):
        study.sample_cell(m, cell, tuned, sigma_max=80.0)


def test_the_runner_runs_each_cell_on_one_torch_thread(tmp_path):
    s = fake(n=1)
    s.run_cell = lambda cell: {"threads": torch.get_num_threads()}
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        (row,) = study.run(s, tmp_path, progress=False)
        assert row["metrics"]["threads"] == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


# ---- rows ------------------------------------------------------------------------------


def test_rows_hold_cell_metrics_nfe_time_and_provenance(smoke_run):
    out, rows = smoke_run

    def in_history(commit):  # HEAD itself, or (others committed since the run) an ancestor
        try:
            if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT,
                              capture_output=True).returncode != 0:
                return commit == "unknown"  # not a checkout
            return len(commit) == 40 and subprocess.run(
                ["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=ROOT,
                capture_output=True).returncode == 0
        except OSError:  # no git
            return commit == "unknown"

    for row, cell in zip(rows, smoke.cells(fast=True)):
        assert row["key"] == study.cell_key(cell) and row["cell"] == cell
        assert row["study"] == "smoke"
        assert set(row["metrics"]) >= {"steps", "nfe", "error_rms", "sw"}
        assert row["nfe"] == row["metrics"]["nfe"] <= cell["budget"]
        assert row["seconds"] > 0
        assert row["lab_version"] == lab.__version__
        assert in_history(row["git_commit"]), row["git_commit"]
        assert row["git_dirty"] in (True, False, None)
        assert row["torch_version"] == torch.__version__
        assert row["compiled"] is (os.environ.get("LAB_COMPILE") == "1")
        assert row["finished"].endswith("+00:00")


def test_rows_record_whether_unets_ran_compiled(monkeypatch):
    """--compile changes float rounding (rel ~1e-6), so a row says whether it was on."""
    monkeypatch.setenv("LAB_COMPILE", "1")
    assert study.provenance()["compiled"] is True
    monkeypatch.delenv("LAB_COMPILE")
    assert study.provenance()["compiled"] is False


def test_git_commit_is_unknown_outside_a_checkout(tmp_path):
    assert study.git_commit(tmp_path) == "unknown"


def test_metrics_become_plain_json(tmp_path):
    import numpy as np
    import torch

    s = fake(n=1)
    s.run_cell = lambda cell: {"a": torch.tensor(1.5), "b": np.float32(2.0), "c": (1, 2),
                               "d": float("nan"), "e": float("inf"), "f": np.int64(3)}
    (row,) = study.run(s, tmp_path, progress=False)
    assert row["metrics"] == {"a": 1.5, "b": 2.0, "c": [1, 2], "d": None, "e": None, "f": 3}
    s.run_cell = lambda cell: {"x": torch.zeros(3)}
    with pytest.raises(TypeError, match="metrics.x"):
        study.run(s, tmp_path / "other", progress=False)


# ---- resume ----------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 5])
def test_interrupted_fast_study_resumes_without_duplicates_or_losses(tmp_path, k):
    """Ctrl-C during cell k+1 of the smoke study; the re-run runs only the rest."""
    cells = smoke.cells(fast=True)
    keys = [study.cell_key(c) for c in cells]
    first = interrupting(smoke, k)
    with pytest.raises(KeyboardInterrupt):
        study.run(first, tmp_path, fast=True, progress=False)
    path = tmp_path / study.ROWS
    before = path.read_bytes() if path.exists() else b""
    assert [r["key"] for r in (lines_of(path) if path.exists() else [])] == keys[:k]
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "summary.md").exists()  # nothing rendered from half a study

    second = counting(smoke)
    rows = study.run(second, tmp_path, fast=True, progress=False)
    assert second.calls == keys[k:]  # the finished cells were skipped
    on_disk = lines_of(path)
    assert path.read_bytes().startswith(before)  # finished rows untouched
    assert sorted(r["key"] for r in on_disk) == sorted(keys)  # none lost, none twice
    assert [r["key"] for r in rows] == keys
    assert (tmp_path / "summary.md").exists()

    third = counting(smoke)
    study.run(third, tmp_path, fast=True, progress=False)
    assert third.calls == [] and lines_of(path) == on_disk


def test_limit_runs_a_few_cells_per_call(tmp_path):
    s = fake(n=5)
    assert len(study.run(s, tmp_path, limit=2, progress=False)) == 2
    assert not (tmp_path / "summary.md").exists()
    assert len(study.run(s, tmp_path, limit=2, progress=False)) == 4
    assert len(study.run(s, tmp_path, progress=False)) == 5
    assert s.calls == [0, 1, 2, 3, 4]
    assert (tmp_path / "summary.md").exists()


def test_redo_reruns_named_cells_and_keeps_their_old_rows_until_replaced(tmp_path, capsys):
    s = fake(n=4)
    study.run(s, tmp_path, progress=False)
    keys = [r["key"] for r in lines_of(tmp_path / study.ROWS)]
    broken = fake(n=4, interrupt_at=1)  # a redo stopped by Ctrl-C loses nothing
    with pytest.raises(KeyboardInterrupt):
        study.run(broken, tmp_path, progress=False, redo=[keys[2][:6]])
    assert [r["key"] for r in lines_of(tmp_path / study.ROWS)] == keys
    again = fake(n=4)
    rows = study.run(again, tmp_path, progress=False, redo=[keys[1], keys[3][:8]])
    assert again.calls == [1, 3] and [r["key"] for r in rows] == keys
    assert sorted(r["key"] for r in lines_of(tmp_path / study.ROWS)) == sorted(keys)
    with pytest.raises(study.StudyError, match="matches 0 of the study's cells"):
        study.run(again, tmp_path, progress=False, redo=["zz"])
    with pytest.raises(study.StudyError, match="matches 4 of"):
        study.run(again, tmp_path, progress=False, redo=[""])


def test_cli_limit_list_and_resume(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(["smoke", "--fast", "--out", str(out), "--limit", "4", "--quiet"]) == 0
    assert "4 of 12 cells done" in capsys.readouterr().out
    assert cli.main(["smoke", "--fast", "--out", str(out), "--list"]) == 0
    listing = capsys.readouterr().out
    assert listing.count("done   ") == 4 and listing.count("pending") == 8
    assert cli.main(["smoke", "--fast", "--out", str(out), "--quiet"]) == 0
    assert "12 cells done" in capsys.readouterr().out
    assert len(lines_of(out / study.ROWS)) == 12


def test_rows_of_cells_no_longer_in_the_grid_are_kept_but_not_rendered(tmp_path):
    study.run(fake(n=4), tmp_path, progress=False)
    rows = study.run(fake(n=2), tmp_path, progress=False)
    assert [r["cell"]["i"] for r in rows] == [0, 1]
    assert len(lines_of(tmp_path / study.ROWS)) == 4
    assert (tmp_path / "summary.md").read_text().count("\n") == 2 + 2


def test_any_lazy_map_is_a_backend(tmp_path):
    """Rows land in the order results arrive; cells run once each."""
    s = fake(n=5)
    reverse = lambda fn, cells: (fn(c) for c in reversed(list(cells)))  # noqa: E731
    rows = study.run(s, tmp_path, progress=False, map=reverse)
    assert s.calls == [4, 3, 2, 1, 0]
    assert [r["cell"]["i"] for r in lines_of(tmp_path / study.ROWS)] == [4, 3, 2, 1, 0]
    assert [r["cell"]["i"] for r in rows] == [0, 1, 2, 3, 4]  # returned in cell order
    # the unit of work pickles, so a process pool or a cluster can take it
    work = functools.partial(study.execute, "smoke", smoke.run_cell)
    assert pickle.loads(pickle.dumps(work)).args == ("smoke", smoke.run_cell)


def test_process_pool_backend_gives_the_in_process_rows(smoke_run, tmp_path):
    """``--workers 2``: every cell once, the same metrics as one process (cells depend on
    the cell alone, not on which process ran them or in what order)."""
    _, serial = smoke_run
    pooled = study.run(smoke, tmp_path, fast=True, progress=False, map=study.process_map(2))
    assert len(lines_of(tmp_path / study.ROWS)) == len(serial)
    for a, b in zip(serial, pooled):
        assert a["key"] == b["key"]
        for name in smoke.METRICS:
            assert b["metrics"][name] == pytest.approx(a["metrics"][name], rel=1e-9), name



ORPHAN_SCRIPT = """
import os, sys, time
from lab.study import process_map

def cell(marker):
    open(marker, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    for _ in process_map(1)(cell, [sys.argv[1]]):
        pass
"""


def _alive(pid: int) -> bool:
    try:  # a zombie (dead, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_pool_workers_exit_when_their_runner_is_killed(tmp_path):
    """A runner killed outright (SIGKILL, or SIGTERM with no handler) runs no cleanup; its
    workers must not go on spending the cores on cells nobody will keep."""
    import signal

    script, marker = tmp_path / "runner.py", tmp_path / "worker.pid"
    script.write_text(ORPHAN_SCRIPT)
    runner = subprocess.Popen([sys.executable, str(script), str(marker)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 90
        while not (marker.exists() and marker.read_text()):
            assert runner.poll() is None and time.monotonic() < deadline, "no worker started"
            time.sleep(0.2)
        worker = int(marker.read_text())
        assert _alive(worker)
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        deadline = time.monotonic() + 15
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), "the pool worker outlived its killed runner"
    finally:
        runner.kill()
        if marker.exists() and marker.read_text() and _alive(int(marker.read_text())):
            os.kill(int(marker.read_text()), signal.SIGKILL)



def test_pivot_columns_in_first_seen_or_ascending_order():
    """A cell added late (scale 3, run before the grid) sits in its place when asked."""
    rows = [{"rule": "a", "scale": 3.0, "v": 1}, {"rule": "a", "scale": 8.0, "v": 2},
            {"rule": "a", "scale": 1.0, "v": 3}, {"rule": "b", "scale": 1.0, "v": 4}]
    seen = study.pivot(rows, "rule", "scale", lambda r: r["v"], "s{:g}")
    assert list(seen[0]) == ["rule", "s3", "s8", "s1"]
    ordered = study.pivot(rows, "rule", "scale", lambda r: r["v"], "s{:g}", sort_columns=True)
    assert list(ordered[0]) == ["rule", "s1", "s3", "s8"]
    assert ordered == [{"rule": "a", "s1": 3, "s3": 1, "s8": 2},
                       {"rule": "b", "s1": 4, "s3": None, "s8": None}]


def test_metric_lines_keep_zeros_on_a_linear_axis_and_drop_them_on_a_log_axis():
    """A share that reaches 0 (no sample overshoots) is a point on a linear axis; on a
    log axis it cannot be drawn and is left out, as are NaNs on either."""
    rows = [{"rule": "r", "nfe": n, "share": v}
            for n, v in [(1, 0.5), (2, 0.0), (4, float("nan")), (8, 0.25)]]
    fig, (lin, log) = lab.viz.new_figure(1, 2)
    lab.viz.plot_metric_vs_nfe(lin, rows, "share", logy=False, legend=False)
    lab.viz.plot_metric_vs_nfe(log, rows, "share", legend=False)
    assert list(lin.lines[0].get_ydata()) == [0.5, 0.0, 0.25]
    assert list(log.lines[0].get_ydata()) == [0.5, 0.25]
    assert lab.viz.one_two_five(0.5, 30) == [0.5, 1, 2, 5, 10, 20]


# ---- atomic writes ----------------------------------------------------------------------


def test_an_atomic_write_fsyncs_the_file_then_its_folder_after_the_rename(tmp_path,
                                                                         monkeypatch):
    """Rename alone is atomic, not durable: the new name lives in the folder's data, so
    the folder is fsynced after the rename (where the platform allows it)."""
    import stat

    real_fsync, real_replace, events = os.fsync, os.replace, []

    def recording_fsync(fd):
        mode = os.fstat(fd).st_mode
        events.append(("fsync dir" if stat.S_ISDIR(mode) else "fsync file", fd))
        return real_fsync(fd)

    def recording_replace(src, dst):
        events.append(("rename", Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    io.write_text(tmp_path / "a.txt", "x")
    assert [e[0] for e in events] == ["fsync file", "rename", "fsync dir"]
    assert (tmp_path / "a.txt").read_text() == "x"

    real_open = os.open

    def no_directories(path, flags, *args, **kwargs):  # Windows: a folder cannot be opened
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_directories)
    events.clear()
    io.write_text(tmp_path / "b.txt", "y")  # skipped gracefully: the write still lands
    assert [e[0] for e in events] == ["fsync file", "rename"]
    assert (tmp_path / "b.txt").read_text() == "y"
    assert io.fsync_directory(tmp_path) is False


def test_crash_in_the_rename_keeps_the_previous_rows(tmp_path, monkeypatch):
    s = fake(n=6)
    study.run(s, tmp_path, limit=3, progress=False)
    path = tmp_path / study.ROWS
    before = path.read_bytes()

    real = os.replace
    renamed = []

    def broken_replace(src, dst):
        if Path(dst).name == study.ROWS:
            raise OSError("disk full")
        renamed.append(Path(dst).name)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        study.run(s, tmp_path, progress=False)
    monkeypatch.undo()
    assert renamed == [study.MANIFEST] and s.calls == [0, 1, 2, 3]  # it failed on cell 4's row
    assert path.read_bytes() == before and leftovers(tmp_path) == []
    rows = study.run(s, tmp_path, progress=False)
    assert [r["cell"]["i"] for r in rows] == list(range(6))
    assert len(lines_of(path)) == 6


def test_crash_halfway_through_writing_a_row_keeps_the_previous_rows(tmp_path, monkeypatch):
    s = fake(n=6)
    study.run(s, tmp_path, limit=2, progress=False)
    path = tmp_path / study.ROWS
    before = path.read_bytes()
    real = Path.write_text

    def half_then_crash(self, text, *args, **kwargs):
        if self.name.startswith(".rows.jsonl"):
            real(self, text[: len(text) // 2], *args, **kwargs)  # a torn temp file
            raise RuntimeError("power cut")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", half_then_crash)
    with pytest.raises(RuntimeError, match="power cut"):
        study.run(s, tmp_path, progress=False)
    monkeypatch.undo()
    assert s.calls == [0, 1, 2]  # it failed on cell 3's row
    assert path.read_bytes() == before and leftovers(tmp_path) == []
    assert len(study.run(s, tmp_path, progress=False)) == 6
    assert len(lines_of(path)) == 6


def test_a_kill_leaves_only_a_temp_file_which_the_next_run_removes(tmp_path):
    """A SIGKILL mid-write can leave the temporary file (never the rows file torn)."""
    s = fake(n=3)
    study.run(s, tmp_path, limit=1, progress=False)
    (tmp_path / ".rows.jsonl.abc123.tmp").write_text('{"key": "half')
    assert len(study.run(s, tmp_path, progress=False)) == 3
    assert leftovers(tmp_path) == []


def test_a_torn_or_foreign_line_is_an_error_not_silently_dropped(tmp_path):
    s = fake(n=3)
    study.run(s, tmp_path, limit=2, progress=False)
    path = tmp_path / study.ROWS
    good = path.read_text()
    path.write_text(good + '{"key": "abc", "cell": {"i"')  # torn, as an appending writer leaves
    with pytest.raises(ValueError, match=r"line 3: no line end"):
        study.read_rows(path)
    with pytest.raises(ValueError, match="line 3"):
        study.run(s, tmp_path, progress=False)
    path.write_text("not json\n" + good)
    with pytest.raises(ValueError, match=r"line 1: not JSON"):
        study.read_rows(path)
    path.write_text(good + "[1, 2]\n")
    with pytest.raises(ValueError, match="not a row"):
        study.read_rows(path)
    path.write_text(good)  # the fix the message suggests
    assert len(study.run(s, tmp_path, progress=False)) == 3


def test_crash_while_drawing_keeps_the_previous_image_and_summary(smoke_run, tmp_path,
                                                                  monkeypatch):
    out, rows = smoke_run
    png, summary = out / "metrics_vs_nfe.png", out / "summary.md"
    before_png, before_md = png.read_bytes(), summary.read_text()
    assert before_png[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.figure import Figure

    def half_png(self, fname, *args, **kwargs):
        Path(fname).write_bytes(before_png[:100])  # a torn image in the temp file
        raise MemoryError("out of memory while drawing")

    monkeypatch.setattr(Figure, "savefig", half_png)
    with pytest.raises(MemoryError):
        smoke.render(rows, out)
    monkeypatch.undo()
    assert png.read_bytes() == before_png and summary.read_text() == before_md
    assert leftovers(out) == []

    real = Path.write_text

    def broken_summary(self, text, *args, **kwargs):
        if self.name.startswith(".summary.md"):
            real(self, text[:10], *args, **kwargs)
            raise OSError("disk full")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", broken_summary)
    with pytest.raises(OSError):
        smoke.render(rows, out)
    monkeypatch.undo()
    assert summary.read_text() == before_md and leftovers(out) == []


def test_two_runs_never_write_one_folder(tmp_path):
    with study.locked(tmp_path):
        with pytest.raises(study.StudyError, match="another run"):
            study.run(fake(), tmp_path, progress=False)
    assert len(study.run(fake(), tmp_path, progress=False)) == 6  # released


def test_fast_and_full_runs_never_mix(tmp_path):
    assert cli.default_out("smoke", fast=True).name == "smoke-fast"
    assert cli.default_out("smoke", fast=False).name == "smoke"
    study.run(fake(n=2), tmp_path, fast=True, progress=False)
    with pytest.raises(study.StudyError, match="--fast run of 'fake'"):
        study.run(fake(n=2), tmp_path, fast=False, progress=False)
    with pytest.raises(study.StudyError, match="not a --fast run of 'other'"):
        study.run(fake(n=2, name="other"), tmp_path, fast=True, progress=False)


# ---- the smoke study -------------------------------------------------------------------


def test_summary_is_generated_from_the_rows_and_lists_every_cell(smoke_run, tmp_path):
    out, rows = smoke_run
    text = (out / "summary.md").read_text()
    for cell in smoke.cells(fast=True):
        assert f"| {study.cell_key(cell)} |" in text
    heun = next(r for r in rows if r["cell"]["rule"] == "heun" and r["cell"]["budget"] == 10
                and r["cell"]["model"] == "mixture")
    assert f"{heun['metrics']['error_rms']:.3g}" in text
    # from the rows alone: rendering the file's rows elsewhere gives the same summary
    smoke.render(study.read_rows(out / study.ROWS), tmp_path)
    assert (tmp_path / "summary.md").read_text() == text
    manifest = json.loads((out / study.MANIFEST).read_text())
    assert manifest["study"] == "smoke" and manifest["fast"] is True
    assert [c["key"] for c in manifest["cells"]] == [r["key"] for r in rows]


def test_smoke_metrics_make_sense(smoke_run):
    _, rows = smoke_run
    for r in rows:
        m = r["metrics"]
        assert m["status"] == "ok" and m["sw"] > 0 and m["error_rms"] > 0
    for model in ("gaussian", "mixture"):
        for rule in ("euler", "heun"):
            e = {r["cell"]["budget"]: r["metrics"]["error_rms"] for r in rows
                 if r["cell"]["model"] == model and r["cell"]["rule"] == rule}
            assert e[10] < e[5], (model, rule)


def test_fast_cli_runs_within_its_time_budget(tmp_path):
    out = tmp_path / "smoke-fast"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "experiments", "smoke", "--fast", "--out",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=5 * FAST_BUDGET_SECONDS)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert seconds < FAST_BUDGET_SECONDS, f"{seconds:.1f} s"
    assert "cell" in done.stderr  # the progress bar
    assert "12 cells done" in done.stdout
    keys = [study.cell_key(c) for c in smoke.cells(fast=True)]
    assert sorted(r["key"] for r in lines_of(out / study.ROWS)) == sorted(keys)
    text = (out / "summary.md").read_text()
    assert all(f"| {k} |" in text for k in keys)
    assert (out / "metrics_vs_nfe.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_lists_studies_and_names_unknown_ones(capsys):
    assert cli.main([]) == 0
    assert "smoke" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no study 'nope'; available: .*smoke"):
        cli.main(["nope"])


# ---- table helpers ------------------------------------------------------------------------


def test_flat_and_aggregate():
    rows = [{"key": f"k{s}", "cell": {"rule": "heun", "seed": s}, "metrics": {"sw": v},
             "nfe": 9, "seconds": 0.1} for s, v in ((0, 1.0), (1, 3.0), (2, None))]
    flat = [study.flat(r) for r in rows]
    assert flat[0] == {"key": "k0", "rule": "heun", "seed": 0, "sw": 1.0, "nfe": 9,
                       "seconds": 0.1}
    (agg,) = study.aggregate(flat, ["rule", "nfe"], ["sw"])
    assert agg == {"rule": "heun", "nfe": 9, "sw": 2.0, "sw_std": pytest.approx(2**0.5),
                   "sw_n": 2}


def test_table_helpers(tmp_path):
    rows = [{"rule": "heun", "nfe": 9, "sw": 0.31}, {"rule": "euler", "nfe": 5, "sw": None}]
    study.write_csv(tmp_path / "rows.csv", rows)
    assert (tmp_path / "rows.csv").read_text().splitlines()[2] == "euler,5,"
    assert "| heun | 9 | 0.31 |" in study.markdown_table(rows)


def test_one_row_writer_one_nan_policy(tmp_path):
    """NaN and infinities become null at any depth, so the strict reader reads them back
    as None; a value that is not plain JSON is refused, naming where it sits."""
    import numpy as np

    path = tmp_path / study.ROWS
    rows = [{"key": "a", "metrics": {"fid": float("nan"), "path": [1.0, float("-inf")],
                                     "n": np.int64(3)}},
            {"key": "b", "metrics": {"fid": 4.5}}]
    study.write_rows(path, rows)
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert study.read_rows(path) == [{"key": "a", "metrics": {"fid": None, "path": [1.0, None],
                                                              "n": 3}},
                                     {"key": "b", "metrics": {"fid": 4.5}}]
    with pytest.raises(TypeError, match=r"row 0\.metrics\.x"):
        study.write_rows(path, [{"key": "a", "metrics": {"x": object()}}])
    assert len(study.read_rows(path)) == 2  # the refused write left the file as it was
