"""Every notebook runs top to bottom in fast mode (LAB_FAST=1) without an error.

Executed in memory with nbclient (the checkout's files are never written), one fresh
kernel per notebook, the notebooks folder as working directory. Budget: each notebook
must finish within ``BUDGET`` seconds including kernel start. A cell that raises fails
the test with the cell and its traceback; the notebooks assert what their prose states
(the budgets those claims rest on are the same in fast mode), so a claim that stops
holding fails here too.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
BUDGET = 120.0  # seconds per notebook in fast mode
CELL_TIMEOUT = 120  # seconds per cell


def test_the_notebooks_are_there():
    names = [p.stem for p in NOTEBOOKS]
    for prefix in ("00_tour", "01_", "02_", "03_", "04_trajectories_2d", "05_", "06_", "07_",
                   "08_looking_ahead", "09_guidance"):
        assert any(n.startswith(prefix) for n in names), f"no notebook {prefix}*: {names}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, monkeypatch):
    monkeypatch.setenv("LAB_FAST", "1")  # the kernel inherits the environment
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.monotonic()
    client.execute()  # raises CellExecutionError naming the cell on any error
    elapsed = time.monotonic() - start
    print(f"{path.name}: {elapsed:.1f} s in fast mode")
    assert elapsed < BUDGET, f"{path.name} took {elapsed:.0f} s in fast mode (budget {BUDGET:.0f})"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
