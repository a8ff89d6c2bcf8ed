"""Cells: what one unit of a study's grid is, and the opening every sampling cell shares.

A cell is a small JSON-serialisable dict (model, rule, parameters, budget, seed, sample
count, ...); its key is a hash of its content (:func:`cell_key`), so a changed cell is a
new cell. :func:`grid` builds a study's cells; :func:`pin_weights` ties a cell to the
shipped weights it names. Inside ``run_cell``, :func:`model_loader` gives the cached
``model(name)`` and :func:`sample_cell` the cell's starting noise sampled at its budget.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch

from .. import zoo
from ..rules import get
from ..sample import try_sample_at_budget
from ..seeding import noise
from .placement import place_model, place_sample, restore
from .rows import canonical

__all__ = ["cell_key", "grid", "pin_weights", "threads", "model_loader", "start_noise",
           "sample_cell"]


def cell_key(cell: Mapping) -> str:
    """A stable 16-hex-digit key of a cell's content: sha256 of its canonical JSON (keys
    sorted), so dict order does not matter and any changed value makes a new key."""
    if not isinstance(cell, Mapping):
        raise TypeError(f"a cell must be a dict, got {type(cell).__name__}")
    return hashlib.sha256(canonical(dict(cell)).encode()).hexdigest()[:16]


def grid(*axes: Sequence[Mapping], **named) -> list[dict]:
    """The product of axes as a list of cells, the first axis varying slowest.

    A positional axis is a list of dicts merged into each cell (e.g. rules with their
    parameters); a keyword axis is ``name=[values]``, or ``name=value`` for a constant::

        grid([{"rule": "heun", "params": {}}, {"rule": "momentum", "params": {"beta": 0.5}}],
             model=["mixture"], budget=[5, 10], seed=[0, 1], samples=512)
    """
    lists = [[dict(d) for d in axis] for axis in axes]
    for name, values in named.items():
        values = values if isinstance(values, (list, tuple, range)) else [values]
        lists.append([{name: v} for v in values])
    cells = []
    for combo in itertools.product(*lists):
        cell: dict = {}
        for part in combo:
            clash = set(cell) & set(part)
            if clash:
                raise ValueError(f"grid axes overlap in {sorted(clash)}")
            cell.update(part)
        cells.append(cell)
    return cells


def pin_weights(cells: Iterable[Mapping], fields: Sequence[str] = ("model", "sigma_from")
                ) -> list[dict]:
    """The cells with ``"weights": {name: sha256[:12]}`` for every zoo model a cell names
    in ``fields``. The checksum is part of the cell, so of its key: re-ship a model under
    the same name and its old rows no longer count as done, instead of mixing with new
    ones."""
    shipped = set(zoo.available())
    out = []
    for cell in cells:
        names = sorted({cell[f] for f in fields if cell.get(f) in shipped})
        out.append({**cell, "weights": {n: zoo.info(n)["sha256"][:12] for n in names}}
                   if names else dict(cell))
    return out


@contextlib.contextmanager
def threads(n: int = 1):
    """Run torch on ``n`` threads inside the block. The runner runs every cell on one:
    cells are independent, so spare cores serve ``--workers`` (or whatever else runs on
    the machine) better than a second thread inside one cell."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def model_loader(**exact: Callable[[], object]) -> Callable[[str], object]:
    """A study's ``model(name)``, cached: one load per name and process (cells that
    share a model share it). A name in ``exact`` is built by its factory (an exact model
    of :mod:`lab.data`, e.g. ``mixture=lab.data.ring_mixture``); any other name is a
    shipped model, :func:`lab.load`."""

    @functools.cache
    def model(name: str):
        if name in exact:
            return exact[name]()
        return zoo.load(name)

    return model


def start_noise(model, samples: int, seed: int, sigma_max: float,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A cell's starting state: ``samples`` draws of :func:`lab.noise` in the model's
    sample shape from ``seed``, times ``sigma_max``. Sample k depends on (seed, k) only,
    so every rule of a seed starts from the same noise."""
    return noise((samples, *model.sample_shape), seed=seed, dtype=dtype) * sigma_max


def sample_cell(model, cell: Mapping, schedule: Callable[[int], torch.Tensor], *,
                sigma_max: float | None = None, rule=None, dtype: torch.dtype = torch.float32,
                record: str = "final", **kwargs):
    """The opening of a budgeted sampling cell: :func:`start_noise`, then
    :func:`lab.sample.try_sample_at_budget` with ``rule`` (default ``cell["rule"]`` with
    ``cell["params"]``) at ``cell["budget"]`` model calls on ``schedule``, seeded by
    ``cell["seed"]``. Returns ``(traj, "ok")`` or ``(None, status)``; ``kwargs`` go to
    :func:`lab.sample` (e.g. ``sigma_estimate``).

    The noise is scaled to the schedule's first sigma. ``sigma_max``, if given, must be
    that sigma: a schedule that starts elsewhere (a tuned ``sigma_max``) would otherwise
    start from noise of the wrong size, silently.

    The sampling runs on the run's device and dtype (:mod:`lab.study.placement`: the
    noise drawn here on the CPU, then moved); ``traj`` comes back on the CPU in
    ``dtype``."""
    if rule is None:
        rule = get(cell["rule"], **cell.get("params", {}))
    start = float(schedule(1)[0])  # every schedule of a cell starts where its noise does
    if sigma_max is not None and not math.isclose(start, sigma_max, rel_tol=1e-6):
        raise ValueError(f"the schedule starts at sigma {start:g}, but the noise is asked at "
                         f"{sigma_max:g}; drop sigma_max (the schedule's start is used)")
    x = start_noise(model, cell["samples"], cell["seed"], start, dtype)
    traj, status = try_sample_at_budget(place_model(model), place_sample(x), rule,
                                        cell["budget"], schedule, seed=cell["seed"],
                                        record=record, **kwargs)
    return restore(traj, x.dtype), status
