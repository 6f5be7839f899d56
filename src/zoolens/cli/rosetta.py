"""`zoolens rosetta`: mine units shared by the models of a zoo."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..errors import ZoolensError
from ._app import SPECS_HELP, app, console, emit_json, fail, setup_logging


def _bytes(text: str) -> float:
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = text.strip().lower().rstrip("ib").rstrip("b")
    return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)


@app.command()
def rosetta(model: List[str] = typer.Option(..., "--model", "-m", help=SPECS_HELP),
            images: Optional[str] = typer.Option(None, "--images", "-i",
                                                 help="folder, CSV, or synthetic:scenes?n=64"),
            generator: Optional[str] = typer.Option(None, help="latent -> image model "
                                                    "(file:gan.py:make); it joins the zoo"),
            n: int = typer.Option(64, "--n", help="images to sample from --generator"),
            seed: int = typer.Option(0, help="latent seed for --generator"),
            layers: str = typer.Option("blocks", "--layers", "-l"),
            out: Path = typer.Option(..., "--out", "-o"),
            resolution: Optional[int] = typer.Option(None, help="common grid (default: the largest "
                                                     "tapped grid, at most 32)"),
            anchor: Optional[str] = typer.Option(None, help="model the sets are built around "
                                                 "(default: the generator, else the first model)"),
            relaxed: bool = typer.Option(False, help="relaxed best buddies (top-1 one way, "
                                         "top-k the other)"),
            k: int = typer.Option(5, help="k of relaxed best buddies"),
            pairwise: bool = typer.Option(False, help="sets must be pairwise best buddies too"),
            min_correlation: Optional[float] = typer.Option(None, help="drop weaker pairs"),
            concepts: int = typer.Option(8, help="number of concepts to cluster the sets into"),
            max_memory: str = typer.Option("4GiB", help="budget for correlation tables"),
            batch_size: int = typer.Option(32, "--batch-size", "-b"),
            device: Optional[str] = typer.Option(None),
            workers: Optional[int] = typer.Option(None),
            no_pretrained: bool = typer.Option(False, "--no-pretrained"),
            as_json: bool = typer.Option(False, "--json"),
            verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Rosetta neurons: units of different models that encode the same concept, by Pearson
    correlation over images and positions, mutual best buddies, and clustering."""
    from ..analyses.rosetta_mining import rosetta as mine

    setup_logging(verbose)
    try:
        result = mine(model, images, generator=generator, n_generated=n, seed=seed, layers=layers,
                      resolution=resolution, anchor=anchor, mode="relaxed" if relaxed else "strict",
                      k=k, pairwise=pairwise, min_correlation=min_correlation, concepts=concepts,
                      max_memory=_bytes(max_memory), batch_size=batch_size, device=device,
                      pretrained=not no_pretrained, num_workers=workers, out=out)
    except (ZoolensError, ImportError, ValueError) as exc:
        fail(exc)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted:[/] checkpoints kept in {out}/state; rerun to resume")
        raise typer.Exit(130)
    table = Table(title=f"Rosetta sets ({len(result.sets)}) over {result.images} images at "
                        f"{result.resolution[0]}x{result.resolution[1]}")
    table.add_column("r", justify="right")
    for name in result.models:
        table.add_column(name[-30:])
    for s in result.sets[:15]:
        table.add_row(f"{s['mean_correlation']:.3f}", *[u.rsplit("/", 1)[-1] for u in s["units"]])
    console.print(table)
    console.print(f"[green]done:[/] {len(result.sets)} sets, {len(result.concepts)} concepts -> "
                  f"{out}/rosetta.json" + (f", figures in {out}/concepts" if result.concepts else ""))
    emit_json(result.to_dict(), as_json)
