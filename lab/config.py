"""Switches read from the environment at call time, so worker processes inherit them."""

from __future__ import annotations

import os

__all__ = ["COMPILE_ENV", "compile_requested"]

COMPILE_ENV = "LAB_COMPILE"


def compile_requested() -> bool:
    """Whether UNets run through ``torch.compile`` (``LAB_COMPILE=1``, the studies'
    ``--compile``). Compiled results agree with eager to float rounding, not bitwise,
    so it is opt-in."""
    return os.environ.get(COMPILE_ENV) == "1"
