"""Devices and precisions by name, checked once: what ``--device`` and ``--dtype`` accept
in the studies (``python -m experiments``) and the trainer (``python -m lab train``).

    device = lab.devices.device("cuda")     # a torch.device, or an error naming the way out
    dtype = lab.devices.dtype("bfloat16")   # a torch.dtype

Noise is drawn on the CPU and then moved (:func:`lab.noise`), so a seed gives the same
noise on every device; sigma arithmetic keeps float32 or better whatever the sample's
dtype (:func:`lab.denoiser.sigma_dtype`).
"""

from __future__ import annotations

import torch

__all__ = ["DEVICES", "DTYPES", "device", "dtype", "dtype_name", "check_device_name"]

DEVICES = ("cpu", "cuda", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_device_name(name: str) -> str:
    """``name`` if it spells a device (``cpu``, ``cuda``, ``cuda:1``, ``mps``), without
    asking whether this machine has it (a cluster's workers may, its driver not)."""
    kind, _, index = str(name).partition(":")
    if kind not in DEVICES or (index and not index.isdigit()) or (index and kind == "cpu"):
        raise ValueError(f"unknown device {name!r}; use one of {', '.join(DEVICES)} "
                         "(cuda:N for a particular GPU)")
    return str(name)


def device(name: str | torch.device = "cpu") -> torch.device:
    """The torch device ``name`` names, if this machine has it; otherwise a
    RuntimeError saying what is missing and what to do instead."""
    name = check_device_name(str(name))
    kind, _, index = name.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = ("a CPU-only build" if torch.version.cuda is None
                     else f"a CUDA {torch.version.cuda} build that finds no GPU")
            raise RuntimeError(f"--device {name}: no CUDA GPU here (torch {torch.__version__} "
                               f"is {build}); use --device cpu, or install a CUDA build of "
                               "torch on a machine with an NVIDIA GPU (pytorch.org)")
        if index and int(index) >= torch.cuda.device_count():
            raise RuntimeError(f"--device {name}: this machine has "
                               f"{torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"--device {name}: no Apple-silicon GPU (MPS) here; use --device cpu")
    return torch.device(name)


def dtype(name: str | torch.dtype) -> torch.dtype:
    """The torch dtype ``name`` names (float32, bfloat16 or float16)."""
    if isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(value: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``: how rows and records spell a dtype."""
    return str(value).removeprefix("torch.")
