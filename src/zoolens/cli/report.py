"""`zoolens report`: one self-contained HTML page from the result folders of the other commands."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from ..errors import ZoolensError
from ..report.html import EXPECTED  # light: the page is built without torch or the analyses
from ._app import app, console, emit_json, fail, setup_logging

__all__ = ["report"]


@app.command()
def report(dirs: List[Path] = typer.Argument(..., help="folder(s) of results, searched "
                                                       "recursively (e.g. a demo folder holding "
                                                       "rosetta/, compare/, probe/, discover/)"),
           out: Optional[Path] = typer.Option(None, "--out", "-o",
                                              help="the HTML file (default: DIR/report.html)"),
           title: str = typer.Option("zoolens report", help="the page title"),
           expect: str = typer.Option(",".join(EXPECTED),
                                      help="comma-separated analyses whose absence the page "
                                           "points out ('' for none)"),
           max_images: int = typer.Option(12, help="images shown per discovery / "
                                                   "visualization result"),
           as_json: bool = typer.Option(False, "--json", help="print what was found and every "
                                                              "note as JSON to stdout"),
           verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Build one HTML page (images embedded, no network needed to view it) from the JSON files
    and figures that rosetta, compare, probe, discover, visualize, extract, curate and datasets
    wrote. Missing or unreadable results are pointed out on the page, never fatal."""
    from ..report.html import default_output, render_report

    setup_logging(verbose)
    expected = [x.strip() for x in expect.split(",") if x.strip()]
    try:
        page = render_report(dirs, expected=expected, title=title, max_images=max_images)
        path = page.write(default_output(dirs) if out is None else out)
    except (ZoolensError, OSError) as exc:
        fail(exc)
    for note in page.notes[:20]:
        text = note["text"] if note["text"].startswith(note["where"]) else \
            f"{note['where']}: {note['text']}"
        console.print(f"[yellow]note:[/] {escape(text)}")
    if len(page.notes) > 20:
        console.print(f"[yellow]note:[/] … and {len(page.notes) - 20} more (listed on the page)")
    console.print(f"[green]done:[/] {len(page.found)} result file(s), {len(page.notes)} note(s) "
                  f"-> {path}")
    emit_json({"report": str(path), "found": page.found, "notes": page.notes}, as_json)
