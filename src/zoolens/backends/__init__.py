"""Backends: where the batches of a pass run and where the sinks' states are merged.

- `LocalBackend` ("local", the default): the engine in this process, decoding in DataLoader
  workers. Needs nothing beyond zoolens.
- `RayBackend` ("ray"): decoding in Ray tasks, the models in a Ray Data actor pool, the sinks'
  states merged here (`pip install 'zoolens[ray]'`).

Every analysis and `zoolens.plan` take `backend=`: a name, or a backend object carrying its
settings. `resolve_backend` turns either into a backend once.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import InputError
from .base import Backend
from .local import LocalBackend
from .ray import RayBackend

__all__ = ["Backend", "LocalBackend", "RayBackend", "BACKENDS", "resolve_backend"]

BACKENDS = ("local", "ray")


def resolve_backend(backend: str | Backend | None = None, *,
                    num_workers: int | None = None) -> Backend:
    """A backend from a name ("local", "ray") or a backend object; None is "local".

    num_workers: the analysis' `num_workers`, which means each backend's workers: decoding
    processes for "local", model workers (actors) for "ray". It fills in a backend object's
    unset worker count and leaves a set one alone."""
    if backend is None or (isinstance(backend, str) and backend.lower() == "local"):
        return LocalBackend(num_workers=num_workers)
    if isinstance(backend, str) and backend.lower() == "ray":
        return RayBackend(workers=num_workers)
    if isinstance(backend, LocalBackend):
        return backend if backend.num_workers is not None or num_workers is None else \
            replace(backend, num_workers=num_workers)
    if isinstance(backend, RayBackend):
        return backend if backend.workers is not None or num_workers is None else \
            replace(backend, workers=num_workers)
    if isinstance(backend, Backend):
        return backend
    raise InputError(f"backend {backend!r}: use one of {', '.join(BACKENDS)}, or a backend "
                     "object such as zoolens.RayBackend(address='auto', workers=4)")
