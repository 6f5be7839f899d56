"""`zoolens probe`: k-NN, linear, zero-shot and LogME on frozen features, at every layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ._app import (BatchSize, Device, Json, Layers, Models, NoPretrained, Out, Verbose, Workers,
                   app, call, console, emit_json, fail, with_backend)

__all__ = ["probe"]

_SOURCES_HELP = ("folder or URL prefix (s3://bucket/prefix) with one subfolder per class, CSV "
                 "of path,label, or synthetic:scenes?n=64&size=64&seed=0")


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        fail(f"{name} {text!r}: give positive integers, comma-separated, e.g. 10,20")
    return values


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _leaderboard_table(result) -> Table:
    table = Table(title="probe leaderboard (best layer per model and method)")
    for col, justify in (("model", "left"), ("method", "left"), ("best layer", "left"),
                         ("setting", "left"), ("top1", "right"), ("top5", "right"),
                         ("LogME", "right")):
        table.add_column(col, justify=justify, overflow="fold")  # specs are long: wrap
    for b in result.leaderboard():
        table.add_row(b["model"], b["method"], str(b["layer"]), b["setting"], _fmt(b["top1"]),
                      _fmt(b["top5"]), _fmt(b["score"]))
    return table


@app.command()
@with_backend
def probe(model: Models,
          train: Annotated[str, typer.Option("--train", help=f"training images: {_SOURCES_HELP}")],
          test: Annotated[str, typer.Option("--test", help=f"test images: {_SOURCES_HELP}")],
          out: Out, layers: Layers = "blocks",
          method: Annotated[str, typer.Option(
              "--method", help="comma-separated: knn, linear, zeroshot, logme")] = "knn,linear",
          k: Annotated[str, typer.Option("--k", help="k of the k-NN rule, e.g. 10,20")]
          = "10,20,100,200",
          temperature: Annotated[float, typer.Option(help="k-NN vote temperature")] = 0.07,
          pool: Annotated[str, typer.Option(help="mean | cls | both")] = "both",
          val_fraction: Annotated[float, typer.Option(
              help="share of train held out to pick the linear head")] = 0.2,
          seed: Annotated[int, typer.Option(
              help="seeds the validation split, the heads and random weights")] = 0,
          templates: Annotated[Optional[Path], typer.Option(
              help="zero-shot templates file, one per line with {} for the class")] = None,
          n_last_blocks: Annotated[int, typer.Option(
              help="layers concatenated by the last-n linear features")] = 4,
          epochs: Annotated[Optional[int], typer.Option(
              help="linear-head epochs (default: at least 200 SGD steps)")] = None,
          batch_size: BatchSize = 32, device: Device = None, workers: Workers = None,
          dtype: Annotated[str, typer.Option(help="float16 | float32 features on disk")]
          = "float16",
          no_pretrained: NoPretrained = False,
          overwrite: Annotated[bool, typer.Option(help="extract the features again")] = False,
          backend=None, as_json: Json = False, verbose: Verbose = False):
    """How good are each model's frozen features on my labelled images, at every layer?
    k-NN (DINO), linear heads (DINOv2 grid, picked on a validation split of train), zero-shot
    (image-text models) and LogME. Features are extracted once into OUT/features and reused."""
    from ..analyses.probes import probe as run_probe

    ks = _ints(k, "--k")
    with call(verbose=verbose, interrupted=f"extracted features are kept in {out}/features; "
                                           "rerun the same command to resume"):
        result = run_probe(model, train, test, layers=layers, methods=method, out=out, k=ks,
                           temperature=temperature, pool=pool, val_fraction=val_fraction,
                           seed=seed, templates=templates, n_last_blocks=n_last_blocks,
                           linear_options={"epochs": epochs} if epochs else None,
                           pretrained=not no_pretrained, batch_size=batch_size, device=device,
                           num_workers=workers, dtype=dtype, overwrite=overwrite,
                           backend=backend)
    console.print(_leaderboard_table(result))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    n_skipped = sum(len(v) for v in result.skipped.values())
    console.print(f"[green]done:[/] {len(result.results)} result rows -> {out}/probe.json, "
                  f"{out}/probe_curves.png"
                  + (f"; {n_skipped} image(s) skipped (listed in probe.json)" if n_skipped else ""))
    emit_json(result.to_dict(), as_json)
