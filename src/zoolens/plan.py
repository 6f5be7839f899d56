"""Planning a pass: each sink declares what it needs (`Sink.need`); one function runs it.

- `run(models, source, sinks, store=...)` merges the sinks' needs into one request and feeds
  every sink from one pass: replayed from a feature store that already holds all of it (the same
  models with the same weights, the same images), or else the engine — writing the store on the
  way when `store` names a folder, so that the next analysis of these features reads them
  instead of running the models again.
- `extract(...)` makes sure a feature store holds some taps, resuming an unfinished one: what
  `zoolens.extract` and the probes build on.

Both take `backend=` (`zoolens.backends`): where the batches run — here ("local") or on a Ray
cluster ("ray", or a `RayBackend` with its settings). Checkpoints and the store's finished
chunks work the same on either: the backend reports the images every sink holds (`on_done`),
and the planner saves there.

An analysis is then: build its sinks, call `run`, read `sink.result()`.
"""

from __future__ import annotations

import functools
import logging
import operator
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .backends import Backend, resolve_backend
from .engine import RunSummary, _tally, progress_bar, tap_infos
from .errors import InputError
from .sinks import Need, Sink
from .sources import ImageSource
from .store import Store, StoreWriter, _plain, default_chunk_size, slug
from .taps import POOLS, TapInfo
from .zoo.model import Model

__all__ = ["run", "extract", "extract_splits", "store_config", "reusable_store",
           "no_usable_images"]

log = logging.getLogger("zoolens")


def store_config(models: Sequence[Model], source: ImageSource) -> dict:
    """What a store records about how its rows were computed: each model's record (spec,
    weights) and the images' fingerprint."""
    return {"models": {m.name: m.record() for m in models}, "source": source.description,
            "source_fingerprint": source.fingerprint()}


def reusable_store(path: str | Path | Store | None, models: Sequence[Model],
                   source: ImageSource, need: Need,
                   fingerprints: list[str] | None = None) -> Store | None:
    """The store at `path` when it holds everything `need` asks for, computed by these models
    (the same weights) from these images (the same contents: `fingerprints`, by default the
    source's item fingerprints); else None."""
    if path is None:
        return None
    try:
        store = path if isinstance(path, Store) else Store(path)
    except (InputError, OSError, ValueError, KeyError):
        return None
    want = store_config([m for m in models if m.name in need.taps], source)
    have = store.config.get("models", {})
    if store.config.get("source_fingerprint") != want["source_fingerprint"]:
        return None
    if not all(_plain(have.get(name)) == _plain(record)
               for name, record in want["models"].items()):
        return None
    if not store.holds(need):
        return None
    if fingerprints is None:
        fingerprints = source.item_fingerprints()
    return store if store.fingerprints == fingerprints else None


def _storable(need: Need) -> dict[str, dict[str, list[str]]]:
    """The part of a need a store can keep: poolings, not token sequences or images."""
    out: dict[str, dict[str, list[str]]] = {}
    for model, by in need.taps.items():
        for layer, hows in by.items():
            kept = sorted(h for h in hows if h in POOLS)
            if kept:
                out.setdefault(model, {})[layer] = kept
    return out


def _infos(models: Sequence[Model], pools: dict[str, dict[str, list[str]]],
           ) -> dict[str, dict[str, TapInfo]]:
    """The `TapInfo`s of the layers `pools` names, per model of `pools` (in its order)."""
    infos = tap_infos(models, Need.from_pools(pools))  # {} for a model with no taps: dropped
    return {model: infos[model] for model in pools}


def run(models: Sequence[Model], source: ImageSource, sinks: Sequence[Sink], *,
        store: str | Path | Store | None = None, indices: Iterable[int] | None = None,
        checkpoint: str | Path | None = None, key: str = "", every: int = 256,
        batch_size: int = 32, num_workers: int | None = None, device=None, amp: bool = False,
        dtype: str = "float16", progress: bool = True, desc: str = "extracting",
        backend: str | Backend | None = None) -> RunSummary:
    """Feed `sinks` from one pass over `source` (or its `indices`, in that order).

    store: a feature store folder. When it holds what the sinks need, computed by the same
    models from the same images, it is read instead of running the models (the summary then
    says `forwards == 0`). Otherwise the models run and, when the folder is new or holds an
    unfinished extraction of the same taps, the store is written on the way.
    checkpoint: a file the sinks' states are saved to, with the images done, whenever `every`
    more images are done (and at the end); a rerun with the same `key` (a digest of the
    settings) loads them and goes on where the last run stopped. Every sink can be
    checkpointed: its state is declared.
    backend: where the models run ("local", "ray", or a backend object); `num_workers` means
    its workers (`zoolens.backends.resolve_backend`). A store is read here, whatever it says.
    """
    need = functools.reduce(operator.or_, [s.need for s in sinks], Need())
    used = [m for m in models if m.name in need.taps]
    order = list(range(len(source))) if indices is None else [int(i) for i in indices]
    saver = None
    if checkpoint is not None:
        done = _resume(Path(checkpoint), key, sinks)
        order = [i for i in order if i not in done]
        saver = _Checkpoints(Path(checkpoint), key, sinks, done, every)
    prints = source.item_fingerprints() if store is not None else None
    stored = reusable_store(store, used, source, need, prints)
    if stored is not None:
        summary = _replay(stored, sinks, need, order, batch_size, progress, desc, saver)
    else:
        runner = resolve_backend(backend, num_workers=num_workers)
        if order:
            runner.connect()  # a cluster that does not answer fails before any file is made
        writer = _writer(store, used, source, need, prints, batch_size, dtype)
        try:
            summary = runner.run(used, source, need, list(sinks) + ([writer] if writer else []),
                                 indices=order, batch_size=batch_size, device=device, amp=amp,
                                 progress=progress, desc=desc, on_done=saver)
        finally:
            if writer is not None:
                writer.close()
    if saver is not None:
        saver.save()
    return summary


def no_usable_images(source: ImageSource, skipped: Sequence[dict] = ()) -> InputError:
    """The error of an analysis whose pass used none of `source`'s images; `skipped`: the
    ``{"index", "id", "reason"}`` of those that could not be used (the first reason is told)."""
    why = (f" ({len(skipped)} skipped; {skipped[0].get('id')}: {skipped[0].get('reason')})"
           if skipped else "")
    return InputError(f"images {source.description!r}: none of the {len(source)} images could "
                      f"be used{why}")


class _Checkpoints:
    """Called by the backend with the images every sink holds; saves the sinks' states and the
    images done whenever `every` more are done (`save()` at the end)."""

    def __init__(self, path: Path, key: str, sinks: Sequence[Sink], done: set[int], every: int):
        if every < 1:
            raise InputError(f"every {every}: checkpoint after at least 1 image")
        self.path, self.key, self.sinks, self.done, self.every = path, key, sinks, done, every
        self._since = 0

    def __call__(self, indices: list[int]) -> None:
        self.done.update(indices)
        self._since += len(indices)
        if self._since >= self.every:
            self.save()

    def save(self) -> None:
        _save_checkpoint(self.path, self.key, self.done, self.sinks)
        self._since = 0


def _writer(store, models, source, need: Need, fingerprints, batch_size: int, dtype: str):
    """A writer filling the store folder on the way, or None when there is none to fill."""
    pools = _storable(need)
    if store is None or isinstance(store, Store) or not pools:
        return None
    try:
        return StoreWriter(Path(store), _infos(models, pools), pools, ids=source.ids,
                           labels=source.labels, fingerprints=fingerprints, dtype=dtype,
                           chunk_size=default_chunk_size(len(source), batch_size),
                           config=store_config(models, source),
                           listing_skips=source.skipped_at_listing)
    except InputError as exc:
        log.warning("not writing the features to %s: %s", store, exc)
        return None


def _resume(path: Path, key: str, sinks: Sequence[Sink]) -> set[int]:
    """Load the sinks' states from a checkpoint of the same settings; the images it had done."""
    if not path.exists():
        return set()
    saved = torch.load(path, weights_only=False)
    if saved.get("key") != key or len(saved.get("sinks", [])) != len(sinks):
        log.info("%s was written with other settings; starting over", path)
        return set()
    for sink, state in zip(sinks, saved["sinks"]):
        sink.load_state_dict(state)
    log.info("resuming from %s: %d images done", path, len(saved["done"]))
    return set(saved["done"])


def _save_checkpoint(path: Path, key: str, done: set[int], sinks: Sequence[Sink]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"key": key, "done": sorted(done), "sinks": [s.state_dict() for s in sinks]}, tmp)
    tmp.replace(path)


def _replay(store: Store, sinks, need: Need, indices: list[int], batch_size: int,
            progress: bool, desc: str, on_done=None) -> RunSummary:
    log.info("reading the features from %s (no model runs)", store.path)
    summary = RunSummary(device="store")
    bar = progress_bar(len(indices), progress, f"{desc} (from the store)")
    try:
        for batch in store.batches(need, indices=indices, batch_size=batch_size):
            for sink in sinks:
                sink.update(batch)
            _tally(summary, batch, bar)
            if on_done is not None:
                on_done(list(batch.indices) + [s["index"] for s in batch.skipped])
    finally:
        bar.close()
    return summary


def extract(models: Sequence[Model], source: ImageSource, pools: dict[str, dict[str, list[str]]],
            out: str | Path, *, batch_size: int = 32, chunk_size: int | None = None,
            dtype: str = "float16", overwrite: bool = False, num_workers: int | None = None,
            device=None, amp: bool = False, progress: bool = True,
            backend: str | Backend | None = None) -> Store:
    """Make the store at `out` hold, for each model and layer of `pools`, the poolings listed: a
    finished store that holds them (maybe with more) is left as it is, a store of the same
    settings is resumed (finished chunks are not redone), one of other settings is refused
    unless `overwrite`. backend: where the models run (see `run`); the store is written here,
    by this process, whatever the backend."""
    chunk_size = chunk_size or default_chunk_size(len(source), batch_size)
    if chunk_size % batch_size:
        raise InputError(f"chunk size {chunk_size} must be a multiple of the batch size "
                         f"{batch_size}")
    used = [m for m in models if m.name in pools]
    need = Need.from_pools(pools)
    prints = source.item_fingerprints()
    held = None if overwrite else reusable_store(out, used, source, need, prints)
    if held is not None:  # a finished store already holds all of it (maybe more)
        return held
    runner = resolve_backend(backend, num_workers=num_workers)
    runner.connect()  # a cluster that does not answer fails before the store is created
    writer = StoreWriter(out, _infos(used, pools), pools, ids=source.ids, labels=source.labels,
                         fingerprints=prints, dtype=dtype, chunk_size=chunk_size,
                         config=store_config(used, source),
                         listing_skips=source.skipped_at_listing, overwrite=overwrite)
    for s in source.skipped_at_listing:
        log.warning("skipped %s: %s", s["id"], s["reason"])
    todo = writer.todo()
    if 0 < len(todo) < len(source):
        log.info("resuming %s: %d of %d images left", out, len(todo), len(source))
    summary = None
    try:
        if todo:
            summary = runner.run(models, source, writer.need, [writer], indices=todo,
                                 batch_size=batch_size, chunk_size=chunk_size, device=device,
                                 amp=amp, progress=progress)
    finally:
        extra = {"last_run": {"images": summary.images, "seconds": round(summary.seconds, 3),
                              "device": summary.device,
                              **({"nodes": len(summary.nodes)} if summary.nodes else {})}
                 } if summary else {}
        writer.close(**extra)
    return writer.result()


def extract_splits(model: Model, sources: dict[str, ImageSource],
                   pools: dict[str, list[str]], folder: str | Path, **options) -> dict[str, Store]:
    """One store of `model`'s features per split: `folder/<split>` (a split may be a path such
    as ``ood/photos``; each part becomes a file name), each made, reused or resumed by
    `extract` with `options`. What the probes, OOD detection and curation read."""
    stores = {}
    for split, source in sources.items():
        path = Path(folder).joinpath(*(slug(part) for part in split.split("/")))
        log.info("%s: %s features -> %s", model.name, split, path)
        stores[split] = extract([model], source, {model.name: pools}, path, **options)
    return stores
