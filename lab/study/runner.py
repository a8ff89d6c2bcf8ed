"""The resumable study runner: a study's cells run once each, a row written atomically
after each, the plots and summary drawn when every cell is done.

A study satisfies :class:`Study` (usually a module of ``experiments/studies/``)::

    rows = lab.study.run(my_study, "results/my_study", fast=False)

A row is ``{"key", "study", "cell", "metrics", "nfe", "seconds", "lab_version",
"git_commit", "git_dirty", "torch_version", "compiled", "device", "dtype", "finished"}``
(rows written before devices were recorded lack ``device`` and ``dtype``: the CPU, the
study's own precision); :func:`lab.study.flat`
merges cell and metrics for tables. Rows go through :func:`lab.study.write_rows` (whole
file rewritten, then renamed: never a torn row). A run holds ``<out>/.lock`` (``flock``)
so that two runs never write one folder, and removes temporary files a killed run left
there. Plots go through :func:`lab.viz.save_figure`, text through :mod:`lab.io`: the same
temp-and-rename.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from ..io import write_json
from .cells import cell_key, threads
from .placement import Placement, placed
from .provenance import provenance
from .rows import plain, read_rows, write_rows

__all__ = ["Study", "ReportedStudy", "check_study", "StudyError", "execute", "run", "status",
           "process_map", "locked", "cell_label", "ROWS", "MANIFEST"]

ROWS = "rows.jsonl"
MANIFEST = "study.json"


class Study(Protocol):
    """What the runner needs of a study; a module with these three functions is one.

    - ``cells(fast) -> list[dict]``: the grid, small JSON-serialisable dicts (model,
      rule, parameters, NFE budget, seed, sample count, ...; :func:`lab.study.grid`).
      ``fast`` shrinks it for CI: fewer samples, not other budgets. Each cell's key is a
      hash of its content (:func:`lab.study.cell_key`): change a cell and it is a new cell.
    - ``run_cell(cell) -> dict``: the metrics of one cell, a function of the cell alone
      (no state shared between cells but caches, such as :func:`lab.study.model_loader`'s),
      so that any backend can run cells anywhere. The runner runs it on one torch thread.
      A ``"nfe"`` entry, if any, is the row's NFE (else the cell's ``"nfe"``). Expected
      failures (NaN samples, a rule that does not fit the budget) are a ``"status"``
      metric, not an exception (:func:`lab.study.sample_cell` returns them so).
    - ``render(rows, out_dir)``: plots and ``summary.md``, from the rows alone.

    Optional: ``NAME`` (default: the module's last name) and a docstring, whose first
    line describes the study in ``study.json`` and ``python -m experiments``.
    """

    def cells(self, fast: bool) -> list[dict]: ...

    def run_cell(self, cell: dict) -> Mapping: ...

    def render(self, rows: list[dict], out_dir: Path) -> None: ...


class ReportedStudy(Study, Protocol):
    """A study with a section in ``results/README.md`` (``python -m experiments.readme``):
    a :class:`Study` that also declares

    - ``NOTEBOOK``: the notebook of ``notebooks/`` that explores it (or None);
    - ``PLOT``: the file name of its main plot in ``results/<study>/``;
    - ``headline(rows) -> list[str]``: Markdown lines (a sentence, a table) generated from
      the rows of a finished full run.

    The section adds ``results/<study>/READING.md``, the one hand-written file, whose
    every quoted number comes from the rows (``tests/test_readings.py`` checks it).
    """

    NOTEBOOK: str | None
    PLOT: str

    def headline(self, rows: list[dict]) -> list[str]: ...


class StudyError(RuntimeError):
    """A study cannot run as asked (a bad cell list, a folder of another run, ...)."""


def _members(contract: type) -> dict[str, str]:
    """Name -> how it reads in an error message, for every member ``contract`` declares."""
    out: dict[str, str] = {}
    for klass in reversed(contract.__mro__):
        if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
            continue
        for name in getattr(klass, "__annotations__", {}):
            out[name] = name
        for name, value in vars(klass).items():
            if callable(value) and not name.startswith("_"):
                params = list(inspect.signature(value).parameters)[1:]  # without self
                out[name] = f"{name}({', '.join(params)})"
    return out


def check_study(study, contract: type = Study) -> None:
    """Raise :class:`StudyError` naming every member of ``contract`` (:class:`Study` or
    :class:`ReportedStudy`) that ``study`` lacks, or has but cannot call."""
    missing = [shown for name, shown in _members(contract).items()  # a method shows "(...)"
               if not hasattr(study, name)
               or (shown != name and not callable(getattr(study, name)))]
    if missing:
        raise StudyError(f"study {study_name(study)!r} is not a lab.study.{contract.__name__}: "
                         f"it has no {', no '.join(missing)}. See lab.study.{contract.__name__} "
                         "for what each one does")


def study_name(study) -> str:
    """``study.NAME``, or the last part of its module name."""
    name = getattr(study, "NAME", None) or getattr(study, "__name__", "").rsplit(".", 1)[-1]
    if not name:
        raise StudyError("a study needs a NAME (or be a module)")
    return name


def execute(name: str, run_cell: Callable[[dict], Mapping], cell: Mapping, *,
            placement: Placement | None = None) -> dict:
    """Run one cell (on one torch thread, on ``placement``'s device and dtype) and return
    its row: the one unit of work a backend distributes. Picklable with
    ``functools.partial(execute, name, module.run_cell, placement=...)`` when ``run_cell``
    is a module-level function."""
    cell = dict(cell)
    key = cell_key(cell)
    placement = (placement or Placement()).check()  # where the cell runs: a worker's GPU
    start = time.perf_counter()
    with threads(1), placed(placement) as where:
        metrics = run_cell(dict(cell))
    seconds = time.perf_counter() - start
    if not isinstance(metrics, Mapping):
        raise TypeError(f"run_cell must return a dict of metrics, got "
                        f"{type(metrics).__name__} for cell {cell}")
    if placement.moves and where.sampled is None:
        raise StudyError(f"study {name!r} samples its cells without lab.study.sample_cell, so "
                         f"--device {placement.device} and --dtype {placement.dtype} cannot "
                         "place them; run it without --device and --dtype (or make its "
                         "run_cell sample through lab.study.sample_cell)")
    metrics = plain(metrics, "metrics")
    nfe = metrics.get("nfe", cell.get("nfe"))
    return {"key": key, "study": name, "cell": cell, "metrics": metrics, "nfe": nfe,
            "seconds": seconds, **provenance(), **where.record(),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}


def _one_thread_worker(poll_seconds: float = 1.0):
    """A pool worker: one torch thread, and it exits once its parent is gone (a killed
    runner would otherwise leave its workers spending the cores on cells nobody keeps)."""
    import threading

    import torch

    torch.set_num_threads(1)
    parent = os.getppid()

    def exit_when_orphaned():
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=exit_when_orphaned, name="orphan-watch", daemon=True).start()


def process_map(workers: int) -> Callable:
    """A :func:`run` backend: cells in ``workers`` processes of one torch thread each,
    rows yielded as cells finish (so an interrupted run keeps every finished cell). Worth
    it where cells are independent and the machine has idle cores; caches (loaded models)
    are per process."""
    import concurrent.futures as cf
    import multiprocessing

    def pool_map(fn, items):
        items = list(items)
        if not items:
            return
        with cf.ProcessPoolExecutor(min(workers, len(items)), initializer=_one_thread_worker,
                                    mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(fn, item) for item in items]
            try:
                for done in cf.as_completed(futures):
                    yield done.result()
            finally:
                for f in futures:
                    f.cancel()

    return pool_map


def _cells_of(study, fast: bool) -> list[dict]:
    check_study(study, Study)
    cells = study.cells(fast)
    if not isinstance(cells, (list, tuple)) or not cells:
        raise StudyError(f"{study_name(study)}.cells({fast}) must return a non-empty list")
    seen: dict[str, dict] = {}
    for cell in cells:
        key = cell_key(cell)
        if key in seen:
            raise StudyError(f"two cells are the same, {cell}: add what tells them apart")
        seen[key] = dict(cell)
    return list(cells)


@contextlib.contextmanager
def locked(out_dir: Path):
    """Hold ``out_dir/.lock`` for the run; fail at once if another run holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    with open(out_dir / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyError(f"another run is writing {out_dir} (it holds {out_dir}/.lock)") \
                from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_manifest(out_dir: Path, name: str, fast: bool, dtype: str | None):
    path = out_dir / MANIFEST
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if old.get("study") != name or bool(old.get("fast")) != fast:
        raise StudyError(
            f"{out_dir} holds a {'--fast ' if old.get('fast') else ''}run of "
            f"{old.get('study')!r}, not a {'--fast ' if fast else ''}run of {name!r}; "
            "use another --out")
    if old.get("dtype") != dtype:  # absent from a manifest: the study's own precision
        own = "the study's own precision"
        again = f"--dtype {old['dtype']}" if old.get("dtype") else "no --dtype"
        raise StudyError(f"{out_dir} holds rows computed in {old.get('dtype') or own}, not in "
                         f"{dtype or own}: rows of two precisions would mix; use another --out, "
                         f"or {again}")


def status(study, out_dir, fast: bool = False) -> list[tuple[str, dict, bool]]:
    """``(key, cell, done)`` for every cell of the study, against ``out_dir``'s rows."""
    done = {row["key"] for row in read_rows(Path(out_dir) / ROWS)}
    return [(cell_key(c), c, cell_key(c) in done) for c in _cells_of(study, fast)]


def run(study, out_dir, *, fast: bool = False, limit: int | None = None,
        progress: bool = True, map: Callable = map, render: bool = True,
        placement: Placement | None = None, redo: Sequence[str] = ()) -> list[dict]:
    """Run the cells of ``study`` not yet in ``out_dir/rows.jsonl``; render when all are done.

    Each finished cell's row is added to ``rows.jsonl`` at once, atomically, so a run
    stopped at any point resumes where it stopped with no duplicate and no torn row.
    ``limit`` stops after that many new cells. ``map(fn, cells)`` is the backend, builtin
    ``map`` by default; any lazy map (an executor's, a cluster's) works, rows being
    written in the order results arrive. Returns the rows of the study's current cells,
    in cell order (rows of cells no longer in the grid stay in the file but are not
    rendered).

    An exception in a cell (or Ctrl-C) stops the run; the rows finished so far stay, and
    the next run starts with that cell. A ``study`` that is not a :class:`Study` is a
    :class:`StudyError` naming what it lacks.

    ``placement`` (:class:`lab.study.Placement`, ``--device`` / ``--dtype``) is where
    each cell samples; a folder keeps one dtype (another is a :class:`StudyError`).

    ``redo``: keys (or unique key prefixes, as ``--list`` and summaries print them) of
    done cells to run again, after a fix to how they are computed. Each old row stays
    until its new row replaces it, so an interrupted redo loses nothing.
    """
    placement = placement or Placement()
    name = study_name(study)
    cells = _cells_of(study, fast)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ROWS
    with locked(out_dir):
        _check_manifest(out_dir, name, fast, placement.dtype)
        for stale in out_dir.glob(".*.tmp"):  # left by a killed run; we hold the lock
            stale.unlink(missing_ok=True)
        rows = read_rows(path)
        keys = [cell_key(c) for c in cells]
        again = _resolve_keys(redo, keys)
        done = {row["key"] for row in rows} - again
        write_json(out_dir / MANIFEST, {
            "study": name, "fast": fast,
            **({"dtype": placement.dtype} if placement.dtype else {}),
            "description": (getattr(study, "__doc__", None) or "").strip().split("\n")[0],
            "cells": [{"key": k, "cell": c} for k, c in zip(keys, cells)]})
        pending = [c for c, k in zip(cells, keys) if k not in done]
        if limit is not None:
            pending = pending[:max(0, int(limit))]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(cells), initial=len(cells) - sum(k not in done for k in keys),
                       desc=name, unit="cell", dynamic_ncols=True, file=sys.stderr)
        try:
            work = functools.partial(execute, name, study.run_cell, placement=placement)
            for row in map(work, pending):
                if row["key"] in done:  # a backend that delivered one twice
                    continue
                if row["key"] in again:  # the old row goes only now that the new one is here
                    rows = [r for r in rows if r["key"] != row["key"]]
                rows.append(row)
                done.add(row["key"])
                write_rows(path, rows)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(cell_label(row["cell"]), refresh=False)
        finally:
            if bar is not None:
                bar.close()
        by_key = {row["key"]: row for row in rows}
        current = [by_key[k] for k in keys if k in by_key]
        if render and len(current) == len(cells):
            study.render(current, out_dir)
        return current


def _resolve_keys(wanted: Sequence[str], keys: Sequence[str]) -> set[str]:
    """The full keys of ``keys`` that ``wanted`` names, each by its key or a unique
    prefix; a name matching none or several is a :class:`StudyError`."""
    if isinstance(wanted, str):
        wanted = [wanted]
    out = set()
    for w in wanted:
        hits = [k for k in keys if k.startswith(str(w))]
        if len(hits) != 1:
            raise StudyError(f"--redo {w!r} matches {len(hits)} of the study's cells; give a "
                             "key (or a longer prefix) from `--list` or the summary's cells")
        out.add(hits[0])
    return out


def cell_label(cell: Mapping) -> str:
    """A cell in one short line (its plain entries), for progress bars and listings."""
    text = " ".join(f"{k}={v}" for k, v in cell.items() if not isinstance(v, (dict, list)))
    return text if len(text) <= 60 else text[:57] + "..."
