"""`zoolens demo`: the main job on the built-in demo zoo, offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import ZoolensError
from ._app import app, console, fail, setup_logging


@app.command()
def demo(out: Path = typer.Option(Path("zoolens-demo"), "--out", "-o"),
         images: int = typer.Option(64, help="images per analysis"),
         device: Optional[str] = typer.Option(None),
         verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Rosetta mining (generator included), CKA, the probe leaderboard and object discovery on
    the built-in demo zoo, scored against the scenes' ground truth -> OUT/report.html."""
    from ..demo.run import run_demo

    setup_logging(verbose)
    try:
        report = run_demo(out, images=images, device=device)
    except (ZoolensError, ImportError, FileNotFoundError) as exc:
        fail(exc)
    summary = json.loads((Path(out) / "demo.json").read_text())
    for row in summary["concept_scores"]:
        console.print(f"concept {row['concept']}: best match [bold]{row['best_match']}[/] "
                      f"(IoU {row['iou']:.2f})")
    disc = summary["discovery"]
    if disc["mean_best_iou"] is not None:
        console.print(f"discovery: mean best IoU with a true object {disc['mean_best_iou']:.2f} "
                      f"over {disc['images']} images")
    console.print(f"[green]done[/] in {summary['seconds']['total']:.0f} s -> {report}")
