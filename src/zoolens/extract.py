"""`extract()`: models + images + layers -> a feature store on disk, resumable."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from .engine import run
from .errors import InputError
from .sources import ImageSource, open_source
from .store import Store, StoreWriter
from .taps import POOLS
from .zoo.model import Model
from .zoo.registry import load

__all__ = ["extract", "as_models", "resolve_layers"]

log = logging.getLogger("zoolens")


def as_models(models, *, pretrained: bool = True, device=None) -> list[Model]:
    """Specs, Models, or a mix -> loaded Models."""
    if isinstance(models, (str, Model)):
        models = [models]
    out = [m if isinstance(m, Model) else load(m, pretrained=pretrained, device=device)
           for m in models]
    if not out:
        raise InputError("no models given; name at least one, e.g. timm:resnet50")
    return out


def resolve_layers(models: Sequence[Model], layers) -> dict[str, list[str]]:
    """A selector for all models, or a dict {model name or spec: selector}."""
    result = {}
    for m in models:
        sel = layers.get(m.name, layers.get(m.spec)) if isinstance(layers, dict) else layers
        if sel is None:
            raise InputError(f"no layers given for {m.name}; have keys {list(layers)}")
        result[m.name] = m.select(sel)
    return result


def extract(models, images, layers="blocks", out: str | Path | None = None, pool: str = "mean", *,
            maps=None, batch_size: int = 32, device=None, dtype: str = "float16",
            pretrained: bool = True, num_workers: int | None = None, amp: bool = False,
            chunk_size: int | None = None, overwrite: bool = False,
            progress: bool = True) -> Store:
    """Run `images` through `models`, pool the `layers` and write them to the store `out`.

    models: spec strings or `Model`s. images: anything `open_source` takes (a folder,
    'synthetic:scenes?n=64', a CSV, a tensor batch). layers: a selector (`blocks`, `all`,
    names, globs) or a dict per model. pool: 'mean' (over positions / patch tokens), 'cls'
    (the CLS token; mean where a layer has none), 'none' (full maps). maps: a selector of
    layers kept as full maps whatever `pool` says. Rerunning on the same `out` resumes.
    Returns the opened Store."""
    if out is None:
        raise InputError("extract needs out=DIR, the folder the feature store is written to")
    if pool not in POOLS:
        raise InputError(f"pool {pool!r}: use one of {', '.join(POOLS)}")
    models = as_models(models, pretrained=pretrained, device=device)
    source: ImageSource = open_source(images)
    chosen = resolve_layers(models, layers)
    full_maps = resolve_layers(models, maps) if maps is not None else {}
    taps, pools = {}, {}
    for m in models:
        names = list(dict.fromkeys(chosen[m.name] + full_maps.get(m.name, [])))
        by_name = {i.name: i for i in m.layers(names)}
        taps[m.name] = {n: by_name[n] for n in names}
        pools[m.name] = {n: "none" if n in full_maps.get(m.name, []) else pool for n in names}
    if chunk_size is None:
        chunk_size = max(batch_size, -(-256 // batch_size) * batch_size)
    elif chunk_size % batch_size:
        raise InputError(f"chunk_size {chunk_size} must be a multiple of batch_size {batch_size}")
    config = {"models": {m.name: {"spec": m.spec, "pretrained": pretrained,
                                  "weights": m.adapter.meta.get("weights"),
                                  "input_size": list(m.input_size)} for m in models},
              "source": source.description, "source_fingerprint": source.fingerprint()}
    writer = StoreWriter(out, taps, pools, ids=source.ids, labels=source.labels, dtype=dtype,
                         chunk_size=chunk_size, config=config,
                         listing_skips=source.skipped_at_listing, overwrite=overwrite)
    for s in source.skipped_at_listing:
        log.warning("skipped %s: %s", s["id"], s["reason"])
    todo = writer.todo()
    if len(todo) < len(source):
        log.info("resuming %s: %d of %d images left", out, len(todo), len(source))
    request = {name: {layer: {how} for layer, how in by_layer.items()}
               for name, by_layer in pools.items()}
    summary = None
    try:
        if todo:
            summary = run(models, source, request, [writer], indices=todo, batch_size=batch_size,
                          chunk_size=chunk_size, num_workers=num_workers, device=device, amp=amp,
                          progress=progress)
    finally:
        extra = {"last_run": {"images": summary.images, "seconds": round(summary.seconds, 3),
                              "device": summary.device}} if summary else {}
        writer.close(**extra)
    return Store(out)
