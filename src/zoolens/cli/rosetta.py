"""`zoolens rosetta`: mine units shared by the models of a zoo."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from ._app import (BatchSize, Device, Json, Layers, Models, NoPretrained, Out, Store, Verbose,
                   Workers, app, call, console, emit_json, parse_bytes, with_backend)


@app.command()
@with_backend
def rosetta(model: Models, out: Out,
            images: Annotated[Optional[str], typer.Option(
                "--images", "-i", help="folder, URL, CSV, or synthetic:scenes?n=64")] = None,
            generator: Annotated[Optional[str], typer.Option(
                help="latent -> image model (file:gan.py:make); it joins the zoo")] = None,
            n: Annotated[int, typer.Option("--n", help="images to sample from --generator")] = 64,
            seed: Annotated[int, typer.Option(help="seed of random weights and of the "
                                                   "--generator's latents")] = 0,
            layers: Layers = "blocks",
            resolution: Annotated[Optional[int], typer.Option(
                help="common grid (default: the largest tapped grid, at most 32)")] = None,
            anchor: Annotated[Optional[str], typer.Option(
                help="model the sets are built around (default: the generator, else the first "
                     "model)")] = None,
            relaxed: Annotated[bool, typer.Option(
                help="relaxed best buddies (top-1 one way, top-k the other)")] = False,
            k: Annotated[int, typer.Option(help="k of relaxed best buddies")] = 5,
            pairwise: Annotated[bool, typer.Option(
                help="sets must be pairwise best buddies too")] = False,
            min_correlation: Annotated[Optional[float], typer.Option(
                help="drop weaker pairs")] = None,
            concepts: Annotated[int, typer.Option(
                help="number of concepts to cluster the sets into")] = 8,
            max_memory: Annotated[str, typer.Option(
                help="budget for correlation tables, e.g. 4GiB")] = "4GiB",
            batch_size: BatchSize = 32, device: Device = None, workers: Workers = None,
            store: Store = None, no_pretrained: NoPretrained = False, backend=None,
            as_json: Json = False, verbose: Verbose = False):
    """Rosetta neurons: units of different models that encode the same concept, by Pearson
    correlation over images and positions, mutual best buddies, and clustering."""
    from ..analyses.rosetta import rosetta as mine

    budget = parse_bytes(max_memory)
    with call(verbose=verbose, interrupted=f"checkpoints kept in {out}/state; rerun to resume"):
        result = mine(model, images, generator=generator, n_generated=n, seed=seed, layers=layers,
                      resolution=resolution, anchor=anchor, mode="relaxed" if relaxed else "strict",
                      k=k, pairwise=pairwise, min_correlation=min_correlation, concepts=concepts,
                      max_memory=budget, batch_size=batch_size, device=device, store=store,
                      pretrained=not no_pretrained, num_workers=workers, out=out,
                      backend=backend)
    table = Table(title=f"Rosetta sets ({len(result.sets)}) over {result.images} images at "
                        f"{result.resolution[0]}x{result.resolution[1]}")
    table.add_column("r", justify="right")
    for name in result.models:
        table.add_column(name[-30:], overflow="fold")
    for s in result.sets[:15]:
        table.add_row(f"{s['mean_correlation']:.3f}", *[u.rsplit("/", 1)[-1] for u in s["units"]])
    console.print(table)
    console.print(f"[green]done:[/] {len(result.sets)} sets, {len(result.concepts)} concepts -> "
                  f"{out}/rosetta.json" + (f", figures in {out}/concepts" if result.concepts else ""))
    emit_json(result.to_dict(), as_json)
