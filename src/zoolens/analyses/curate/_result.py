"""A mixin that gives the curate result dataclasses `to_dict`, `to_json`, `from_dict`, `from_json`.

Arrays become lists in the dict; a field whose metadata holds ``load=callable`` is turned back into
an array by that callable in `from_dict`, so ``cls.from_json(r.to_json())`` equals ``r``.
"""

from __future__ import annotations

import json
from dataclasses import field, fields, is_dataclass
from typing import Any, Callable

import numpy as np

__all__: list[str] = []


def _plain(value: Any) -> Any:
    """A JSON-safe copy of `value`: arrays and NumPy scalars to Python, dataclasses to dicts."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if is_dataclass(value) and not isinstance(value, type):
        return value.to_dict() if hasattr(value, "to_dict") else {
            f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _int_array(v) -> np.ndarray:
    return np.asarray(v, dtype=np.int64)


def _float_array(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)


def _int_arrays(v) -> list[np.ndarray]:
    return [np.asarray(g, dtype=np.int64) for g in v]


def array_field(load: Callable = _int_array, **kwargs) -> Any:
    """A dataclass field holding an array, restored by `load` in `from_dict` (default: empty)."""
    if "default" not in kwargs:
        kwargs.setdefault("default_factory", lambda: load([]))
    return field(metadata={"load": load}, **kwargs)


class ResultMixin:
    """`to_dict` / `to_json` / `from_dict` / `from_json` for a dataclass of arrays and numbers."""

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict):
        kwargs = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            load = f.metadata.get("load")
            v = d[f.name]
            kwargs[f.name] = load(v) if (load is not None and v is not None) else v
        return cls(**kwargs)

    @classmethod
    def from_json(cls, s: str | bytes):
        return cls.from_dict(json.loads(s))
