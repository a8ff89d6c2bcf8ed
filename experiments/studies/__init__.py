"""Studies run by ``python -m experiments <study> [--fast] [--out DIR]``.

Each module here is one study: it declares ``cells(fast) -> list[dict]``, a
``run_cell(cell) -> dict`` of metrics and a ``render(rows, out_dir)`` that writes plots
and ``summary.md`` from the rows alone; the runner (:func:`lab.study.run`) does the rest:
resuming, atomic rows in ``results/<study>/rows.jsonl`` (``results/<study>-fast/`` with
``--fast``), a progress bar, provenance. See :mod:`lab.study` and ``smoke.py`` for an
example.
"""
