"""The few exception classes zoolens raises. Messages name the bad input and what exists."""

from __future__ import annotations

__all__ = ["ZoolensError", "UnknownModelError", "UnknownLayerError", "InputError", "NotFittedError",
           "WeightsUnavailableError", "UserCodeError", "BackendError"]


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


class WeightsUnavailableError(ZoolensError):
    """A model's files (pretrained weights, or the config a Hub model is built from) could not
    be downloaded and are not in the library's cache: offline, a firewall, a Hub outage.

    Not an `UnknownModelError`: the model exists and the name is right, so "did you mean"
    advice would mislead; what helps is random weights, a local file, or filling the cache."""


class UserCodeError(InputError):
    """A user's own code (a `file:` zoo module or its factory) failed: a syntax error, or an
    exception raised inside it. The message shows the user's file, line and message only.

    `filename` and `lineno` name the innermost line of the user's file involved."""

    def __init__(self, message: str, filename: str | None = None, lineno: int | None = None):
        super().__init__(message)
        self.filename, self.lineno = filename, lineno


class BackendError(ZoolensError, RuntimeError):
    """A backend cannot run: Ray is not installed, a cluster does not answer, workers failed."""
