"""Package attributes imported on first use, so that importing a package (e.g. for the CLI parser) stays cheap.

    __getattr__, __dir__ = lazy_attributes(__name__, globals(), {"Emulator": "emulator"})

makes ``package.Emulator`` import ``package.emulator`` when first asked for
(PEP 562); ``from package import Emulator`` works as before.
"""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_attributes(package: str, namespace: dict, names: dict[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: each of ``names`` (attribute -> submodule) loads on first use."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
