"""The Typer app and what every command shares: console, logging, errors, --json output."""

from __future__ import annotations

import json
import logging
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

__all__ = ["app", "console", "setup_logging", "fail", "emit_json", "SPECS_HELP"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Look inside a zoo of pretrained vision models.")
console = Console(stderr=True)
SPECS_HELP = ("timm:resnet50  torchvision:resnet50  open_clip:ViT-B-32/laion2b_s34b_b79k  "
              "hf:facebook/dinov2-small  file:zoo.py:factory")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_time=False, show_path=False)],
                        force=True)


def fail(exc: Exception) -> None:
    """Print one clear line and exit 2 (no traceback for errors the user can fix)."""
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


def emit_json(obj, as_json: bool) -> None:
    """With --json, the command's JSON summary goes to stdout (everything else to stderr)."""
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=1) + "\n")
