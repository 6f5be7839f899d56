"""The `zoolens` command: one module per command group, each only parsing, calling the library
and printing."""

from ._app import app
from . import compare, demo, discover, extract, probe, report, rosetta  # noqa: F401  (registers commands)

__all__ = ["app"]


def main() -> None:  # pragma: no cover
    app()
