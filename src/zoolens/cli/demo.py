"""`zoolens demo`: the main job on the built-in demo zoo, offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._app import Device, Verbose, app, call, console, with_backend


@app.command()
@with_backend
def demo(out: Annotated[Path, typer.Option("--out", "-o", help="output folder")]
         = Path("zoolens-demo"),
         images: Annotated[int, typer.Option(help="images per analysis")] = 64,
         device: Device = None, backend=None, verbose: Verbose = False):
    """Rosetta mining (generator included), CKA, the probe leaderboard, object discovery and
    out-of-distribution detection on the built-in demo zoo, scored against the scenes' ground
    truth -> OUT/report.html."""
    from ..demo.run import run_demo

    with call(verbose=verbose):
        report = run_demo(out, images=images, device=device, backend=backend)
    summary = json.loads((Path(out) / "demo.json").read_text())
    for row in summary["concept_scores"]:
        console.print(f"concept {row['concept']}: best match [bold]{row['best_match']}[/] "
                      f"(IoU {row['iou']:.2f})")
    disc = summary["discovery"]
    if disc["mean_best_iou"] is not None:
        console.print(f"discovery: mean best IoU with a true object {disc['mean_best_iou']:.2f} "
                      f"over {disc['images']} images")
    for name, best in summary.get("ood", {}).get("best", {}).items():
        console.print(f"ood: {name}: mean AUROC {best['mean_auroc']:.2f} ({best['layer']} "
                      f"{best['method']}; " + ", ".join(f"{s} {v:.2f}"
                                                       for s, v in best["auroc"].items()) + ")")
    console.print(f"[green]done[/] in {summary['seconds']['total']:.0f} s -> {report}")
