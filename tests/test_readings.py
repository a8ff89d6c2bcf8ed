"""Every number a ``results/<study>/READING.md`` quotes comes from that study's rows.

The rule, so that a reading cannot drift from its data:

- A *quoted number* is a decimal number (digits, a point, digits) in the reading's prose
  and tables, outside code (indented blocks, fenced blocks, `inline code`). Integers are
  not checked: in these readings they are budgets, steps, sample counts, seeds and
  years far more often than metrics.
- It must equal, rounded to the decimals it is printed with, some *value of the rows*:
  any number in a row's metrics (lists included, e.g. the FID of ``x0_hat`` along a
  path and the sigmas it was taken at), its ``nfe`` and ``seconds``, or the mean or
  standard deviation over seeds of a metric (rows whose cells differ in ``seed`` only),
  as the summaries print them ("3.69 ± 0.23").
- Numbers that are not metrics of the study's rows are allow-listed below, per reading,
  each with its reason, or with :class:`Other` when they quote another study's rows,
  which are then checked instead.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import study
from lab.study.rows import canonical

RESULTS = Path(__file__).resolve().parents[1] / "results"


@dataclass(frozen=True)
class Other:
    """A number quoted from another study's rows (checked there)."""

    study: str


# per study: number as printed -> why it is no metric of the study's rows
ALLOWED: dict[str, dict[str, str | Other]] = {
    "dropping_timestep": {
        "0.045": "a sigma of the schedule (where the NaN struck)",
        "0.018": "a sigma of the schedule (where the NaN struck)",
        "0.01": "per-step probe below the rows (its command is in the reading)",
        "0.20": "per-step probe", "0.98": "per-step probe", "0.90": "per-step probe",
        "0.03": "per-step probe", "0.14": "per-step probe", "0.33": "per-step probe",
        "2.4": "per-step probe",
        "0.47": "a sigma of the probe's schedule", "0.12": "a sigma of the probe's schedule",
        "0.02": "a sigma of the probe's schedule",
        "0.6": "a bound on the gaps the reading counts, not a metric",
        "0.45": Other("rules_vs_nfe"),
        "18.1": Other("model_zoo"),
        "3.9": "fast.ai's published figure, not a lab measurement",
    },
    "noise_reinjection": {
        "0.5": "eta, a rule parameter",
        "0.16": "snr, the Langevin corrector's default parameter",
        "0.05": "snr of a one-off probe",
        "0.834": "the one-off probe's SW (its command is in the reading)",
    },
    "perceptual_loss": {
        "0.1": "the weight of the perceptual term in training",
        "0.5": "a sigma named as a boundary",
        "0.22": "the real-vs-real FID floor's std (lab.fid.floor(), not the rows)",
        "0.45": Other("rules_vs_nfe"),
    },
    "rules_vs_nfe": {"0.5": "beta, a rule parameter", "0.3": "beta", "0.7": "beta",
                     "6.5": "seconds per call, rounded from the rows' seconds / NFE"},
    "guidance_momentum": {"1.5": "the artifact threshold |x| > 1.5, and r of ghvb",
                          "0.28": "the guidance interval's lower end, a cell parameter",
                          "5.42": "the guidance interval's upper end, a cell parameter",
                          "4.81": Other("few_step_frontier"), "2.05": Other("model_zoo"),
                          "3.75": Other("model_zoo")},
    "exact_error_vs_nfe": {"0.9": "beta, a rule parameter", "0.99": "beta",
                           "3.8": "observed order: summary's slope of log error on log NFE",
                           "4.0": "observed order (the same slope)"},
}

NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?!\.?\d)(?!\w)")
INLINE_CODE = re.compile(r"`[^`]*`")


def quoted_numbers(text: str) -> list[tuple[int, str]]:
    """``(line number, number as printed)`` of every decimal in ``text`` outside code."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    ") or line.startswith("\t"):
            continue
        out += [(number, m.group()) for m in NUMBER.finditer(INLINE_CODE.sub("", line))]
    return out


def _numbers(value):
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            yield float(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


def row_values(rows: list[dict]) -> list[float]:
    """Every value a reading may quote from ``rows``: each number of each row's metrics,
    its NFE and seconds, and each metric's mean and std over seeds."""
    values = [v for r in rows for v in _numbers([r["metrics"], r.get("nfe"), r.get("seconds")])]
    seeds: dict[str, list[dict]] = {}
    for r in rows:
        seeds.setdefault(canonical({k: v for k, v in r["cell"].items() if k != "seed"}),
                         []).append(r["metrics"])
    for members in seeds.values():
        if len(members) < 2:
            continue
        for name in {k for m in members for k, v in m.items() if isinstance(v, (int, float))}:
            agg = study.aggregate(members, [], [name])[0]
            values += [v for v in (agg[name], agg[f"{name}_std"]) if v is not None]
    return values


def matches(printed: str, values: list[float]) -> bool:
    """Whether some value rounds to ``printed`` at its number of decimals."""
    target, half = float(printed), 0.5 * 10.0 ** -len(printed.split(".")[1])
    return any(abs(v - target) <= half * (1 + 1e-9) for v in values)


def problems(reading: Path, rows: list[dict], allowed: dict[str, str | Other],
             rows_of=None) -> list[str]:
    """What is wrong with ``reading`` against ``rows``: one message per quoted number no
    value of the rows rounds to (``rows_of(name)`` gives another study's rows)."""
    values = row_values(rows)
    out = []
    for line, printed in quoted_numbers(reading.read_text()):
        reason = allowed.get(printed)
        if isinstance(reason, Other):
            if not matches(printed, row_values(rows_of(reason.study))):
                out.append(f"{reading}, line {line}: {printed} is said to come from "
                           f"{reason.study}'s rows, but no value there rounds to it")
            continue
        if reason is None and not matches(printed, values):
            decimals = len(printed.split(".")[1])
            nearest = min(values, key=lambda v: abs(v - float(printed)), default=None)
            out.append(f"{reading}, line {line}: {printed} is no value of the study's rows "
                       f"to {decimals} decimal(s) (nearest: {nearest:.{decimals + 2}f}). Fix "
                       "the reading, or allow-list the number in tests/test_readings.py with "
                       "the reason it is not a metric of these rows")
    return out


def rows_of(name: str) -> list[dict]:
    return study.read_rows(RESULTS / name / study.ROWS)


READINGS = sorted(RESULTS.glob("*/READING.md"))


def test_every_reading_is_checked():
    assert {p.parent.name for p in READINGS} >= {"rules_vs_nfe", "exact_error_vs_nfe",
                                                  "dropping_timestep", "perceptual_loss",
                                                  "noise_reinjection", "few_step_frontier",
                                                  "guidance_momentum"}


@pytest.mark.parametrize("reading", READINGS, ids=lambda p: p.parent.name)
def test_every_number_a_reading_quotes_comes_from_its_rows(reading):
    name = reading.parent.name
    rows = rows_of(name)
    assert rows, f"{reading} has no rows.jsonl beside it to quote from"
    found = problems(reading, rows, ALLOWED.get(name, {}), rows_of)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("reading", READINGS, ids=lambda p: p.parent.name)
def test_no_allow_listed_number_is_stale(reading):
    """An allow-list entry the reading no longer quotes is removed, so the list stays
    the short set of exceptions it claims to be."""
    quoted = {printed for _, printed in quoted_numbers(reading.read_text())}
    stale = set(ALLOWED.get(reading.parent.name, {})) - quoted
    assert not stale, f"{reading}: allow-listed but not quoted: {sorted(stale)}"


# ---- the checker itself ---------------------------------------------------------------------


def fake_rows() -> list[dict]:
    cell = {"rule": "heun", "budget": 20}
    return [{"key": f"k{s}", "cell": {**cell, "seed": s}, "nfe": 19, "seconds": 3.0,
             "metrics": {"fid": fid, "x0_fid": [141.21, 6.12]}}
            for s, fid in ((0, 4.909), (1, 3.96), (2, 4.403))]


def test_the_checker_accepts_values_means_and_spreads_to_their_precision(tmp_path):
    reading = tmp_path / "READING.md"
    reading.write_text("Heun gives 4.91 on seed 0 (4.9, 4.909), 4.42 ± 0.47 over seeds,\n"
                       "x0_hat 141.2 at first; 1,024 samples, 20 calls, `lab.x(0.123)`\n\n"
                       "    python -c 'print(7.77)'\n")
    assert quoted_numbers(reading.read_text()) == [
        (1, "4.91"), (1, "4.9"), (1, "4.909"), (1, "4.42"), (1, "0.47"), (2, "141.2")]
    assert problems(reading, fake_rows(), {}) == []


def test_the_checker_fails_on_a_planted_wrong_number_naming_file_line_and_number(tmp_path):
    reading = tmp_path / "READING.md"
    reading.write_text("Heun gives 4.91 on seed 0.\nChurn gives 5.95 against 4.91.\n")
    (message,) = problems(reading, fake_rows(), {})
    assert f"{reading}, line 2: 5.95 is no value of the study's rows to 2 decimal(s)" in message
    assert "nearest: 6.1200" in message and "allow-list" in message
    # rounding is to the printed precision: 4.91 is 4.909, but 4.908 is not
    reading.write_text("4.908\n")
    assert len(problems(reading, fake_rows(), {})) == 1
    # an allow-listed number passes with its reason; one claimed from another study is
    # checked against that study's rows
    reading.write_text("snr 0.16 and 4.40 from elsewhere\n")
    elsewhere = [{**fake_rows()[2], "key": "e"}]
    assert problems(reading, fake_rows(), {"0.16": "a parameter", "4.40": Other("x")},
                    lambda name: elsewhere) == []
    message, = problems(reading, fake_rows(), {"0.16": "a parameter", "4.40": Other("x")},
                        lambda name: fake_rows()[:1])
    assert "line 1: 4.40 is said to come from x's rows" in message
