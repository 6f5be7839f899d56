"""The few exception classes zoolens raises. Messages name the bad input and what exists."""

from __future__ import annotations

__all__ = ["ZoolensError", "UnknownModelError", "UnknownLayerError", "InputError", "NotFittedError",
           "BackendError"]


class ZoolensError(Exception):
    """Base class of every error zoolens raises on purpose."""


class UnknownModelError(ZoolensError, KeyError):
    """A model spec names a source or an architecture that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownLayerError(ZoolensError, KeyError):
    """A layer selector matches no layer of the model."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InputError(ZoolensError, ValueError):
    """Bad input: an empty folder, a malformed source string, arrays of the wrong shape."""


class NotFittedError(ZoolensError, RuntimeError):
    """An estimator was used before `fit`."""


class BackendError(ZoolensError, RuntimeError):
    """A backend cannot run: Ray is not installed, a cluster does not answer, workers failed."""
