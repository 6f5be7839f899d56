"""The `zoolens` command: one module per command group, each only parsing, calling the library
and printing; analyses whose options are their function's parameters are one line each."""

from ..analyses.layerstats import layerstats
from ._app import app, command
from . import compare, curate, demo, discover, extract, ood, probe, report, rosetta  # noqa: F401  (registers commands)

command(layerstats)

__all__ = ["app"]


def main() -> None:  # pragma: no cover
    app()
