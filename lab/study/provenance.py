"""What every row records about the code it ran on, and the line a summary opens with."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["git_commit", "provenance", "generated_note"]

SOURCE = Path(__file__).resolve().parents[2]  # the checkout holding lab/


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


def git_commit(path=None) -> str:
    """``git rev-parse HEAD`` of the checkout holding ``path`` (default: the lab's),
    or ``"unknown"`` (no git, not a checkout)."""
    return _git(str(path or SOURCE))[0]


def provenance() -> dict:
    """What every row records about the code it ran on: lab version, git commit, dirty
    tree, torch version, and whether UNets ran through torch.compile
    (:func:`lab.config.compile_requested`: float rounding differs from eager)."""
    import torch

    from .. import __version__
    from ..config import compile_requested

    commit, dirty = _git(str(SOURCE))
    return {"lab_version": __version__, "git_commit": commit, "git_dirty": dirty,
            "torch_version": torch.__version__, "compiled": compile_requested()}


def generated_note(rows: Sequence[Mapping], study_name: str) -> str:
    """The provenance line a summary starts with: rows, cell time, command, lab version
    and commits of the rows, how many cells ran compiled, and the devices and dtypes the
    cells sampled on."""
    commits = sorted({str(r.get("git_commit"))[:10] + ("+dirty" if r.get("git_dirty") else "")
                      for r in rows})
    versions = sorted({str(r.get("lab_version")) for r in rows})
    seconds = sum(r.get("seconds") or 0 for r in rows)
    compiled = sum(r.get("compiled") is True for r in rows)
    unrecorded = sum("compiled" not in r for r in rows)
    # Rows from before devices were recorded ran on the CPU in the study's own precision.
    places = sorted({" ".join(str(r[k]) for k in ("device", "dtype") if r.get(k))
                     for r in rows if r.get("device")})
    return (f"Generated from `rows.jsonl` ({len(rows)} cells, {seconds / 3600:.2f} h of cell "
            f"time) by `python -m experiments {study_name}`; lab {', '.join(versions)}, "
            f"commit {', '.join(commits)}."
            + (f" {compiled} of {len(rows)} cells ran with `--compile`." if compiled else "")
            + (f" {unrecorded} rows predate the record of `--compile`." if unrecorded else "")
            + (f" Sampled on {', '.join(places)}." if places else ""))
