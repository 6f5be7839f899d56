"""`zoolens compare`: a layer x layer CKA or mutual k-NN matrix between two models (or one model
and itself), written to DIR/compare.json and drawn in DIR/compare.png."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError, ZoolensError
from ._app import SPECS_HELP, app, console, emit_json, fail, setup_logging

__all__ = ["compare"]


@app.command()
def compare(model: List[str] = typer.Option(..., "--model", "-m",
                                            help=f"one or two specs ({SPECS_HELP}); one spec "
                                                 "compares the model with itself"),
            images: str = typer.Option(..., "--images", "-i",
                                       help="folder, CSV of path,label, .txt of paths, or "
                                            "synthetic:scenes?n=64&size=64&seed=0"),
            layers: str = typer.Option("blocks", "--layers", "-l",
                                       help="layers of the first model: all, blocks, blocks[-4:], "
                                            "names or globs, comma-separated"),
            layers_b: Optional[str] = typer.Option(None, "--layers-b",
                                                   help="layers of the second model "
                                                        "(default: same as --layers)"),
            metric: str = typer.Option("cka", help="cka | mknn (mutual k-NN alignment)"),
            k: int = typer.Option(10, "--k", "-k", help="neighbours for mknn"),
            features: str = typer.Option("pooled", help="pooled (exact streaming CKA on "
                                                        "mean-pooled features) | flat (whole "
                                                        "maps, minibatch unbiased CKA)"),
            out: Path = typer.Option(..., "--out", "-o", help="folder for compare.json and "
                                                              "compare.png"),
            batch_size: int = typer.Option(32, "--batch-size", "-b",
                                           help="images per batch (the minibatch size for flat)"),
            seed: int = typer.Option(0, help="shuffled image order for --features flat"),
            device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 "
                                                            "(default: CUDA if present)"),
            workers: Optional[int] = typer.Option(None, help="decoding workers "
                                                             "(default: CPU count, max 8)"),
            no_pretrained: bool = typer.Option(False, "--no-pretrained", help="random weights"),
            as_json: bool = typer.Option(False, "--json", help="print compare.json to stdout"),
            verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Compare the layers of two models (or of one model with itself) on the same images:
    linear CKA or mutual k-NN alignment, as a matrix and a heatmap."""
    from ..analyses.compare import compare as run_compare
    from ..analyses.compare import plot_matrix

    setup_logging(verbose)
    try:
        if len(model) > 2:
            raise InputError(f"--model: give one or two models, got {len(model)} ({', '.join(model)})")
        result = run_compare(model[0], model[-1], images, layers_a=layers, layers_b=layers_b,
                             metric=metric, k=k, features=features, batch_size=batch_size,
                             seed=seed, device=device, num_workers=workers,
                             pretrained=not no_pretrained)
    except (ZoolensError, ImportError) as exc:
        fail(exc)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(result.to_json(indent=1))
    figure = plot_matrix(result, out / "compare.png")
    for s in result.skipped:
        console.print(f"[yellow]skipped[/] {s['id']}: {s['reason']}")
    m = result.array
    console.print(f"[green]done:[/] {result.metric} of {len(result.layers_a)} x "
                  f"{len(result.layers_b)} layers on {result.images} images "
                  f"(range {m.min():.3f}..{m.max():.3f}) -> {out / 'compare.json'}, {figure}"
                  + (f"; {len(result.skipped)} skipped" if result.skipped else ""))
    emit_json(result.to_dict(), as_json)
