"""Document loaders, one module per format (see base.py); adding a format means adding one module here.

Every module of this package is imported, and each registers its loader for its suffixes.
"""

from __future__ import annotations

import importlib
import pkgutil

from tasks.ingest.loaders.base import Document, Loader, LoadError, register, registry

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")


def loader_for(suffix: str) -> Loader | None:
    return registry().get(suffix.lower())


def supported() -> set[str]:
    return set(registry())


__all__ = ["Document", "LoadError", "Loader", "loader_for", "register", "registry", "supported"]
