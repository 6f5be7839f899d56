"""Lazy package attributes (PEP 562): a package names what it exports and where each lives, and
a module is imported on first use. `import zoolens` then costs nothing heavy, and the array
tools (`zoolens.curate` on NumPy embeddings) run without importing torch."""

from __future__ import annotations

import importlib
from typing import Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, table: dict[str, str]) -> tuple[Callable, Callable]:
    """`(__getattr__, __dir__)` for `package`, whose `table` maps each exported name to
    "module" (its attribute of that name), "module:attribute", or "module:" (the module
    itself); modules are relative to the package."""

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, colon, attr = table[name].partition(":")
        value = importlib.import_module(module, package)
        if not colon or attr:
            value = getattr(value, attr or name)
        globals_ = importlib.import_module(package).__dict__
        globals_[name] = value  # next time, a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(table))

    return __getattr__, __dir__
