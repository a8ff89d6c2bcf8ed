"""Tables and analysis of study rows: Markdown tables, means over seeds, pivots, and the
groups of rules that are one algorithm under two names. Every function takes flat rows
(:func:`lab.study.flat`) or plain dicts and returns plain values, so a ``render`` builds
its summary from the rows alone::

    rows = [{"rule": "heun", "nfe": 9, "sw": 0.31}, ...]
    print(markdown_table(rows, ["rule", "nfe", "sw"], {"sw": "{:.3g}"}))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

from .rows import canonical, columns_of, is_nan

__all__ = ["format_value", "markdown_table", "aggregate", "pivot", "identical", "groups_of",
           "best_per_budget", "rule_parameters"]


def format_value(value, fmt: str | Callable | None = None) -> str:
    """``value`` as a table cell: ``fmt`` is a format string or a callable; None is blank."""
    if value is None or is_nan(value):
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


def hashable(value):
    """``value``, or its canonical JSON if it is a dict or list (to key a group by it)."""
    return canonical(value) if isinstance(value, (dict, list)) else value


def aggregate(rows: Iterable[Mapping], by: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """Mean, standard deviation (``<metric>_std``) and count (``<metric>_n``) of each
    metric over the flat ``rows`` sharing the values of ``by`` (e.g. over seeds), in
    first-seen order; missing and None values are left out."""
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(tuple(hashable(row.get(k)) for k in by), []).append(row)
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
          header: str = "{}", sort_columns: bool = False) -> list[dict]:
    """A wide table: one dict per value of ``index``, holding it and one entry per value
    of ``columns`` (named ``header.format(value)``), ``value(row)`` of the row with both
    values (None where there is none); first-seen order, or ascending columns with
    ``sort_columns`` (a cell added late, e.g. scale 3 after 8, still sits in its place).
    E.g. rules x budgets::

        markdown_table(pivot(rows, "rule", "budget", lambda r: f"{r['sw']:.3g}", "B={}"))
    """
    keys = list(dict.fromkeys(r[columns] for r in rows))
    if sort_columns:
        keys.sort()
    by = {(r[index], r[columns]): r for r in reversed(rows)}  # the first row wins
    return [{index: i, **{header.format(k): value(by[i, k]) if (i, k) in by else None
                          for k in keys}}
            for i in dict.fromkeys(r[index] for r in rows)]


def identical(rows: Sequence[Mapping], group: str, metric: str, where: Sequence[str],
              rtol: float = 1e-9) -> list[list[str]]:
    """Groups of two or more values of ``group`` (e.g. rule labels) whose ``metric``
    agrees to ``rtol`` in every place (the values of ``where``) either was measured: e.g.
    rules that are the same algorithm under two names."""
    values: dict = {}
    for r in rows:
        if isinstance(r.get(metric), (int, float)):
            values.setdefault(r[group], {})[tuple(hashable(r.get(k)) for k in where)] = r[metric]
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


def best_per_budget(rows: Sequence[Mapping], metrics: Mapping[str, str]) -> list[str]:
    """One Markdown bullet per ``budget`` of the flat ``rows``: for each metric (name ->
    how the bullet calls it), the ``label`` of the row with its lowest value, the value
    and the row's NFE, e.g. ``- B = 5: lowest SW **heun** (0.214 at 49 NFE).``"""
    out = []
    for b in sorted({r["budget"] for r in rows}):
        parts = []
        for metric, name in metrics.items():
            at = [r for r in rows if r["budget"] == b and r.get(metric) is not None]
            if at:
                best = min(at, key=lambda r: r[metric])
                parts.append(f"lowest {name} **{best['label']}** ({best[metric]:.3g} at "
                             f"{best['nfe']} NFE)")
        out.append(f"- B = {b}: " + "; ".join(parts) + ".")
    return out


def rule_parameters(rows: Iterable[Mapping]) -> list[dict]:
    """What each rule label of a study stands for: one ``{"rule": label, "parameters":
    "k=v, ..."}`` per rule of the rows' cells (``cell["rule"]``, ``cell["params"]``), every
    parameter shown, defaults included (labels leave defaults out: ``churn`` is euler
    with ``s_churn=40``, ...)."""
    from ..rules import get

    out: dict[str, dict] = {}
    for row in rows:
        cell = row["cell"]
        if "rule" in cell:
            rule = get(cell["rule"], **cell.get("params", {}))
            out.setdefault(rule.config_name, {"rule": rule.config_name, "parameters": ", ".join(
                f"{k}={format_value(v)}" for k, v in rule.config.items()) or "none"})
    return list(out.values())
