"""`zoolens ood`: which images are out of distribution, scored by every model, layer and
method, with the best choice and its deployment threshold."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer
from rich.table import Table

from ._app import (BatchSize, Device, Json, Layers, Models, NoPretrained, Out, Seed, Verbose,
                   Workers, _at_least, app, call, console, emit_json, fail, with_backend)

__all__ = ["ood"]

_SOURCES_HELP = ("a folder, URL (s3://bucket/prefix), CSV of path,label, .txt of paths, or "
                 "synthetic:scenes?n=64&seed=0")


def _best_table(result) -> Table:
    sets = list(result.settings.get("ood", {}))
    table = Table(title="best layer per model and method (AUROC, OOD positive)")
    for col in ("model", "method", "best layer", "mean AUROC", *sets):
        table.add_column(col, justify="left" if col in ("model", "method", "best layer")
                         else "right", overflow="fold")  # specs are long: wrap
    for b in result.best_layers():
        table.add_row(b["model"], b["method"], str(b["layer"]), f"{b['mean_auroc']:.3f}",
                      *(f"{b['auroc'][s]:.3f}" if s in b["auroc"] else "-" for s in sets))
    return table


@app.command()
@with_backend
def ood(model: Models,
        train: Annotated[str, typer.Option(
            "--train", help=f"in-distribution training images: {_SOURCES_HELP} (class folders "
                            "or labels let Mahalanobis fit one Gaussian per class)")],
        id_test: Annotated[str, typer.Option(
            "--id", help=f"in-distribution test images: {_SOURCES_HELP}")],
        ood_sets: Annotated[List[str], typer.Option(
            "--ood", help=f"out-of-distribution images: {_SOURCES_HELP}; repeat for several "
                          "sets; NAME=SOURCE names one (default: its folder name)")],
        out: Out, layers: Layers = "blocks",
        methods: Annotated[str, typer.Option(
            "--methods", help="all, or comma-separated: knn, mahalanobis, rmds, feature_norm, "
                              "negative_aware_norm, energy, msp, max_logit, vim")] = "all",
        k: Annotated[int, typer.Option(
            callback=_at_least("--k", 1, "the k-NN's k is a positive integer"),
            help="k-NN: the k-th nearest training image's distance is the score")] = 50,
        vim_dim: Annotated[Optional[int], typer.Option(
            callback=_at_least("--vim-dim", 1, "give a positive dimension"),
            help="ViM principal subspace dimension (default: 1000 / 512 / width/2 by width)")]
        = None,
        keep: Annotated[float, typer.Option(
            help="share of in-distribution test images the deployment threshold keeps")] = 0.95,
        batch_size: BatchSize = 32, device: Device = None, workers: Workers = None,
        dtype: Annotated[str, typer.Option(help="float16 | float32 features on disk")]
        = "float16",
        no_pretrained: NoPretrained = False,
        seed: Seed = 0,
        overwrite: Annotated[bool, typer.Option(help="extract the features again")] = False,
        backend=None, as_json: Json = False, verbose: Verbose = False):
    """Which images are out of distribution? Every model, layer and method (k-NN,
    Mahalanobis, RMDS, feature norms; energy, MSP, max logit and ViM for classifiers) scored
    by AUROC, AUPR and FPR@95 on each OOD set; the best choice and a threshold keeping 95% of
    the in-distribution test images. Features are extracted once into OUT/features."""
    from ..analyses.ood import evaluate as run_ood
    from ..analyses.ood.evaluation import check_methods
    from ..errors import InputError

    try:  # before any model loads: one line naming the flag
        chosen = check_methods(methods, name="--methods")
    except InputError as exc:
        fail(exc)
    if not 0.0 < keep <= 1.0:
        fail(f"--keep {keep}: give a share in (0, 1], e.g. 0.95")
    with call(verbose=verbose, interrupted=f"extracted features are kept in {out}/features; "
                                           "rerun the same command to resume"):
        result = run_ood(model, train, id_test, list(ood_sets), layers=layers, methods=chosen,
                         k=k, vim_dim=vim_dim, keep=keep, out=out,
                         pretrained=not no_pretrained, seed=seed, batch_size=batch_size,
                         device=device, num_workers=workers, dtype=dtype, overwrite=overwrite,
                         backend=backend)
    console.print(_best_table(result))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    b = result.best
    flagged = ", ".join(f"{n} {v:.0%}" for n, v in b["flagged"].items())
    console.print(f"[green]best:[/] {b['model']} {b['layer']} {b['method']} (mean AUROC "
                  f"{b['mean_auroc']:.3f}); an image with confidence < {b['threshold']:.4g} is "
                  f"flagged OOD ({b['id_kept']:.0%} of the ID test images pass; flagged: "
                  f"{flagged})", highlight=False)
    n_skipped = (len(result.skipped["train"]) + len(result.skipped["id"])
                 + sum(len(v) for v in result.skipped["ood"].values()))
    console.print(f"[green]done:[/] {len(result.results)} result rows -> {out}/ood.json"
                  + (f"; {n_skipped} image(s) skipped (listed in ood.json)" if n_skipped else ""),
                  highlight=False)
    emit_json(result.to_dict(), as_json)
