"""Notebooks are committed clean: no outputs, no execution counts, no saved widget state;
each has a parameters cell that LAB_FAST shrinks, and imports the installed ``lab``
(no sys.path edits).

Also a tool: ``python -m tests.test_notebook_hygiene`` lists offending notebooks (exit 1
if any), ``--strip`` cleans them in place (outputs, execution counts, widget state).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: notebook metadata that records a run rather than the notebook
RUN_METADATA = ("widgets", "execution")
#: cell metadata that records a run
CELL_RUN_METADATA = ("execution", "collapsed", "scrolled")


def problems(nb) -> list[str]:
    """What makes a notebook unclean, one line each."""
    out = []
    for key in RUN_METADATA:
        if key in nb.metadata:
            out.append(f"notebook metadata {key!r} (saved state of a run)")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            out.append(f"cell {i}: {len(cell.outputs)} output(s)")
        if cell.get("execution_count") is not None:
            out.append(f"cell {i}: execution_count {cell.execution_count}")
        for key in CELL_RUN_METADATA:
            if key in cell.metadata:
                out.append(f"cell {i}: metadata {key!r}")
    return out


def strip(nb) -> None:
    """Remove outputs, execution counts and run metadata, in place."""
    for key in RUN_METADATA:
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            for key in CELL_RUN_METADATA:
                cell.metadata.pop(key, None)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    found = problems(nb)
    assert not found, (f"{path.name} is not clean: {'; '.join(found)}. Run "
                       "`python -m tests.test_notebook_hygiene --strip`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_thin_and_has_a_fast_mode(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    sources = "\n".join(c.source for c in code)
    assert "sys.path" not in sources, f"{path.name} edits sys.path: import the installed lab"
    assert "import lab" in sources or "from lab" in sources
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assert "LAB_FAST" in params[0].source, f"{path.name}: the parameters cell ignores LAB_FAST"
    assert code.index(params[0]) == 0, f"{path.name}: the parameters cell comes first"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_checks_its_claims(path):
    """A notebook states results in its prose; at least one code cell asserts them, so
    tests/test_notebooks.py fails when one stops holding."""
    nb = nbformat.read(path, as_version=4)
    asserts = [i for i, c in enumerate(nb.cells)
               if c.cell_type == "code" and any(line.lstrip().startswith("assert ")
                                                for line in c.source.splitlines())]
    assert asserts, (f"{path.name} asserts nothing: check what the prose claims in the cell "
                     "that prints it (assert ...)")


def test_problems_and_strip_agree():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1")
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"},
                                           execution_count=1)]
    cell.execution_count = 1
    nb.cells = [cell]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    assert len(problems(nb)) == 3
    strip(nb)
    assert problems(nb) == []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Check (default) or strip notebook outputs.")
    p.add_argument("--strip", action="store_true", help="clean the notebooks in place")
    p.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    args = p.parse_args(argv)
    dirty = 0
    for path in args.paths or NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        found = problems(nb)
        if not found:
            continue
        if args.strip:
            strip(nb)
            nbformat.write(nb, path)
            print(f"stripped {path}")
        else:
            dirty += 1
            print(f"{path}: " + "; ".join(found))
    return 1 if dirty else 0


if __name__ == "__main__":
    sys.exit(main())
