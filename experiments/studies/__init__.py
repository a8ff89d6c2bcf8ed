"""Studies run by ``python -m experiments <study> [--fast] [--out DIR]``.

Each module here is one study, a :class:`lab.study.Study`: ``cells(fast) -> list[dict]``,
a ``run_cell(cell) -> dict`` of metrics and a ``render(rows, out_dir)`` that writes plots
and ``summary.md`` from the rows alone. Those with a section in ``results/README.md`` are
:class:`lab.study.ReportedStudy` (also ``NOTEBOOK``, ``PLOT``, ``headline(rows)``). The
runner (:func:`lab.study.run`) does the rest: resuming, atomic rows in
``results/<study>/rows.jsonl`` (``results/<study>-fast/`` with ``--fast``), a progress
bar, provenance. ``smoke.py`` is the smallest example.
"""
