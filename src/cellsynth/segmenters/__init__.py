"""Segmentation backends behind one interface (:class:`~cellsynth.segmenters.base.Segmenter`).

Cellpose 3 is the built-in backend (``cellpose3``, the default). A new backend is one module
with a :class:`Segmenter` subclass decorated with :func:`register_backend`; the CLI's
``--backend``, the Fine-tune widget's backend box and subprocess jobs then offer it.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from cellsynth.errors import CellsynthInputError
from cellsynth.segmenters.base import (
    FinetuneProgress,
    FinetuneSettings,
    Segmenter,
)

__all__ = [
    "DEFAULT_BACKEND",
    "FinetuneProgress",
    "FinetuneSettings",
    "Segmenter",
    "backend_for_model_file",
    "backend_names",
    "get_backend",
    "register_backend",
]

DEFAULT_BACKEND = "cellpose3"

#: built-in backends, imported when first asked for (their libraries are heavy)
_BUILTIN = {"cellpose3": "cellsynth.segmenters.cellpose3"}
_registry: dict[str, type[Segmenter]] = {}


def register_backend(cls: type[Segmenter]) -> type[Segmenter]:
    """Class decorator: make ``cls`` available as ``--backend cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name`")
    _registry[name] = cls
    return cls


def backend_names() -> list[str]:
    """The registered backends, built-in ones first."""
    return [*_BUILTIN, *(n for n in _registry if n not in _BUILTIN)]


def get_backend(name: str | None = None, module: str | None = None) -> type[Segmenter]:
    """The backend class called ``name`` (default: :data:`DEFAULT_BACKEND`).

    ``module`` (the module that registers it) is imported first when the name is unknown: a
    subprocess job gets its backend this way.
    """
    name = name or DEFAULT_BACKEND
    if name not in _registry:
        if name in _BUILTIN:
            importlib.import_module(_BUILTIN[name])
        elif module:
            importlib.import_module(module)
    if name not in _registry:
        raise CellsynthInputError(
            f"unknown segmenter backend {name!r} (one of {', '.join(backend_names())})"
        )
    return _registry[name]


def backend_for_model_file(path: str | Path) -> type[Segmenter]:
    """The backend whose model file ``path`` is; the default backend when none recognises it
    (its ``load`` then names the problem with the file)."""
    path = Path(path)
    if path.is_file():
        added = [n for n in backend_names() if n not in _BUILTIN]
        for name in [*added, *_BUILTIN]:
            cls = get_backend(name)
            if cls.is_model_file(path):
                return cls
    return get_backend(DEFAULT_BACKEND)
