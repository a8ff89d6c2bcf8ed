"""Model kinds: the name a weights json records, and the class that rebuilds it.

A model class declares its kind where it is defined:

    @register("edm")
    class EDM(Denoiser): ...

and ``lab.zoo.load`` rebuilds a shipped model with ``lookup(meta["kind"]).from_config``.
This module imports nothing from the lab, so any module may import it. The kinds are
known once their modules are imported: ``lab/__init__.py`` imports every module that
defines one, and Python runs it before any ``lab.<module>``.
"""

from __future__ import annotations

__all__ = ["register", "lookup", "kinds", "trainable_kinds"]

_CLASSES: dict[str, type] = {}


def register(kind: str):
    """Class decorator: models of this ``kind`` are rebuilt by ``cls.from_config(config)``."""

    def deco(cls):
        known = _CLASSES.get(kind)
        # the same class defined again (a module reloaded) replaces itself
        if known is not None and _where(known) != _where(cls):
            raise ValueError(f"kind {kind!r} is registered twice: {_where(known)} and "
                             f"{_where(cls)}; give one of them another name")
        _CLASSES[kind] = cls
        cls.kind = kind
        return cls

    return deco


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def kinds() -> list[str]:
    """Every registered kind, sorted."""
    return sorted(_CLASSES)


def trainable_kinds() -> list[str]:
    """The kinds whose class carries its own ``training_loss`` (``python -m lab train``)."""
    return [k for k in kinds() if callable(getattr(_CLASSES[k], "training_loss", None))]


def lookup(kind: str) -> type:
    """The class registered as ``kind``; a clear ``ValueError`` for an unknown one."""
    try:
        return _CLASSES[kind]
    except KeyError:
        raise ValueError(f"no model kind {kind!r}; known kinds: {', '.join(kinds())}") from None
