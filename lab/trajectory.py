"""The recorded path of one sampling run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .io import atomic_path

__all__ = ["Trajectory"]

FORMAT = "lab.Trajectory"
VERSION = 2  # 2: "cumulative_nfe" (version 1 called it "nfe_per_step")


@dataclass
class Trajectory:
    """States ``xs`` (``steps + 1`` of them, the start included), denoiser outputs
    ``x0s`` (one per step), the schedule ``sigmas``, ``cumulative_nfe`` (model calls
    made by the end of each step) and wall time ``seconds`` per step.

    With ``record="final"`` only the last state and x0_hat are kept (``xs`` and ``x0s``
    have length 1); the schedule, NFE and timings are always complete.
    ``sigma_hats`` (steps, B) holds the estimated noise levels when the sampler read
    them off the image (``sigma_estimate``), else None.
    """

    xs: Tensor
    x0s: Tensor
    sigmas: Tensor
    cumulative_nfe: list[int]
    seconds: list[float]
    rule: str = ""
    meta: dict = field(default_factory=dict)
    sigma_hats: Tensor | None = None

    @property
    def x(self) -> Tensor:
        """The final sample."""
        return self.xs[-1]

    @property
    def nfe(self) -> int:
        """Model calls in the whole run."""
        return self.cumulative_nfe[-1] if self.cumulative_nfe else 0

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def save(self, path) -> None:
        """Write to a safetensors file, atomically."""
        tensors = {"xs": self.xs.contiguous(), "x0s": self.x0s.contiguous(),
                   "sigmas": self.sigmas.contiguous(),
                   "cumulative_nfe": torch.tensor(self.cumulative_nfe, dtype=torch.int64),
                   "seconds": torch.tensor(self.seconds, dtype=torch.float64)}
        if self.sigma_hats is not None:
            tensors["sigma_hats"] = self.sigma_hats.contiguous()
        meta = {"format": FORMAT, "version": str(VERSION), "rule": self.rule,
                "meta": json.dumps(self.meta)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path) -> Trajectory:
        """Read a file written by :meth:`save`; a corrupt or foreign file is a ValueError."""
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except FileNotFoundError:
            raise
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"{path} is not a readable trajectory file (corrupt or not "
                             f"safetensors): {err}") from err
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is a safetensors file but not a lab trajectory "
                             f"(format {meta.get('format')!r}); save one with Trajectory.save")
        if int(meta.get("version", -1)) > VERSION:
            raise ValueError(f"{path} was written by a newer lab (version {meta['version']}); "
                             "upgrade the lab to read it")
        if "nfe_per_step" in tensors:  # version 1's name for the same counts
            tensors["cumulative_nfe"] = tensors.pop("nfe_per_step")
        missing = {"xs", "x0s", "sigmas", "cumulative_nfe", "seconds"} - set(tensors)
        if missing:
            raise ValueError(f"{path} lacks {sorted(missing)}; the file is damaged")
        return cls(xs=tensors["xs"], x0s=tensors["x0s"], sigmas=tensors["sigmas"],
                   cumulative_nfe=tensors["cumulative_nfe"].tolist(),
                   seconds=tensors["seconds"].tolist(), rule=meta.get("rule", ""),
                   meta=json.loads(meta.get("meta", "{}")), sigma_hats=tensors.get("sigma_hats"))
