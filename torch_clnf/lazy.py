"""Package attributes imported on first use, so that importing a package stays light."""
from __future__ import annotations

import sys
from importlib import import_module
from typing import Any, Callable


def lazy_attributes(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from its submodule
    ``where[name]`` (relative, e.g. ``".videos"``) the first time it is asked for, and keeps it."""

    def attribute(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(where[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    return attribute
