"""Studies: grids of cells run once each, resumably, with rows written atomically; and
small helpers for their result tables (rows of dicts as CSV, JSONL or Markdown).

A *study* is an object (usually a module in ``experiments/studies/``) with

- ``cells(fast: bool) -> list[dict]``: the grid, small JSON-serialisable dicts
  (model, rule, parameters, NFE budget, seed, sample count, ...). ``fast`` shrinks it
  for CI. Each cell's key is a hash of its content (:func:`cell_key`): change a cell and
  it is a new cell.
- ``run_cell(cell) -> dict``: the metrics of one cell, a function of the cell alone
  (no state shared between cells but caches), so that any backend can run cells anywhere.
  A ``"nfe"`` entry, if any, is the row's NFE (else the cell's ``"nfe"``).
- ``render(rows, out_dir)``: plots and ``summary.md``, from the rows alone.
- optionally ``NAME`` (default: the module's last name) and a docstring.

:func:`run` runs the cells not yet done, adds one row per finished cell to
``<out>/rows.jsonl`` and renders when every cell is done::

    rows = lab.study.run(my_study, "results/my_study", fast=False)

A row is ``{"key", "study", "cell", "metrics", "nfe", "seconds", "lab_version",
"git_commit", "git_dirty", "torch_version", "compiled", "finished"}``; :func:`flat` merges
cell and metrics for tables.

**Atomic design: whole-file rewrite.** After each cell, the complete ``rows.jsonl`` (old
rows plus the new one) is written to a temporary file beside it, fsynced and renamed
over the old one (:func:`lab.io.atomic_path`). A reader, or a run killed at any moment,
sees the previous complete file or the new complete file, never a torn line; so
:func:`read_rows` is strict and a malformed line (which this writer cannot produce)
is an error naming the file and line, not something silently dropped. Rewriting costs
O(rows) per cell: measured 2 ms at 100 rows, 20 ms at 1,000, 70 ms at 5,000 (2.3 MB),
small beside a cell that samples a model.
A run holds ``<out>/.lock`` (``flock``) so that two runs never write one folder, and
removes temporary files a killed run left there. Plots go through
:func:`lab.viz.save_figure`, text through :mod:`lab.io`: the same temp-and-rename.

Table helpers, every file through :mod:`lab.io`::

    rows = [{"rule": "heun", "nfe": 9, "sw": 0.31}, ...]
    lab.study.write_csv("results/demo/rows.csv", rows)
    print(lab.study.markdown_table(rows, ["rule", "nfe", "sw"], {"sw": "{:.3g}"}))
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import functools
import hashlib
import io
import itertools
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch

from .io import write_json, write_text

__all__ = ["columns_of", "write_csv", "write_jsonl", "read_jsonl", "markdown_table",
           "format_value", "cell_key", "grid", "git_commit", "provenance", "execute",
           "read_rows", "write_rows", "flat", "aggregate", "pivot", "generated_note", "threads",
           "try_sample_at_budget", "rule_parameters", "identical", "groups_of", "run", "status",
           "pin_weights", "process_map", "StudyError",
           "ROWS", "MANIFEST"]


def columns_of(rows: Iterable[Mapping]) -> list[str]:
    """Every key of ``rows``, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _cell(value):
    return "" if value is None or _is_nan(value) else value


def write_csv(path, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` as CSV (missing values and NaN as empty cells), atomically."""
    columns = list(columns or columns_of(rows))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return write_text(path, buf.getvalue())


def write_jsonl(path, rows: Iterable[Mapping]) -> Path:
    """One JSON object per line (NaN written as null), atomically."""
    lines = [json.dumps({k: None if _is_nan(v) else v for k, v in row.items()})
             for row in rows]
    return write_text(path, "".join(line + "\n" for line in lines))


def read_jsonl(path) -> list[dict]:
    """The rows of a file written by :func:`write_jsonl`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def format_value(value, fmt: str | Callable | None = None) -> str:
    """``value`` as a table cell: ``fmt`` is a format string or a callable; None is blank."""
    if value is None or _is_nan(value):
        return ""
    if callable(fmt):
        return fmt(value)
    if fmt is not None:
        return fmt.format(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None,
                   formats: Mapping[str, str | Callable] | None = None,
                   headers: Mapping[str, str] | None = None,
                   right: Sequence[str] = ()) -> str:
    """A GitHub-flavoured Markdown table of ``rows``. Numeric columns, and those named
    in ``right``, are right-aligned; ``headers`` renames columns."""
    columns = list(columns or columns_of(rows))
    formats, headers = formats or {}, headers or {}
    body = [[format_value(row.get(c), formats.get(c)) for c in columns] for row in rows]
    flush = [c in right or all(isinstance(row.get(c), (int, float)) or row.get(c) is None
                               for row in rows) for c in columns]
    head = "| " + " | ".join(headers.get(c, c) for c in columns) + " |"
    rule = "|" + "|".join("---:" if r else ":---" for r in flush) + "|"
    lines = [head, rule] + ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- studies

ROWS = "rows.jsonl"
MANIFEST = "study.json"


class StudyError(RuntimeError):
    """A study cannot run as asked (a bad cell list, a folder of another run, ...)."""


def _canonical(obj) -> str:
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"a cell must be a JSON-serialisable dict of plain values "
                        f"(str, int, float, bool, None, lists, dicts): {err}") from None


def cell_key(cell: Mapping) -> str:
    """A stable 16-hex-digit key of a cell's content: sha256 of its canonical JSON (keys
    sorted), so dict order does not matter and any changed value makes a new key."""
    if not isinstance(cell, Mapping):
        raise TypeError(f"a cell must be a dict, got {type(cell).__name__}")
    return hashlib.sha256(_canonical(dict(cell)).encode()).hexdigest()[:16]


def grid(*axes: Sequence[Mapping], **named) -> list[dict]:
    """The product of axes as a list of cells, the first axis varying slowest.

    A positional axis is a list of dicts merged into each cell (e.g. rules with their
    parameters); a keyword axis is ``name=[values]``, or ``name=value`` for a constant::

        grid([{"rule": "heun", "params": {}}, {"rule": "momentum", "params": {"beta": 0.5}}],
             model=["mixture"], budget=[5, 10], seed=[0, 1], samples=512)
    """
    lists = [[dict(d) for d in axis] for axis in axes]
    for name, values in named.items():
        values = values if isinstance(values, (list, tuple, range)) else [values]
        lists.append([{name: v} for v in values])
    cells = []
    for combo in itertools.product(*lists):
        cell: dict = {}
        for part in combo:
            clash = set(cell) & set(part)
            if clash:
                raise ValueError(f"grid axes overlap in {sorted(clash)}")
            cell.update(part)
        cells.append(cell)
    return cells


@functools.cache
def _git(path: str) -> tuple[str, bool | None]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True,
                              timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown", None
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return head.stdout.strip(), (bool(dirty.stdout.strip()) if dirty.returncode == 0
                                     else None)
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def _source_dir() -> str:
    return str(Path(__file__).resolve().parents[1])


def git_commit(path=None) -> str:
    """``git rev-parse HEAD`` of the checkout holding ``path`` (default: the lab's),
    or ``"unknown"`` (no git, not a checkout)."""
    return _git(str(path or _source_dir()))[0]


def provenance() -> dict:
    """What every row records about the code it ran on: lab version, git commit, dirty
    tree, torch version, and whether UNets ran through torch.compile
    (:func:`lab.config.compile_requested`: float rounding differs from eager)."""
    import torch

    from . import __version__
    from .config import compile_requested

    commit, dirty = _git(_source_dir())
    return {"lab_version": __version__, "git_commit": commit, "git_dirty": dirty,
            "torch_version": torch.__version__, "compiled": compile_requested()}


def _plain(value, where: str):
    """``value`` as plain JSON: numpy / torch scalars unwrapped, tuples as lists,
    NaN and infinities as None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)  # numpy and torch scalars, one-element arrays
    if callable(item):
        try:
            return _plain(item(), where)
        except (ValueError, RuntimeError):  # more than one element
            pass
    raise TypeError(f"{where} = {value!r} is not a plain JSON value (a number, string, "
                    "bool, None, list or dict)")


def execute(study_name: str, run_cell: Callable[[dict], Mapping], cell: Mapping) -> dict:
    """Run one cell and return its row: the one unit of work a backend distributes.

    Picklable with ``functools.partial(execute, name, module.run_cell)`` when
    ``run_cell`` is a module-level function.
    """
    cell = dict(cell)
    key = cell_key(cell)
    start = time.perf_counter()
    metrics = run_cell(dict(cell))
    seconds = time.perf_counter() - start
    if not isinstance(metrics, Mapping):
        raise TypeError(f"run_cell must return a dict of metrics, got "
                        f"{type(metrics).__name__} for cell {cell}")
    metrics = _plain(metrics, "metrics")
    nfe = metrics.get("nfe", cell.get("nfe"))
    return {"key": key, "study": study_name, "cell": cell, "metrics": metrics, "nfe": nfe,
            "seconds": seconds, **provenance(),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}


def read_rows(path) -> list[dict]:
    """The rows of a study's ``rows.jsonl`` ([] if there is none), strictly: every line
    a complete JSON object with a ``key``, else a ValueError naming the line."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    rows = []
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if not line.strip():
            continue
        problem = None if line.endswith("\n") else "no line end (torn)"
        if problem is None:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                problem = f"not JSON ({err.msg})"
            else:
                if not isinstance(row, dict) or "key" not in row:
                    problem = "not a row (a JSON object with a key)"
        if problem:
            raise ValueError(
                f"{path}, line {number}: {problem}. The study runner rewrites this file "
                "atomically and never leaves such a line, so something else changed it; "
                "remove the line to re-run that cell")
        rows.append(row)
    return rows


def write_rows(path, rows: Sequence[Mapping]) -> Path:
    """Write every row, one JSON object a line, atomically (temp file, fsync, rename)."""
    text = "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows)
    return write_text(path, text)


def flat(row: Mapping) -> dict:
    """A row as one flat dict for tables and plots: its key, the cell's entries, then the
    metrics' (a metric overrides a cell entry of the same name), NFE and seconds."""
    return {"key": row["key"], **row["cell"], **row["metrics"],
            "nfe": row.get("nfe"), "seconds": row.get("seconds")}


def aggregate(rows: Iterable[Mapping], by: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """Mean, standard deviation (``<metric>_std``) and count (``<metric>_n``) of each
    metric over the flat ``rows`` sharing the values of ``by`` (e.g. over seeds), in
    first-seen order; missing and None values are left out."""
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(tuple(_hashable(row.get(k)) for k in by), []).append(row)
    out = []
    for members in groups.values():
        entry = {k: members[0].get(k) for k in by}
        for m in metrics:
            values = [float(r[m]) for r in members
                      if isinstance(r.get(m), (int, float)) and not isinstance(r.get(m), bool)
                      and math.isfinite(float(r[m]))]
            n = len(values)
            mean = sum(values) / n if n else None
            entry[m] = mean
            entry[f"{m}_std"] = (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
                                 if n > 1 else None)
            entry[f"{m}_n"] = n
        out.append(entry)
    return out


def pivot(rows: Sequence[Mapping], index: str, columns: str, value: Callable[[Mapping], object],
          header: str = "{}") -> list[dict]:
    """A wide table: one dict per value of ``index``, holding it and one entry per value
    of ``columns`` (named ``header.format(value)``), ``value(row)`` of the row with both
    values (None where there is none); first-seen order. E.g. rules x budgets::

        markdown_table(pivot(rows, "rule", "budget", lambda r: f"{r['sw']:.3g}", "B={}"))
    """
    keys = list(dict.fromkeys(r[columns] for r in rows))
    by = {(r[index], r[columns]): r for r in reversed(rows)}  # the first row wins
    return [{index: i, **{header.format(k): value(by[i, k]) if (i, k) in by else None
                          for k in keys}}
            for i in dict.fromkeys(r[index] for r in rows)]


def generated_note(rows: Sequence[Mapping], study_name: str) -> str:
    """The provenance line a summary starts with: rows, cell time, command, lab version
    and commits of the rows."""
    commits = sorted({str(r.get("git_commit"))[:10] + ("+dirty" if r.get("git_dirty") else "")
                      for r in rows})
    versions = sorted({str(r.get("lab_version")) for r in rows})
    seconds = sum(r.get("seconds") or 0 for r in rows)
    compiled = sum(r.get("compiled") is True for r in rows)
    unrecorded = sum("compiled" not in r for r in rows)
    return (f"Generated from `rows.jsonl` ({len(rows)} cells, {seconds / 3600:.2f} h of cell "
            f"time) by `python -m experiments {study_name}`; lab {', '.join(versions)}, "
            f"commit {', '.join(commits)}."
            + (f" {compiled} of {len(rows)} cells ran with `--compile`." if compiled else "")
            + (f" {unrecorded} rows predate the record of `--compile`." if unrecorded else ""))


@contextlib.contextmanager
def threads(n: int = 1):
    """Run torch on ``n`` threads inside the block. Cells on small tensors (2-D models,
    one Gaussian) want one: on a busy machine two threads made each model call about ten
    times slower, and a study should leave the other core to whatever else runs."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def pin_weights(cells: Iterable[Mapping], fields: Sequence[str] = ("model", "sigma_from")
                ) -> list[dict]:
    """The cells with ``"weights": {name: sha256[:12]}`` for every zoo model a cell names
    in ``fields``. The checksum is part of the cell, so of its key: re-ship a model under
    the same name and its old rows no longer count as done, instead of mixing with new
    ones."""
    from . import zoo

    shipped = set(zoo.available())
    out = []
    for cell in cells:
        names = sorted({cell[f] for f in fields if cell.get(f) in shipped})
        out.append({**cell, "weights": {n: zoo.info(n)["sha256"][:12] for n in names}}
                   if names else dict(cell))
    return out


def _one_thread_worker():
    torch.set_num_threads(1)


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


def try_sample_at_budget(model, x, rule, budget: int, schedule, *, seed: int,
                         record: str = "final", **kwargs):
    """:func:`lab.sample_at_budget` for a study cell (by default the final state only):
    ``(traj, "ok")``, or ``(None, status)`` when one step costs more than ``budget`` or a
    sample turned NaN or Inf; outcomes a row records, not errors that should stop a study.
    ``kwargs`` go to :func:`lab.sample` (e.g. ``sigma_estimate``)."""
    from .sample import NonFiniteError, sample_at_budget

    try:
        traj = sample_at_budget(model, x, rule, budget, schedule, seed=seed, record=record,
                                **kwargs)
    except NonFiniteError as err:
        return None, f"non-finite: {err}"
    return (traj, "ok") if traj is not None else (None, "does not fit the budget")


def rule_parameters(rows: Iterable[Mapping]) -> list[dict]:
    """What each rule label of a study stands for: one ``{"rule": label, "parameters":
    "k=v, ..."}`` per rule of the rows' cells (``cell["rule"]``, ``cell["params"]``), every
    parameter shown, defaults included (labels leave defaults out: ``churn`` is euler
    with ``s_churn=40``, ...)."""
    from .rules import get

    out: dict[str, dict] = {}
    for row in rows:
        cell = row["cell"]
        if "rule" in cell:
            rule = get(cell["rule"], **cell.get("params", {}))
            out.setdefault(rule.config_name, {"rule": rule.config_name, "parameters": ", ".join(
                f"{k}={format_value(v)}" for k, v in rule.config.items()) or "none"})
    return list(out.values())


def identical(rows: Sequence[Mapping], group: str, metric: str, where: Sequence[str],
              rtol: float = 1e-9) -> list[list[str]]:
    """Groups of two or more values of ``group`` (e.g. rule labels) whose ``metric``
    agrees to ``rtol`` in every place (the values of ``where``) either was measured: e.g.
    rules that are the same algorithm under two names."""
    values: dict = {}
    for r in rows:
        if isinstance(r.get(metric), (int, float)):
            values.setdefault(r[group], {})[tuple(_hashable(r.get(k)) for k in where)] = r[metric]
    return groups_of(values, lambda a, b: a.keys() == b.keys() and all(
        math.isclose(a[k], b[k], rel_tol=rtol, abs_tol=0) for k in a))


def groups_of(items: Mapping[str, object], same: Callable[[object, object], bool]
              ) -> list[list[str]]:
    """The names of ``items`` whose values are ``same`` as a group's first, in groups of
    two or more, first-seen order."""
    groups: list[list[str]] = []
    for name, value in items.items():
        match = next((g for g in groups if same(value, items[g[0]])), None)
        if match is None:
            groups.append([name])
        else:
            match.append(name)
    return [g for g in groups if len(g) > 1]


def _hashable(v):
    return _canonical(v) if isinstance(v, (dict, list)) else v


def _study_name(study) -> str:
    name = getattr(study, "NAME", None) or getattr(study, "__name__", "").rsplit(".", 1)[-1]
    if not name:
        raise StudyError("a study needs a NAME (or be a module)")
    return name


def _cells_of(study, fast: bool) -> list[dict]:
    for attr in ("cells", "run_cell", "render"):
        if not callable(getattr(study, attr, None)):
            raise StudyError(f"study {_study_name(study)!r} has no {attr}() "
                             "(see lab.study's docstring for what a study declares)")
    cells = study.cells(fast)
    if not isinstance(cells, (list, tuple)) or not cells:
        raise StudyError(f"{_study_name(study)}.cells({fast}) must return a non-empty list")
    seen: dict[str, dict] = {}
    for cell in cells:
        key = cell_key(cell)
        if key in seen:
            raise StudyError(f"two cells are the same, {cell}: add what tells them apart")
        seen[key] = dict(cell)
    return list(cells)


@contextlib.contextmanager
def _locked(out_dir: Path):
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


def _check_manifest(out_dir: Path, name: str, fast: bool):
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


def status(study, out_dir, fast: bool = False) -> list[tuple[str, dict, bool]]:
    """``(key, cell, done)`` for every cell of the study, against ``out_dir``'s rows."""
    done = {row["key"] for row in read_rows(Path(out_dir) / ROWS)}
    return [(cell_key(c), c, cell_key(c) in done) for c in _cells_of(study, fast)]


def run(study, out_dir, *, fast: bool = False, limit: int | None = None,
        progress: bool = True, map: Callable = map, render: bool = True) -> list[dict]:
    """Run the cells of ``study`` not yet in ``out_dir/rows.jsonl``; render when all are done.

    Each finished cell's row is added to ``rows.jsonl`` at once (see the module docstring
    for why this is atomic), so a run stopped at any point resumes where it stopped with
    no duplicate and no torn row. ``limit`` stops after that many new cells. ``map(fn,
    cells)`` is the backend, builtin ``map`` by default; any lazy map (an executor's, a
    cluster's) works, rows being written in the order results arrive. Returns the rows of
    the study's current cells, in cell order (rows of cells no longer in the grid stay in
    the file but are not rendered).

    An exception in a cell (or Ctrl-C) stops the run; the rows finished so far stay, and
    the next run starts with that cell. Expected failures (a ``lab.NonFiniteError``, a
    rule that does not fit the budget) belong in the metrics, as a status.
    """
    name = _study_name(study)
    cells = _cells_of(study, fast)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ROWS
    with _locked(out_dir):
        _check_manifest(out_dir, name, fast)
        for stale in out_dir.glob(".*.tmp"):  # left by a killed run; we hold the lock
            stale.unlink(missing_ok=True)
        rows = read_rows(path)
        done = {row["key"] for row in rows}
        keys = [cell_key(c) for c in cells]
        write_json(out_dir / MANIFEST, {
            "study": name, "fast": fast,
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
            work = functools.partial(execute, name, study.run_cell)
            for row in map(work, pending):
                if row["key"] in done:  # a backend that delivered one twice
                    continue
                rows.append(row)
                done.add(row["key"])
                write_rows(path, rows)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(_label(row["cell"]), refresh=False)
        finally:
            if bar is not None:
                bar.close()
        by_key = {row["key"]: row for row in rows}
        current = [by_key[k] for k in keys if k in by_key]
        if render and len(current) == len(cells):
            study.render(current, out_dir)
        return current


def _label(cell: Mapping) -> str:
    text = " ".join(f"{k}={v}" for k, v in cell.items() if not isinstance(v, (dict, list)))
    return text if len(text) <= 60 else text[:57] + "..."
