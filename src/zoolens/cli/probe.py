"""`zoolens probe`: k-NN, linear, zero-shot and LogME on frozen features, at every layer."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..errors import ZoolensError
from ._app import SPECS_HELP, app, console, emit_json, fail, setup_logging

__all__ = ["probe"]

_SOURCES_HELP = ("folder with one subfolder per class, CSV of path,label, or "
                 "synthetic:scenes?n=64&size=64&seed=0")


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}",
                                 param_hint=name) from None
    if not values or min(values) < 1:
        raise typer.BadParameter(f"expected positive integers, got {text!r}", param_hint=name)
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
def probe(model: List[str] = typer.Option(..., "--model", "-m", help=SPECS_HELP),
          train: str = typer.Option(..., "--train", help=f"training images: {_SOURCES_HELP}"),
          test: str = typer.Option(..., "--test", help=f"test images: {_SOURCES_HELP}"),
          layers: str = typer.Option("blocks", "--layers", "-l",
                                     help="all, blocks, blocks[-4:], names or globs"),
          method: str = typer.Option("knn,linear", "--method",
                                     help="comma-separated: knn, linear, zeroshot, logme"),
          out: Path = typer.Option(..., "--out", "-o",
                                   help="folder for probe.json, the figure and the features"),
          k: str = typer.Option("10,20,100,200", "--k", help="k of the k-NN rule, e.g. 10,20"),
          temperature: float = typer.Option(0.07, help="k-NN vote temperature"),
          pool: str = typer.Option("both", help="mean | cls | both"),
          val_fraction: float = typer.Option(0.2, help="share of train held out to pick the "
                                                       "linear head"),
          seed: int = typer.Option(0, help="seeds the validation split and the heads"),
          templates: Optional[Path] = typer.Option(None, help="zero-shot templates file, one "
                                                              "per line with {} for the class"),
          n_last_blocks: int = typer.Option(4, help="layers concatenated by the last-n linear "
                                                    "features"),
          epochs: Optional[int] = typer.Option(None, help="linear-head epochs (default: at least "
                                                          "200 SGD steps)"),
          batch_size: int = typer.Option(32, "--batch-size", "-b"),
          device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 (default: CUDA if "
                                                          "present)"),
          workers: Optional[int] = typer.Option(None, help="decoding workers"),
          dtype: str = typer.Option("float16", help="float16 | float32 features on disk"),
          no_pretrained: bool = typer.Option(False, "--no-pretrained", help="random weights"),
          overwrite: bool = typer.Option(False, help="extract the features again"),
          as_json: bool = typer.Option(False, "--json", help="print probe.json to stdout"),
          verbose: bool = typer.Option(False, "--verbose", "-v")):
    """How good are each model's frozen features on my labelled images, at every layer?
    k-NN (DINO), linear heads (DINOv2 grid, picked on a validation split of train), zero-shot
    (image-text models) and LogME. Features are extracted once into OUT/features and reused."""
    from ..analyses.probes.evaluate import probe as run_probe

    setup_logging(verbose)
    ks = _ints(k, "--k")
    try:
        result = run_probe(model, train, test, layers=layers, methods=method, out=out, k=ks,
                           temperature=temperature, pool=pool, val_fraction=val_fraction,
                           seed=seed, templates=templates, n_last_blocks=n_last_blocks,
                           linear_options={"epochs": epochs} if epochs else None,
                           pretrained=not no_pretrained, batch_size=batch_size, device=device,
                           num_workers=workers, dtype=dtype, overwrite=overwrite)
    except (ZoolensError, ImportError) as exc:
        fail(exc)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted:[/] extracted features are kept in {out}/features; "
                      "rerun the same command to resume")
        raise typer.Exit(130)
    console.print(_leaderboard_table(result))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    n_skipped = sum(len(v) for v in result.skipped.values())
    console.print(f"[green]done:[/] {len(result.results)} result rows -> {out}/probe.json, "
                  f"{out}/probe_curves.png"
                  + (f"; {n_skipped} image(s) skipped (listed in probe.json)" if n_skipped else ""))
    emit_json(result.to_dict(), as_json)
