"""Shipped weights: ``lab/weights/<name>.safetensors`` beside ``<name>.json``.

The json carries what is needed to rebuild and trust the model: its ``kind`` (a class
registered with :func:`lab.registry.register`), ``config``, the file's ``sha256``, and how it was
trained (command, steps, epochs, final loss, wall time, machine). ``lab.load`` checks
the checksum before it reads a byte of the weights.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import registry
from .io import atomic_path, write_json
from .registry import register  # noqa: F401  (re-exported: lab.zoo.register still works)

__all__ = ["load", "save", "info", "available", "register", "WEIGHTS", "sha256", "verify",
           "read_record", "machine", "ChecksumError"]

WEIGHTS = Path(__file__).parent / "weights"


class ChecksumError(ValueError):
    """A weight file does not match the checksum recorded beside it."""


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def machine() -> str:
    import os

    return (f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}, "
            f"torch {torch.__version__}")


def available(folder=WEIGHTS) -> list[str]:
    """Names of the shipped models (json files whose ``kind`` is a model class)."""
    kinds = registry.kinds()
    return sorted(p.stem for p in Path(folder).glob("*.json")
                  if read_record(p).get("kind") in kinds)


#: How to write a model's weights and json again (said by the errors below).
RESHIP = ("python -m lab train <config> --ship`; the classifiers: "
          "`python -m experiments.train_classifiers")


def read_record(path: Path, required=(), reship: str = RESHIP) -> dict:
    """The json beside a weights file; a clear error naming it when it is unreadable or
    lacks one of the ``required`` keys."""
    path = Path(path)
    fix = f"restore it (`git checkout -- {path}`) or write it again (`{reship}`)"
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid json ({err}); {fix}") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds a {type(meta).__name__}, not a weights record; {fix}")
    missing = [key for key in required if key not in meta]
    if missing:
        # without a checksum the weights cannot be trusted: the checksum's error class
        error = ChecksumError if "sha256" in missing else ValueError
        raise error(f"{path} records no {' or '.join(missing)}, so the weights beside it "
                    f"cannot be verified and rebuilt; {fix}")
    return meta


def verify(path: Path, digest: str) -> None:
    """Raise unless the file exists and its sha256 is ``digest`` (the one recorded)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} is missing; reinstall the lab or restore it with "
                         "`git checkout -- lab/weights`")
    actual = sha256(path)
    if actual != digest:
        raise ChecksumError(f"{path} does not match its recorded sha256 ({actual[:12]}... != "
                            f"{digest[:12]}...): the file is corrupt or was changed; "
                            "restore it with `git checkout -- lab/weights`")


def save(model, name: str, training: dict, folder=WEIGHTS, half: bool = False) -> Path:
    """Write ``model`` (with ``kind`` and ``config``) as safetensors + json, atomically.

    ``half`` stores floating tensors as fp16 (loaded back into the config's dtype).
    """
    folder = Path(folder)
    tensors = {k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu()
               for k, v in model.state_dict().items()}
    path = folder / f"{name}.safetensors"
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    meta = {"name": name, "kind": model.kind, "config": model.config, "sha256": sha256(path),
            "bytes": path.stat().st_size, "storage": "float16" if half else "native",
            "training": {"machine": machine(), **training}}
    write_json(folder / f"{name}.json", meta)
    return path


def info(name: str, folder=WEIGHTS) -> dict:
    """The json record of a shipped model (kind, config, sha256, training)."""
    path = Path(folder) / f"{name}.json"
    if not path.exists():
        raise ValueError(f"no shipped model {name!r}; available: {', '.join(available(folder))}")
    return read_record(path, ("kind", "config", "sha256"))


def load(name: str, folder=WEIGHTS):
    """A shipped model by name, checksum verified, in eval mode."""
    meta = info(name, folder)
    path = Path(folder) / f"{name}.safetensors"
    verify(path, meta["sha256"])
    if meta["kind"] not in registry.kinds():
        raise ValueError(f"{name} is a {meta['kind']!r} model, which this lab does not know "
                         f"(known kinds: {', '.join(registry.kinds())})")
    model = registry.lookup(meta["kind"]).from_config(meta["config"])
    state = load_file(str(path))
    reference = model.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    model.load_state_dict(state)
    model.eval()
    model.requires_grad_(False)
    return model
