"""The `zoolens` command: one module per command group, each only parsing, calling the library
and printing."""

from ._app import app
from . import compare, discover, extract, probe, rosetta  # noqa: F401  (each registers commands)

__all__ = ["app"]


def main() -> None:  # pragma: no cover
    app()
