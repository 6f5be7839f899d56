"""The `zoolens` command: one module per command group, each only parsing, calling the library
and printing."""

from ._app import app
from . import extract  # noqa: F401  (registers models, layers, extract)

__all__ = ["app"]


def main() -> None:  # pragma: no cover
    app()
