"""Small helpers for studies' result tables: rows of dicts as CSV, JSONL or Markdown.

Every file goes through :mod:`lab.io`, so a reader never sees half a table.

    rows = [{"rule": "heun", "nfe": 9, "sw": 0.31}, ...]
    lab.study.write_csv("results/demo/rows.csv", rows)
    print(lab.study.markdown_table(rows, ["rule", "nfe", "sw"], {"sw": "{:.3g}"}))
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from .io import write_text

__all__ = ["columns_of", "write_csv", "write_jsonl", "read_jsonl", "markdown_table",
           "format_value"]


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
