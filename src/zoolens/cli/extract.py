"""`zoolens models`, `zoolens layers`, `zoolens extract`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ._app import (SPECS_HELP, BatchSize, Device, Images, Json, Layers, Models, NoPretrained, Out,
                   Seed, Verbose, Workers, app, call, console, emit_json, with_backend)


@app.command()
def models(pattern: Annotated[str, typer.Argument(help="glob over specs, e.g. 'timm:vit_small*'")]
           = ""):
    """List model sources, or the models a pattern matches."""
    from ..zoo.registry import list_models, list_sources

    if not pattern:
        console.print("Model sources: " + ", ".join(list_sources()))
        console.print(f"Specs look like: {SPECS_HELP}")
        console.print("List models of a source with a pattern: zoolens models 'timm:resnet*'")
        return
    with call():
        found = list_models(pattern)
    for spec in found:
        print(spec)
    if not found:
        console.print(f"no model matches {pattern!r}; try a glob such as 'timm:resnet*'")


@app.command()
def layers(spec: Annotated[str, typer.Argument(help=SPECS_HELP)],
           select: Annotated[str, typer.Option("--select", "-s", help="all, blocks, names, globs")]
           = "all",
           no_pretrained: NoPretrained = False, as_json: Json = False):
    """Every tappable layer of a model with its output shape (found by a dry run)."""
    from ..zoo.registry import load

    with call():
        model = load(spec, pretrained=not no_pretrained, device="cpu")
        infos = model.layers(select)
    blocks = set(model.blocks)
    if as_json:
        emit_json({"model": spec, "input_size": list(model.input_size),
                   "blocks": model.blocks, "layers": [i.to_json() for i in infos]}, True)
        return
    table = Table(title=f"{spec}  (input {model.input_size[0]}x{model.input_size[1]})")
    table.add_column("layer", overflow="fold")  # long module paths wrap, never truncate
    for col in ("layout", "channels", "grid", "prefix", "stride", "block"):
        table.add_column(col, no_wrap=True)
    for i in infos:
        table.add_row(i.name, i.layout, str(i.channels),
                      "x".join(map(str, i.grid)) if i.grid else "-", str(i.prefix_tokens or "-"),
                      f"{i.stride:g}" if i.stride else "-", "*" if i.name in blocks else "")
    Console().print(table)


@app.command()
@with_backend
def extract(model: Models, images: Images, out: Out, layers: Layers = "blocks",
            pool: Annotated[str, typer.Option(help="mean | cls | none")] = "mean",
            maps: Annotated[Optional[str], typer.Option(help="layers kept as full maps too")]
            = None,
            batch_size: BatchSize = 32,
            chunk_size: Annotated[Optional[int], typer.Option(
                help="images between checkpoints, a multiple of --batch-size (default: about "
                     "256, fewer for small runs)")] = None,
            device: Device = None,
            dtype: Annotated[str, typer.Option(help="float16 | float32 on disk")] = "float16",
            workers: Workers = None,
            amp: Annotated[bool, typer.Option(help="autocast the forward pass")] = False,
            no_pretrained: NoPretrained = False, seed: Seed = 0,
            overwrite: Annotated[bool, typer.Option(help="start over instead of resuming")] = False,
            backend=None, as_json: Json = False, verbose: Verbose = False):
    """Tap the layers of one or more models on the same images and write a feature store.
    Rerun the same command to resume an interrupted run."""
    from ..extraction import extract as run_extract
    from ..extraction import summarize

    with call(verbose=verbose, interrupted=f"finished chunks are kept in {out}; rerun the same "
                                           "command to resume"):
        store = run_extract(model, images, layers=layers, out=out, pool=pool, maps=maps,
                            batch_size=batch_size, device=device, dtype=dtype,
                            pretrained=not no_pretrained, seed=seed, num_workers=workers,
                            amp=amp, chunk_size=chunk_size, overwrite=overwrite,
                            backend=backend)
    summary = summarize(store)
    for s in store.skipped:
        console.print(f"[yellow]skipped[/] {s['id']}: {s['reason']}")
    # files never listed as images (wrong extension) count too, so the numbers add up
    seen = summary["images"] + sum(1 for s in store.skipped if "index" not in s)
    console.print(f"[green]done:[/] {summary['extracted']} of {seen} files, "
                  f"{sum(len(v) for v in summary['models'].values())} layers from "
                  f"{len(store.models)} model(s) -> {out}"
                  + (f"; {len(store.skipped)} skipped (listed in {out}/extract.json)"
                     if store.skipped else ""))
    emit_json(summary, as_json)
