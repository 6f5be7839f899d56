"""`zoolens compare`: a layer x layer CKA or mutual k-NN matrix between two models (or one model
and itself), written to DIR/compare.json and drawn in DIR/compare.png."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import InputError
from ._app import (SPECS_HELP, BatchSize, Device, Images, Json, Layers, NoPretrained, Out, Store,
                   Verbose, Workers, app, call, console, emit_json, fail, with_backend)

__all__ = ["compare"]


@app.command()
@with_backend
def compare(model: Annotated[list[str], typer.Option(
                "--model", "-m", help=f"one or two specs ({SPECS_HELP}); one spec compares the "
                                      "model with itself")],
            images: Images, out: Out, layers: Layers = "blocks",
            layers_b: Annotated[Optional[str], typer.Option(
                "--layers-b", help="layers of the second model (default: same as --layers)")]
            = None,
            metric: Annotated[str, typer.Option(help="cka | mknn (mutual k-NN alignment)")]
            = "cka",
            k: Annotated[int, typer.Option("--k", "-k", help="neighbours for mknn")] = 10,
            features: Annotated[str, typer.Option(
                help="pooled (exact streaming CKA on mean-pooled features) | flat (whole maps, "
                     "minibatch unbiased CKA)")] = "pooled",
            batch_size: BatchSize = 32,
            seed: Annotated[int, typer.Option(help="random weights' seed, and the shuffled image "
                                                   "order of --features flat")] = 0,
            device: Device = None, workers: Workers = None, store: Store = None,
            no_pretrained: NoPretrained = False, backend=None, as_json: Json = False,
            verbose: Verbose = False):
    """Compare the layers of two models (or of one model with itself) on the same images:
    linear CKA or mutual k-NN alignment, as a matrix and a heatmap."""
    from ..analyses.similarity import compare as run_compare

    if len(model) > 2:
        fail(InputError(f"--model: give one or two models, got {len(model)} ({', '.join(model)})"))
    with call(verbose=verbose):
        result = run_compare(model[0], model[-1], images, layers_a=layers, layers_b=layers_b,
                             metric=metric, k=k, features=features, batch_size=batch_size,
                             seed=seed, device=device, num_workers=workers, store=store,
                             pretrained=not no_pretrained, out=out, backend=backend)
    for s in result.skipped:
        console.print(f"[yellow]skipped[/] {s['id']}: {s['reason']}")
    m = result.array
    console.print(f"[green]done:[/] {result.metric} of {len(result.layers_a)} x "
                  f"{len(result.layers_b)} layers on {result.images} images "
                  f"(range {m.min():.3f}..{m.max():.3f}) -> {out / 'compare.json'}, "
                  f"{out / 'compare.png'}"
                  + (f"; {len(result.skipped)} skipped" if result.skipped else ""))
    emit_json(result.to_dict(), as_json)
