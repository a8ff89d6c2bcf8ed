"""``python -m experiments <study> [--fast] [--limit N] [--workers N] [--compile] ...``.

Where cells run: ``--workers N`` local processes, or ``--backend ray [--address ADDR]
[--cpus-per-cell N] [--gpus-per-cell F]`` (Ray tasks, :func:`lab.study.ray_map`); on
``--device cpu|cuda|mps`` in ``--dtype float32|bfloat16|float16`` (default: the study's
own precision; :mod:`lab.study.placement`).

(``python -m experiments tune <rule> --budget B ...`` tunes a rule: :mod:`experiments.tune`.)

Runs a study of ``experiments/studies/`` (or any importable module, by dotted name)
through :func:`lab.study.run`: the cells not yet in ``<out>/rows.jsonl`` one by one, a
row written atomically after each, then the study's plots and ``summary.md``. Stop it
at any time; the next run resumes. Without a study name it lists the studies.

Default ``<out>``: ``results/<study>/``, or ``results/<study>-fast/`` with ``--fast`` (a
folder remembers which kind of run it holds and refuses the other).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
PACKAGE = "experiments.studies"


def available() -> dict[str, str]:
    """Study name -> the first line of its docstring (without importing torch twice)."""
    package = importlib.import_module(PACKAGE)
    out = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{PACKAGE}.{info.name}")
        out[getattr(module, "NAME", info.name)] = (module.__doc__ or "").strip().split("\n")[0]
    return out


def load(name: str):
    """The study module ``experiments.studies.<name>``, or a dotted module path."""
    target = name if "." in name else f"{PACKAGE}.{name}"
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        if err.name not in (target, f"{PACKAGE}.{name}"):
            raise
        known = ", ".join(available()) or "none"
        raise SystemExit(f"no study {name!r}; available: {known}") from None


def default_out(name: str, fast: bool) -> Path:
    return RESULTS / (f"{name}-fast" if fast else name)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["tune"]:  # python -m experiments tune <rule> --budget B ...
        from experiments import tune

        tune.main(argv[1:])
        return 0
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.split("\n")[0])
    p.add_argument("study", nargs="?", help="a study of experiments/studies (none: list them)")
    p.add_argument("--fast", action="store_true", help="the small version (fewer samples, NFE)")
    p.add_argument("--out", type=Path, help="output folder (default results/<study>[-fast])")
    p.add_argument("--limit", type=int, help="run at most this many new cells, then stop")
    p.add_argument("--list", action="store_true", help="list the cells and which are done")
    p.add_argument("--redo", nargs="+", metavar="KEY", default=(),
                   help="run these done cells again (keys or unique prefixes from --list); "
                        "each old row stays until its new row replaces it")
    p.add_argument("--render-only", action="store_true",
                   help="run no cell; redraw plots and summary.md if every cell is done")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--workers", type=int, default=1,
                   help="run cells in this many processes, one torch thread each")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: this process (or --workers processes); ray: one Ray task a cell")
    p.add_argument("--address", help="with --backend ray: the cluster's host:port, or auto "
                                      "(the cluster `ray start` joined here); default: a new "
                                      "Ray on this machine")
    p.add_argument("--cpus-per-cell", type=float,
                   help="with --backend ray: CPUs each cell reserves (default 1; a cell still "
                        "computes on one torch thread)")
    p.add_argument("--gpus-per-cell", type=float,
                   help="with --backend ray: GPUs each cell reserves, a fraction to share one "
                        "(default 1 with --device cuda, else 0)")
    p.add_argument("--device", default="cpu",
                   help="where cells sample: cpu, cuda (cuda:N) or mps (default cpu)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="precision cells sample in (default: the study's own; sigma arithmetic "
                        "stays float32 or better)")
    p.add_argument("--compile", action="store_true",
                   help="run UNets through torch.compile (LAB_COMPILE=1): about 1.4x faster "
                        "per model call on a CPU; outputs agree with eager to float rounding")
    args = p.parse_args(argv)
    if args.compile:
        from lab.config import COMPILE_ENV

        os.environ[COMPILE_ENV] = "1"  # read at call time, and inherited by --workers

    from lab import study as runner

    try:
        backend, placement = _backend(args, runner)
    except (runner.StudyError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.study is None:
        for name, line in available().items():
            print(f"{name:20s} {line}")
        return 0
    module = load(args.study)
    name = getattr(module, "NAME", args.study.rsplit(".", 1)[-1])
    out = args.out or default_out(name, args.fast)
    if args.list:
        cells = runner.status(module, out, args.fast)
        for key, cell, done in cells:
            print(f"{key}  {'done   ' if done else 'pending'}  {runner.cell_label(cell)}")
        print(f"{sum(d for *_, d in cells)} of {len(cells)} cells done in {out}")
        return 0
    try:
        rows = runner.run(module, out, fast=args.fast, limit=0 if args.render_only else args.limit,
                          progress=not args.quiet, map=backend, placement=placement,
                          redo=args.redo)
    except runner.StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = len(runner.status(module, out, args.fast))
    if len(rows) < total:
        print(f"{len(rows)} of {total} cells done in {out}; run again to continue")
    else:
        print(f"{total} cells done; {out / 'summary.md'}")
    return 0


def _backend(args, runner):
    """The map that runs the cells (from --backend, --workers, ...) and their placement
    (--device, --dtype), every option checked before any cell runs."""
    placement = runner.Placement(args.device, args.dtype)
    ray_only = [f"--{name.replace('_', '-')}" for name in ("address", "cpus_per_cell",
                                                           "gpus_per_cell")
                if getattr(args, name) is not None]
    if args.backend != "ray":
        if ray_only:
            raise ValueError(f"{', '.join(ray_only)} go with --backend ray")
        placement.check()  # this machine runs the cells: it must have the device
        return (map if args.workers <= 1 else runner.process_map(args.workers)), placement
    if args.workers != 1:
        raise ValueError("--workers is for the local backend; with --backend ray, Ray runs "
                         "as many cells at once as the cluster has CPUs (see --cpus-per-cell)")
    gpus = args.gpus_per_cell
    if gpus is None:
        gpus = 1 if args.device.startswith("cuda") else 0
    if args.device.startswith("cuda") and gpus == 0:
        raise ValueError("--device cuda with --gpus-per-cell 0: Ray hides the GPUs from a task "
                         "that reserves none; give each cell a share, e.g. --gpus-per-cell 0.5")
    cpus = 1 if args.cpus_per_cell is None else args.cpus_per_cell
    return runner.ray_map(args.address, cpus_per_cell=cpus, gpus_per_cell=gpus), placement


if __name__ == "__main__":
    raise SystemExit(main())
