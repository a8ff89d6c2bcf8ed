"""Studies: grids of cells run once each, resumably, with rows written atomically, and
the tables their summaries are built from.

- :mod:`.runner`: the study contract (:class:`Study`, :class:`ReportedStudy`) and
  :func:`run`, the resumable runner;
- :mod:`.cells`: cell keys and grids, and what ``run_cell`` shares (the cached
  ``model(name)`` loader, the cell's starting noise sampled at its budget);
- :mod:`.rows`: the one JSONL reader and writer of rows (NaN written as null), CSV;
- :mod:`.tables`: Markdown tables, means over seeds, pivots;
- :mod:`.provenance`: the git commit, torch version and compile flag every row records;
- :mod:`.placement`: the device and dtype cells sample on (``--device``, ``--dtype``);
- :mod:`.ray_backend`: :func:`ray_map`, cells as Ray tasks (``--backend ray``).
"""

from .cells import (
    cell_key,
    grid,
    model_loader,
    pin_weights,
    sample_cell,
    start_noise,
    threads,
)
from .placement import Placement, placed
from .provenance import generated_note, git_commit, provenance
from .ray_backend import RayBackendError, ray_map
from .rows import columns_of, flat, plain, read_rows, write_csv, write_rows
from .runner import (
    MANIFEST,
    ROWS,
    ReportedStudy,
    Study,
    StudyError,
    cell_label,
    check_study,
    execute,
    locked,
    process_map,
    run,
    status,
)
from .tables import (
    aggregate,
    best_per_budget,
    format_value,
    groups_of,
    identical,
    markdown_table,
    pivot,
    rule_parameters,
)

__all__ = ["Study", "ReportedStudy", "check_study", "StudyError", "run", "status", "execute",
           "process_map", "ray_map", "RayBackendError", "Placement", "placed", "locked",
           "cell_label", "ROWS", "MANIFEST",
           "cell_key", "grid", "pin_weights", "threads", "model_loader", "start_noise",
           "sample_cell",
           "read_rows", "write_rows", "plain", "flat", "columns_of", "write_csv",
           "markdown_table", "format_value", "aggregate", "pivot", "identical", "groups_of",
           "best_per_budget", "rule_parameters", "git_commit", "provenance", "generated_note"]
