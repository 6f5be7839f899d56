"""`extract()`: models + images + layers -> a feature store on disk, resumable, and
`extract.json` beside it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from . import plan
from .backends import Backend, resolve_backend
from .errors import InputError
from .sources import open_source
from .store import Store
from .taps import POOLS
from .zoo.model import resolve_layers
from .zoo.registry import as_models

__all__ = ["extract"]

log = logging.getLogger("zoolens")


def extract(models, images, layers="blocks", out: str | Path | None = None, pool: str = "mean", *,
            maps=None, batch_size: int = 32, device=None, dtype: str = "float16",
            pretrained: bool = True, seed: int = 0, num_workers: int | None = None,
            amp: bool = False, chunk_size: int | None = None, overwrite: bool = False,
            progress: bool = True, backend: str | Backend | None = None) -> Store:
    """Run `images` through `models`, pool the `layers` and write them to the store `out`.

    models: spec strings or `Model`s. images: anything `open_source` takes (a folder,
    'synthetic:scenes?n=64', a CSV, a tensor batch). layers: a selector (`blocks`, `all`,
    names, globs) or a dict per model. pool: 'mean' (over positions / patch tokens), 'cls'
    (the CLS token; mean where a layer has none), 'none' (full maps). maps: a selector of
    layers kept as full maps whatever `pool` says. seed: random weights' seed (recorded in the
    store with each model's weights fingerprint). chunk_size: images between checkpoints
    (a multiple of `batch_size`; default about 256, fewer for small runs). Rerunning on the
    same `out` resumes. backend: "local" (default), "ray" or a `zoolens.RayBackend` (models
    on a Ray cluster; the store is written here either way; `num_workers` then counts model
    workers). Writes `out/extract.json` (a summary) and returns the opened Store."""
    if out is None:
        raise InputError("extract needs out=DIR, the folder the feature store is written to")
    if pool not in POOLS:
        raise InputError(f"pool {pool!r}: use one of {', '.join(POOLS)}")
    runner = resolve_backend(backend, num_workers=num_workers)
    models = as_models(models, pretrained=pretrained, device=runner.load_device(device),
                       seed=seed)
    source = open_source(images)
    chosen = resolve_layers(models, layers)
    full_maps = resolve_layers(models, maps) if maps is not None else {}
    pools = {}
    for m in models:
        names = list(dict.fromkeys(chosen[m.name] + full_maps.get(m.name, [])))
        pools[m.name] = {n: ["none" if n in full_maps.get(m.name, []) else pool] for n in names}
    store = plan.extract(models, source, pools, out, batch_size=batch_size, chunk_size=chunk_size,
                         dtype=dtype, overwrite=overwrite, device=device, amp=amp,
                         progress=progress, backend=runner)
    (Path(out) / "extract.json").write_text(json.dumps(summarize(store), indent=1))
    return store


def summarize(store: Store) -> dict:
    """The summary `extract.json` holds (and `zoolens extract --json` prints)."""
    return {"analysis": "extract", "store": str(store.path),
            "models": {m: store.layers(m) for m in store.models},
            "images": len(store.ids), "extracted": int(store.valid.sum()),
            "skipped": store.skipped, "notes": store.manifest.get("notes", []),
            "complete": store.complete, "last_run": store.manifest.get("last_run")}
