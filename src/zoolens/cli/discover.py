"""`zoolens discover` (MaskCut object masks) and `zoolens visualize` (PCA colours, attention)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ._app import (SPECS_HELP, BatchSize, Device, Images, Json, NoPretrained, Out, Seed,
                   Verbose, Workers, app, call, console, emit_json, with_backend)

Model = Annotated[str, typer.Option("--model", "-m", help=SPECS_HELP)]
Layer = Annotated[Optional[str], typer.Option("--layer", "-l",
                                              help="module path (default: the last block)")]


@app.command()
@with_backend
def discover(model: Model, images: Images, out: Out, layer: Layer = None,
             features: Annotated[str, typer.Option(help="keys (TokenCut's choice) | tokens")]
             = "keys",
             objects: Annotated[int, typer.Option("--objects", "-n",
                                                  help="objects per image, at most")] = 3,
             tau: Annotated[float, typer.Option(help="cosine threshold of the affinity graph")]
             = 0.2,
             eps: Annotated[float, typer.Option(help="weight of the affinities below tau")]
             = 1e-5,
             batch_size: BatchSize = 16, device: Device = None, workers: Workers = None,
             no_pretrained: NoPretrained = False, seed: Seed = 0, backend=None,
             as_json: Json = False,
             verbose: Verbose = False):
    """Find up to N objects per image without labels (TokenCut / MaskCut on patch features):
    one PNG mask per object, an overlay per image, and DIR/discover.json."""
    import json

    from ..analyses.discovery import discover as run_discover

    with call(verbose=verbose, interrupted=f"the masks written so far are listed in "
                                           f"{out}/discover.json"):
        found = run_discover(model, images, layer=layer, features=features, objects=objects,
                             tau=tau, eps=eps, batch_size=batch_size, device=device,
                             num_workers=workers, pretrained=not no_pretrained, seed=seed,
                             out=out, backend=backend)
    summary = json.loads((out / "discover.json").read_text())
    for s in summary["skipped"]:
        console.print(f"[yellow]skipped[/] {s['id']}: {s['reason']}")
    for n in summary["notes"]:
        console.print(f"[yellow]note:[/] {n}")
    console.print(f"[green]done:[/] {sum(len(r) for r in found)} masks in "
                  f"{len(summary['images'])} images ({summary['feature']} of {summary['layer']}) "
                  f"-> {out}" + (f"; {len(summary['skipped'])} skipped" if summary["skipped"]
                                 else ""))
    emit_json(summary, as_json)


@app.command()
@with_backend
def visualize(model: Model, images: Images, out: Out,
              kind: Annotated[str, typer.Option("--kind", "-k", help="pca | attention")] = "pca",
              layer: Layer = None,
              features: Annotated[str, typer.Option(help="pca of: tokens | keys")] = "tokens",
              threshold: Annotated[Optional[float], typer.Option(
                  help="pca: foreground threshold in [0, 1] on the first component (default: "
                       "its mean)")] = None,
              batch_size: BatchSize = 16, device: Device = None, workers: Workers = None,
              no_pretrained: NoPretrained = False, seed: Seed = 0, backend=None,
              as_json: Json = False,
              verbose: Verbose = False):
    """Picture what a model sees per patch: PCA colours fitted jointly over the images (DINOv2's
    figure) or the class token's attention per head (ViTs). Writes one PNG per image
    (the image, then the picture(s)), visualize.json and the arrays in visualize.npz."""
    import json

    from ..analyses.discovery import visualize as run_visualize

    with call(verbose=verbose):
        vis = run_visualize(model, images, kind=kind, layer=layer, features=features,
                            threshold=threshold, batch_size=batch_size, device=device,
                            num_workers=workers, pretrained=not no_pretrained, seed=seed,
                            out=out, backend=backend)
    summary = json.loads((out / "visualize.json").read_text())
    for s in summary["skipped"]:
        console.print(f"[yellow]skipped[/] {s['id']}: {s['reason']}")
    console.print(f"[green]done:[/] {kind} of {vis.layer} for {len(vis)} images -> {out}"
                  + (f"; {len(summary['skipped'])} skipped" if summary["skipped"] else ""))
    emit_json(summary, as_json)
