"""Where a study's cells compute: the device and dtype of a run (``--device``,
``--dtype``), in effect around each cell.

A cell stays a function of its content: device and dtype are not part of it (nor of its
key), but every row records them (``"device"``, ``"dtype"``: the dtype the cell sampled
in). :func:`lab.study.sample_cell` applies them around the sampling alone:

- the noise is drawn on the CPU in the study's own precision, as always
  (:func:`lab.study.start_noise`), then moved and cast: a seed gives the same noise on
  every device;
- the model is a copy on the device; a network (a model with parameters) is also cast
  to the dtype, while an exact model keeps its own precision (it computes in float64 and
  answers in the sample's dtype);
- the trajectory comes back on the CPU in the study's own precision, so a study's
  metrics and references never see a GPU tensor or a half-precision one.

With no ``--dtype`` the study's own precision stands (float32 for networks, float64 for
the exact models). A cell that samples some other way cannot be placed: a run asking
for a device or dtype refuses it rather than record a placement it did not have.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import weakref
from dataclasses import dataclass

import torch

from ..devices import check_device_name, device, dtype, dtype_name

__all__ = ["Placement", "placed", "current", "place_model", "place_sample", "restore"]


@dataclass
class Placement:
    """A run's device (a name) and dtype (a name, or None: each study's own precision).
    ``sampled`` is set by :func:`place_sample`: the dtype the cell's samples had."""

    device: str = "cpu"
    dtype: str | None = None
    sampled: str | None = None

    def __post_init__(self):
        check_device_name(self.device)
        if self.dtype is not None:
            self.dtype = dtype_name(dtype(self.dtype))

    @property
    def moves(self) -> bool:
        """Whether cells leave the default (the CPU, the study's own precision)."""
        return self.device != "cpu" or self.dtype is not None

    def record(self) -> dict:
        """What a row records: the device and the dtype the cell sampled in."""
        return {"device": self.device, "dtype": self.sampled or self.dtype}

    def check(self) -> Placement:
        """Self, if this machine has the device (else the error naming the way out)."""
        device(self.device)
        return self


_current = Placement()


def current() -> Placement:
    """The placement of the cell running now (the default outside a run)."""
    return _current


@contextlib.contextmanager
def placed(placement: Placement | None):
    """Run the block with ``placement`` in effect; yields the copy the block fills in."""
    global _current
    old = _current
    _current = dataclasses.replace(placement or Placement(), sampled=None)
    try:
        yield _current
    finally:
        _current = old


_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {placement: copy}


def place_model(model):
    """``model`` on the current device, a network (it has parameters) in the current dtype
    too: a copy made once per model and placement (the cached original stays as it was).
    An unmoved default run returns ``model`` itself."""
    p = _current
    if not p.moves or not isinstance(model, torch.nn.Module):
        return model
    copies = _copies.setdefault(model, {})
    if (p.device, p.dtype) not in copies:
        placed_model = copy.deepcopy(model).to(device(p.device))
        if p.dtype is not None and any(True for _ in placed_model.parameters()):
            placed_model = placed_model.to(dtype(p.dtype))
        copies[p.device, p.dtype] = placed_model
    return copies[p.device, p.dtype]


def place_sample(x: torch.Tensor) -> torch.Tensor:
    """A cell's starting state (drawn on the CPU) on the current device and dtype; notes
    the dtype for the row."""
    p = _current
    if p.moves:
        x = x.to(device=device(p.device), dtype=dtype(p.dtype) if p.dtype else x.dtype)
    p.sampled = dtype_name(x.dtype)
    return x


def restore(traj, like: torch.dtype):
    """``traj`` on the CPU, its states in dtype ``like`` (the study's own precision);
    ``traj`` itself when nothing moved."""
    if traj is None or not _current.moves:
        return traj

    def cpu(t, to=None):
        return None if t is None else t.to(device="cpu", dtype=to or t.dtype)

    return dataclasses.replace(traj, xs=cpu(traj.xs, like), x0s=cpu(traj.x0s, like),
                               sigmas=cpu(traj.sigmas), sigma_hats=cpu(traj.sigma_hats))
