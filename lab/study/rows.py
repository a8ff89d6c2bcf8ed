"""Study rows on disk: one JSONL reader and one writer, with one NaN policy, and CSV.

A row is a plain JSON object. **NaN and infinities are written as null**, everywhere and
at any depth (:func:`plain`); JSON has no NaN, and a missing measurement is a None that
tables print blank. Anything that is not a plain value (a tensor of many elements, an
object) is a TypeError naming where it sits, never a silently stringified value.

**Atomic design: whole-file rewrite.** :func:`write_rows` writes the complete file (old
rows plus new ones) to a temporary file beside it, fsyncs it and renames it over the
old one (:func:`lab.io.atomic_path`). A reader, or a run killed at any moment, sees the
previous complete file or the new complete file, never a torn line; so :func:`read_rows`
is strict: a malformed line (which this writer cannot produce) is an error naming the
file and line, not something silently dropped. The rewrite costs O(rows) per finished
cell, small beside a cell that samples a model.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..io import write_text

__all__ = ["plain", "canonical", "read_rows", "write_rows", "flat", "columns_of", "write_csv"]


def plain(value, where: str = "row"):
    """``value`` as plain JSON: numpy / torch scalars unwrapped, tuples as lists, NaN and
    infinities as None (the one NaN policy of rows)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)  # numpy and torch scalars, one-element arrays
    if callable(item):
        try:
            return plain(item(), where)
        except (ValueError, RuntimeError):  # more than one element
            pass
    raise TypeError(f"{where} = {value!r} is not a plain JSON value (a number, string, "
                    "bool, None, list or dict)")


def canonical(obj) -> str:
    """``obj`` as canonical JSON (keys sorted, no spaces, no NaN): the text a cell's key
    hashes, and a hashable stand-in for a dict or list."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"a cell must be a JSON-serialisable dict of plain values "
                        f"(str, int, float, bool, None, lists, dicts): {err}") from None


def write_rows(path, rows: Iterable[Mapping]) -> Path:
    """Write every row, one JSON object a line, atomically (temp file, fsync, rename);
    NaN and infinities become null (:func:`plain`)."""
    text = "".join(json.dumps(plain(row, f"row {i}"), allow_nan=False) + "\n"
                   for i, row in enumerate(rows))
    return write_text(path, text)


def read_rows(path) -> list[dict]:
    """The rows of a ``rows.jsonl`` ([] if there is none), strictly: every line a
    complete JSON object with a ``key``, else a ValueError naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(keepends=True), 1):
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


def flat(row: Mapping) -> dict:
    """A row as one flat dict for tables and plots: its key, the cell's entries, then the
    metrics' (a metric overrides a cell entry of the same name), NFE and seconds."""
    return {"key": row["key"], **row["cell"], **row["metrics"],
            "nfe": row.get("nfe"), "seconds": row.get("seconds")}


def columns_of(rows: Iterable[Mapping]) -> list[str]:
    """Every key of ``rows``, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def write_csv(path, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` as CSV (missing values and NaN as empty cells), atomically."""
    columns = list(columns or columns_of(rows))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None or is_nan(row.get(k)) else row.get(k)
                         for k in columns})
    return write_text(path, buf.getvalue())
