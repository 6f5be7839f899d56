"""`zoolens models`, `zoolens layers`, `zoolens extract`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import ZoolensError
from ._app import SPECS_HELP, app, console, emit_json, fail, setup_logging

@app.command()
def models(pattern: str = typer.Argument("", help="glob over specs, e.g. 'timm:vit_small*'")):
    """List model sources, or the models a pattern matches."""
    from ..zoo.registry import list_models, list_sources

    if not pattern:
        console.print("Model sources: " + ", ".join(list_sources()))
        console.print(f"Specs look like: {SPECS_HELP}")
        console.print("List models of a source with a pattern: zoolens models 'timm:resnet*'")
        return
    try:
        for spec in list_models(pattern):
            print(spec)
    except ZoolensError as exc:
        fail(exc)


@app.command()
def layers(spec: str = typer.Argument(..., help=SPECS_HELP),
           select: str = typer.Option("all", "--select", "-s", help="all, blocks, names, globs"),
           no_pretrained: bool = typer.Option(False, "--no-pretrained", help="random weights"),
           as_json: bool = typer.Option(False, "--json", help="print JSON to stdout")):
    """Every tappable layer of a model with its output shape (found by a dry run)."""
    from ..zoo.registry import load

    try:
        model = load(spec, pretrained=not no_pretrained, device="cpu")
        infos = model.layers(select)
    except (ZoolensError, ImportError) as exc:
        fail(exc)
    blocks = set(model.blocks)
    if as_json:
        emit_json({"model": spec, "input_size": list(model.input_size),
                    "blocks": model.blocks, "layers": [i.to_json() for i in infos]}, True)
        return
    table = Table(title=f"{spec}  (input {model.input_size[0]}x{model.input_size[1]})")
    for col in ("layer", "layout", "channels", "grid", "prefix", "stride", "block"):
        table.add_column(col)
    for i in infos:
        table.add_row(i.name, i.layout, str(i.channels),
                      "x".join(map(str, i.grid)) if i.grid else "-", str(i.prefix_tokens or "-"),
                      f"{i.stride:g}" if i.stride else "-", "*" if i.name in blocks else "")
    Console().print(table)


@app.command()
def extract(model: List[str] = typer.Option(..., "--model", "-m", help=SPECS_HELP),
            images: str = typer.Option(..., "--images", "-i",
                                       help="folder, CSV of path,label, .txt of paths, or "
                                            "synthetic:scenes?n=64&size=64&seed=0"),
            layers: str = typer.Option("blocks", "--layers", "-l",
                                       help="all, blocks, blocks[-4:], names or globs, comma-separated"),
            out: Path = typer.Option(..., "--out", "-o", help="folder of the feature store"),
            pool: str = typer.Option("mean", help="mean | cls | none"),
            maps: Optional[str] = typer.Option(None, help="layers kept as full maps too"),
            batch_size: int = typer.Option(32, "--batch-size", "-b"),
            device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 (default: CUDA if present)"),
            dtype: str = typer.Option("float16", help="float16 | float32 on disk"),
            workers: Optional[int] = typer.Option(None, help="decoding workers (default: CPU count, max 8)"),
            amp: bool = typer.Option(False, help="autocast the forward pass"),
            no_pretrained: bool = typer.Option(False, "--no-pretrained", help="random weights"),
            overwrite: bool = typer.Option(False, help="start over instead of resuming"),
            as_json: bool = typer.Option(False, "--json", help="print the summary JSON to stdout"),
            verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Tap the layers of one or more models on the same images and write a feature store.
    Rerun the same command to resume an interrupted run."""
    from ..extract import extract as run_extract

    setup_logging(verbose)
    try:
        store = run_extract(model, images, layers=layers, out=out, pool=pool, maps=maps,
                            batch_size=batch_size, device=device, dtype=dtype,
                            pretrained=not no_pretrained, num_workers=workers, amp=amp,
                            overwrite=overwrite)
    except (ZoolensError, ImportError) as exc:
        fail(exc)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted:[/] finished chunks are kept in {out}; "
                      "rerun the same command to resume")
        raise typer.Exit(130)
    summary = {
        "store": str(out),
        "models": {m: store.layers(m) for m in store.models},
        "images": len(store.ids),
        "extracted": int(store.valid.sum()),
        "skipped": store.skipped,
        "notes": store.manifest.get("notes", []),
        "complete": store.complete,
        "last_run": store.manifest.get("last_run"),
    }
    (Path(out) / "extract.json").write_text(json.dumps(summary, indent=1))
    for s in store.skipped:
        console.print(f"[yellow]skipped[/] {s['id']}: {s['reason']}")
    console.print(f"[green]done:[/] {summary['extracted']} of {summary['images']} images, "
                  f"{sum(len(v) for v in summary['models'].values())} layers from "
                  f"{len(store.models)} model(s) -> {out}"
                  + (f"; {len(store.skipped)} skipped (listed in {out}/extract.json)" if store.skipped else ""))
    emit_json(summary, as_json)
