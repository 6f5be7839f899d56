"""`zoolens discover` (MaskCut object masks) and `zoolens visualize` (PCA colours, attention)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from ..errors import ZoolensError
from ..analyses.objects import _save_png
from ._app import SPECS_HELP, app, console, emit_json, fail, setup_logging

_IMAGES_HELP = "folder, CSV of path,label, .txt of paths, or synthetic:scenes?n=16&size=64&seed=0"
# Mask colours of the overlays (object 1, 2, ...), cycled.


def _load(spec: str, no_pretrained: bool, device: Optional[str]):
    from ..zoo.registry import load

    return load(spec, pretrained=not no_pretrained, device=device)


def _workers(workers: Optional[int]) -> int:
    from ..engine import default_workers

    return default_workers() if workers is None else workers


@app.command()
def discover(model: str = typer.Option(..., "--model", "-m", help=SPECS_HELP),
             images: str = typer.Option(..., "--images", "-i", help=_IMAGES_HELP),
             out: Path = typer.Option(..., "--out", "-o", help="folder for masks, overlays and "
                                                             "discover.json"),
             layer: Optional[str] = typer.Option(None, "--layer", "-l",
                                                 help="module path (default: the last block)"),
             features: str = typer.Option("keys", help="keys (TokenCut's choice) | tokens"),
             objects: int = typer.Option(3, "--objects", "-n", help="objects per image, at most"),
             tau: float = typer.Option(0.2, help="cosine threshold of the affinity graph"),
             eps: float = typer.Option(1e-5, help="weight of the affinities below tau"),
             batch_size: int = typer.Option(16, "--batch-size", "-b"),
             device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 (default: CUDA if present)"),
             workers: Optional[int] = typer.Option(None, help="decoding workers (default: CPU count, max 8)"),
             no_pretrained: bool = typer.Option(False, "--no-pretrained", help="random weights"),
             as_json: bool = typer.Option(False, "--json", help="print discover.json to stdout"),
             verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Find up to N objects per image without labels (TokenCut / MaskCut on patch features):
    one PNG mask per object, an overlay per image, and DIR/discover.json."""
    from ..analyses.objects import write_discovery

    setup_logging(verbose)
    out = Path(out)
    try:
        net = _load(model, no_pretrained, device)
        summary = write_discovery(net, images, out, layer=layer, features=features,
                                  objects=objects, tau=tau, eps=eps, batch_size=batch_size,
                                  num_workers=_workers(workers), progress=True)
    except (ZoolensError, ImportError) as exc:
        fail(exc)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted:[/] the masks written so far are listed in "
                      f"{out}/discover.json")
        raise typer.Exit(130)
    n_masks = sum(len(i["masks"]) for i in summary["images"])
    for s in summary["skipped"]:
        console.print(f"[yellow]skipped[/] {s['id']}: {s['reason']}")
    for n in summary["notes"]:
        console.print(f"[yellow]note:[/] {n}")
    console.print(f"[green]done:[/] {n_masks} masks in {len(summary['images'])} images "
                  f"({summary['feature']} of {summary['layer']}) -> {out}"
                  + (f"; {len(summary['skipped'])} skipped" if summary["skipped"] else ""))
    emit_json(summary, as_json)


def _colormap(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(H, W) floats -> (H, W, 3) uint8 through viridis, [lo, hi] spanning the colours."""
    import matplotlib

    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    return (matplotlib.colormaps["viridis"](scaled)[..., :3] * 255).astype(np.uint8)


@app.command()
def visualize(model: str = typer.Option(..., "--model", "-m", help=SPECS_HELP),
              images: str = typer.Option(..., "--images", "-i", help=_IMAGES_HELP),
              out: Path = typer.Option(..., "--out", "-o", help="folder for the PNGs and "
                                                              "visualize.json"),
              kind: str = typer.Option("pca", "--kind", "-k", help="pca | attention"),
              layer: Optional[str] = typer.Option(None, "--layer", "-l",
                                                  help="module path (default: the last block)"),
              features: str = typer.Option("tokens", help="pca of: tokens | keys"),
              threshold: Optional[float] = typer.Option(None, help="pca: foreground threshold in "
                                                        "[0, 1] on the first component (default: "
                                                        "its mean)"),
              batch_size: int = typer.Option(16, "--batch-size", "-b"),
              device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 (default: CUDA if present)"),
              workers: Optional[int] = typer.Option(None, help="decoding workers (default: CPU count, max 8)"),
              no_pretrained: bool = typer.Option(False, "--no-pretrained", help="random weights"),
              as_json: bool = typer.Option(False, "--json", help="print visualize.json to stdout"),
              verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Picture what a model sees per patch: PCA colours fitted jointly over the images (DINOv2's
    figure) or the class token's attention per head (ViTs). Writes one PNG per image
    (the image, then the picture(s)), visualize.json and the arrays in visualize.npz."""
    from ..analyses.objects import _safe_name
    from ..analyses.visualize import visualize as run_visualize
    from ..sources import open_source

    setup_logging(verbose)
    out = Path(out)
    try:
        net = _load(model, no_pretrained, device)
        source = open_source(images)
        vis = run_visualize(net, source, kind=kind, layer=layer, features=features,
                            threshold=threshold, batch_size=batch_size,
                            num_workers=_workers(workers), progress=True)
    except (ZoolensError, ImportError) as exc:
        fail(exc)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for n, (i, id_) in enumerate(zip(vis.indices, vis.ids)):
        rel = f"{kind}/{_safe_name(id_, i)}.png"
        image = np.asarray(source.decode(i).image)
        picture = vis.at_image(n)
        if kind == "pca":
            panels = [image, (picture * 255).round().astype(np.uint8)]
        else:
            # each head on its own range (DINO's figures), taken on the patch grid: the black
            # border outside the model's input does not stretch the colours
            grid_maps = vis.attention[n]
            panels = [image] + [_colormap(a, float(g.min()), float(g.max()))
                                for a, g in zip(picture, grid_maps)]
        _save_png(np.concatenate(panels, axis=1), out / rel)
        entry = {"id": id_, "index": i, "size": list(vis.sizes[n]), "file": rel}
        if kind == "pca":
            entry["foreground_patches"] = int(vis.foreground[n].sum())
        entries.append(entry)
    summary = {"model": model, "kind": kind, "layer": vis.layer, "feature": vis.feature,
               "grid": list(vis.grid), "input_size": list(vis.input_size),
               "threshold": vis.threshold, "heads": vis.heads, "notes": vis.notes,
               "arrays": "visualize.npz", "images": entries,
               "skipped": [dict(x) for x in source.skipped_at_listing] + vis.skipped}
    arrays = {"rgb": vis.rgb, "foreground": vis.foreground} if kind == "pca" \
        else {"attention": vis.attention}
    np.savez_compressed(out / "visualize.npz", ids=np.array(vis.ids), **arrays)
    (out / "visualize.json").write_text(json.dumps(summary, indent=1))
    for s in summary["skipped"]:
        console.print(f"[yellow]skipped[/] {s['id']}: {s['reason']}")
    console.print(f"[green]done:[/] {kind} of {vis.layer} for {len(entries)} images -> {out}"
                  + (f"; {len(summary['skipped'])} skipped" if summary["skipped"] else ""))
    emit_json(summary, as_json)
