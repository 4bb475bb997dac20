"""A package `__init__` that names its API without importing it (PEP 562).

`import cutover.exceptions` runs `cutover/__init__.py` first; if that imported every module it
names, each command of the CLI would pay for all of them before doing anything (2.5 s for
`strangler cutover --help`). With `exports`, a name is imported the first time it is used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["exports"]


def exports(package: str, modules: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`: `modules` maps each module to the names (space
    separated) it gives the package, each loaded on first use."""
    names = {name: module for module, listed in modules.items() for name in listed.split()}

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # the next use is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names})

    return __getattr__, __dir__
