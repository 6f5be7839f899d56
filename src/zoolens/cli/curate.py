"""`zoolens curate dedup|sample|retrieve|prototypes` and `zoolens datasets compare`: DINOv2's
data curation steps, and a comparison of two image sets, on the features of one model.

Each command only parses and calls its function in `zoolens.analyses.curate.commands`; the
function checks every setting (one line naming the flag, exit 2) before a model is loaded or a
file is written."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import (IMAGES_HELP, SPECS_HELP, BatchSize, Device, Images, Json, NoPretrained, Out,
                   Seed, Store, Verbose, Workers, app, call, console, emit_json, with_backend)

__all__ = ["curate_app", "datasets_app"]

curate_app = typer.Typer(no_args_is_help=True, help="DINOv2's data curation on your images: "
                         "near-duplicates, balanced sampling, retrieval, prototypes.")
datasets_app = typer.Typer(no_args_is_help=True, help="How two image sets differ.")
app.add_typer(curate_app, name="curate")
app.add_typer(datasets_app, name="datasets")

# the options every curate command shares
Model = Annotated[str, typer.Option("--model", "-m", help=f"one model: {SPECS_HELP}")]
Layer = Annotated[Optional[str], typer.Option(
    "--layer", "-l", help="embedding layer (default: a classifier's penultimate features, else "
                          "the model's output, else its last block)")]
Pool = Annotated[str, typer.Option(help="mean (of the map or patch tokens) | cls")]
Subset = Annotated[Optional[Path], typer.Option(
    help="a CSV of ids (e.g. OUT/dedup/keep.csv): use only those images")]
Dtype = Annotated[str, typer.Option(help="float32 | float16 features on disk")]
Overwrite = Annotated[bool, typer.Option(help="extract the features again")]
NoSheet = Annotated[bool, typer.Option("--no-sheet", help="draw no contact sheet")]
Euclidean = Annotated[bool, typer.Option(
    "--euclidean", help="cluster by Euclidean distance instead of cosine similarity")]
_INTERRUPTED = "extracted features are kept in {out}/features; rerun the same command to resume"


def _extraction(batch_size, device, workers, no_pretrained, seed, dtype, overwrite) -> dict:
    return dict(batch_size=batch_size, device=device, num_workers=workers,
                pretrained=not no_pretrained, seed=seed, dtype=dtype, overwrite=overwrite)


def _report(result, folder: Path, as_json: bool) -> None:
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    files = ", ".join(f for k, f in result.files.items() if k != "json")
    console.print(f"[green]done:[/] {result.summary()} -> {folder / result.files['json']}"
                  + (f" ({files})" if files else ""))
    emit_json(result.to_dict(), as_json)


@curate_app.command("dedup")
@with_backend
def dedup(model: Model, images: Images, out: Out,
          threshold: Annotated[float, typer.Option(
              help="cosine similarity above which two images are duplicates (depends on the "
                   "features: about 0.9 for generic embeddings; DINOv2 used 0.6 with "
                   "copy-detection features)")] = 0.9,
          keep: Annotated[str, typer.Option(
              help="which image a group keeps: centroid | first | resolution")] = "centroid",
          reference: Annotated[Optional[str], typer.Option(
              help=f"reference images (e.g. an evaluation set): groups touching them are "
                   f"removed whole; {IMAGES_HELP}")] = None,
          reference_threshold: Annotated[Optional[float], typer.Option(
              help="cosine threshold against --reference (default --threshold; DINOv2: "
                   "0.45)")] = None,
          max_neighbors: Annotated[Optional[int], typer.Option(
              help="link each image to its k most similar only (DINOv2: 64)")] = None,
          layer: Layer = None, pool: Pool = "mean", subset: Subset = None,
          store: Store = None,
          reference_store: Annotated[Optional[Path], typer.Option(
              help="a feature store of the --reference images")] = None,
          batch_size: BatchSize = 32, device: Device = None, workers: Workers = None,
          no_pretrained: NoPretrained = False, seed: Seed = 0, dtype: Dtype = "float32",
          overwrite: Overwrite = False, no_sheet: NoSheet = False, backend=None,
          as_json: Json = False, verbose: Verbose = False):
    """Near-duplicate groups, exactly (every pair above --threshold), one image kept per group;
    writes OUT/dedup/: curate.json, keep.csv, removed.csv, groups.csv, dedup.png."""
    from ..analyses.curate import dedup as run

    with call(verbose=verbose, interrupted=_INTERRUPTED.format(out=out)):
        result = run(model, images, threshold=threshold, keep=keep, reference=reference,
                     reference_threshold=reference_threshold, max_neighbors=max_neighbors,
                     layer=layer, pool=pool, subset=subset, out=out, store=store,
                     reference_store=reference_store, sheet=not no_sheet,
                     backend=backend, **_extraction(batch_size, device, workers, no_pretrained,
                                                    seed, dtype, overwrite))
    _report(result, out / "dedup", as_json)


@curate_app.command("sample")
@with_backend
def sample(model: Model, images: Images, out: Out,
           budget: Annotated[int, typer.Option(help="how many images to draw")],
           levels: Annotated[Optional[str], typer.Option(
               help="clusters per level of the hierarchical k-means, bottom first, e.g. "
                    "1000,100 (default: one level of sqrt(n))")] = None,
           strategy: Annotated[str, typer.Option(
               help="random (a seeded draw in each cluster) | closest (nearest the centroid "
                    "first)")] = "random",
           resampling_steps: Annotated[int, typer.Option(
               help="resampling steps per level (ssl-data-curation)")] = 10,
           sample_size: Annotated[Optional[int], typer.Option(
               help="points per cluster in a resampling step (default: half the mean cluster "
                    "size)")] = None,
           euclidean: Euclidean = False, layer: Layer = None, pool: Pool = "mean",
           subset: Subset = None, store: Store = None, batch_size: BatchSize = 32,
           device: Device = None, workers: Workers = None, no_pretrained: NoPretrained = False,
           seed: Annotated[int, typer.Option(
               help="seed of the clustering, the draws and random weights: the same seed, "
                    "the same sample")] = 0,
           dtype: Dtype = "float32", overwrite: Overwrite = False, no_sheet: NoSheet = False,
           backend=None, as_json: Json = False, verbose: Verbose = False):
    """A sample of --budget images balanced over the data's concepts (hierarchical k-means,
    water-filling); writes OUT/sample/: curate.json, keep.csv, clusters.csv, sample.png."""
    from ..analyses.curate import sample as run

    with call(verbose=verbose, interrupted=_INTERRUPTED.format(out=out)):
        result = run(model, images, budget=budget, levels=levels, strategy=strategy,
                     resampling_steps=resampling_steps, sample_size=sample_size,
                     spherical=not euclidean, layer=layer, pool=pool, subset=subset, out=out,
                     store=store, sheet=not no_sheet,
                     backend=backend, **_extraction(batch_size, device, workers, no_pretrained,
                                                    seed, dtype, overwrite))
    _report(result, out / "sample", as_json)


@curate_app.command("retrieve")
@with_backend
def retrieve(model: Model,
             queries: Annotated[str, typer.Option(help=f"query images: {IMAGES_HELP}")],
             pool_images: Annotated[str, typer.Option(
                 "--pool-images", help=f"the pool searched: {IMAGES_HELP}")],
             out: Out,
             k: Annotated[int, typer.Option("--k", "-k", help="nearest pool images per query "
                                                              "(DINOv2: 4)")] = 4,
             mode: Annotated[str, typer.Option(
                 help="nearest (k per query) | clusters (the pool clusters holding enough "
                      "queries, for small query sets)")] = "nearest",
             clusters: Annotated[Optional[int], typer.Option(
                 help="--mode clusters: pool clusters (default: sqrt of the pool size)")] = None,
             min_queries: Annotated[int, typer.Option(
                 help="--mode clusters: queries a cluster must hold")] = 1,
             layer: Layer = None, pool: Pool = "mean",
             queries_store: Annotated[Optional[Path], typer.Option(
                 help="a feature store of the query images")] = None,
             pool_store: Annotated[Optional[Path], typer.Option(
                 help="a feature store of the pool images")] = None,
             batch_size: BatchSize = 32, device: Device = None, workers: Workers = None,
             no_pretrained: NoPretrained = False, seed: Seed = 0, dtype: Dtype = "float32",
             overwrite: Overwrite = False, no_sheet: NoSheet = False, backend=None,
             as_json: Json = False, verbose: Verbose = False):
    """Pool images close to a set of queries (DINOv2's retrieval); writes OUT/retrieve/:
    curate.json, keep.csv, retrieved.csv, retrieve.png."""
    from ..analyses.curate import retrieve as run

    with call(verbose=verbose, interrupted=_INTERRUPTED.format(out=out)):
        result = run(model, queries, pool_images, k=k, mode=mode, n_clusters=clusters,
                     min_queries=min_queries, layer=layer, pool=pool, out=out,
                     queries_store=queries_store, pool_store=pool_store, sheet=not no_sheet,
                     backend=backend, **_extraction(batch_size, device, workers, no_pretrained,
                                                    seed, dtype, overwrite))
    _report(result, out / "retrieve", as_json)


@curate_app.command("prototypes")
@with_backend
def prototypes(model: Model, images: Images, out: Out,
               clusters: Annotated[Optional[int], typer.Option(
                   help="k of the k-means (default: sqrt(n))")] = None,
               examples: Annotated[int, typer.Option(
                   help="members shown per prototype, nearest the centroid first")] = 8,
               euclidean: Euclidean = False, layer: Layer = None, pool: Pool = "mean",
               subset: Subset = None, store: Store = None, batch_size: BatchSize = 32,
               device: Device = None, workers: Workers = None,
               no_pretrained: NoPretrained = False, seed: Seed = 0, dtype: Dtype = "float32",
               overwrite: Overwrite = False, no_sheet: NoSheet = False, backend=None,
               as_json: Json = False, verbose: Verbose = False):
    """What the images hold: k-means prototypes, their sizes and medoids; writes
    OUT/prototypes/: curate.json, keep.csv (the medoids), prototypes.csv, clusters.csv,
    prototypes.png."""
    from ..analyses.curate import find_prototypes as run

    with call(verbose=verbose, interrupted=_INTERRUPTED.format(out=out)):
        result = run(model, images, n_clusters=clusters, n_examples=examples,
                     spherical=not euclidean, layer=layer, pool=pool, subset=subset, out=out,
                     store=store, sheet=not no_sheet,
                     backend=backend, **_extraction(batch_size, device, workers, no_pretrained,
                                                    seed, dtype, overwrite))
    _report(result, out / "prototypes", as_json)


@datasets_app.command("compare")
@with_backend
def compare(model: Model,
            images_a: Annotated[str, typer.Option(
                "--images-a", help=f"the reference set: {IMAGES_HELP}")],
            images_b: Annotated[str, typer.Option(
                "--images-b", help=f"the set compared with it: {IMAGES_HELP}")],
            out: Out,
            names: Annotated[Optional[str], typer.Option(
                help="the two sets' names, e.g. train,web (default: their folder names)")]
            = None,
            k: Annotated[int, typer.Option("--k", "-k", help="neighbours of precision / recall "
                                                             "/ density / coverage")] = 5,
            clusters: Annotated[Optional[int], typer.Option(
                help="joint k-means clusters (default: sqrt(n / 10), at most 100)")] = None,
            metric: Annotated[str, typer.Option(
                help="euclidean | cosine, for precision / recall / density / coverage")]
            = "euclidean",
            min_purity: Annotated[float, typer.Option(
                help="share of a cluster from one set that makes it one-sided")] = 0.95,
            examples: Annotated[int, typer.Option(
                help="members per set and cluster on the contact sheet")] = 8,
            layer: Layer = None, pool: Pool = "mean",
            store_a: Annotated[Optional[Path], typer.Option(
                help="a feature store of --images-a")] = None,
            store_b: Annotated[Optional[Path], typer.Option(
                help="a feature store of --images-b")] = None,
            batch_size: BatchSize = 32, device: Device = None, workers: Workers = None,
            no_pretrained: NoPretrained = False, seed: Seed = 0, dtype: Dtype = "float32",
            overwrite: Overwrite = False, no_sheet: NoSheet = False, backend=None,
            as_json: Json = False, verbose: Verbose = False):
    """Fréchet distance, precision / recall / density / coverage and the clusters only one set
    populates; writes OUT/datasets.json, clusters.csv, datasets.png."""
    from ..analyses.curate import datasets as run

    pair = None if names is None else [n.strip() for n in names.split(",")]
    with call(verbose=verbose, interrupted=_INTERRUPTED.format(out=out)):
        result = run(model, images_a, images_b, names=pair, k=k, n_clusters=clusters,
                     metric=metric, min_purity=min_purity, n_examples=examples, layer=layer,
                     pool=pool, out=out, store_a=store_a, store_b=store_b, sheet=not no_sheet,
                     backend=backend, **_extraction(batch_size, device, workers, no_pretrained,
                                                    seed, dtype, overwrite))
    _report(result, out, as_json)
