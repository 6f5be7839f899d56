"""The on-disk feature store: one preallocated `.npy` file per (model, layer, pooling), rows in
source order, written chunk by chunk; a JSON manifest records which chunks are finished.

Why npy files and not zarr: no extra dependency, NumPy memory-maps them natively, and one
preallocated file per layer makes resuming O(1) — a chunk is rewritten in place until the
manifest (replaced atomically, after the rows are flushed to disk) lists it as finished. An
interrupted run therefore never leaves a half-written chunk marked done, and a rerun with the
same settings skips finished chunks. Rows of skipped images stay zero and are flagged. Each
image's decoded size is kept too (`sizes.npy`), so what a live pass tells a sink about an image
(`Batch.sizes`) a replay tells it as well.

`StoreWriter` is a sink like any other (its state: the finished chunks and the skip list, which
merge by union); `Store` reads a store back, and replays it as batches (`Store.batches`), so the
planner can feed sinks from disk instead of running the models again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import InputError
from .sinks import Batch, Need, Sink
from .taps import TapInfo, effective_pool, pooled_shape

__all__ = ["StoreWriter", "Store", "open_store", "MANIFEST", "SIZES", "default_chunk_size",
           "slug"]

log = logging.getLogger("zoolens")

MANIFEST = "manifest.json"
SIZES = "sizes.npy"  # (n_images, 2) int32: each image's decoded (height, width); 0 if skipped
_FORMAT = 1


def slug(text: str) -> str:
    """A file or folder name for a model or layer name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _npy_header_size(path: Path) -> int:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()


def _plain(obj):
    """`obj` as it reads back from JSON (tuples -> lists), for comparing settings."""
    return json.loads(json.dumps(obj))


def default_chunk_size(n_images: int, batch_size: int) -> int:
    """Images between checkpoints: about 256, a multiple of the batch size, and small enough
    that a run of a few hundred images keeps several finished chunks when interrupted."""
    per = max(1, min(-(-256 // batch_size), -(-n_images // (8 * batch_size))))
    return batch_size * per


@dataclass
class _Array:
    path: Path
    shape: tuple[int, ...]  # per image
    fd: int = -1
    offset: int = 0
    row_bytes: int = 0
    dtype: np.dtype | None = None  # None: the store's feature dtype


class StoreWriter(Sink):
    """A sink writing reduced features to `out`: for each model and layer of `infos`, the
    poolings `pools[model][layer]` (a list; "mean", "cls" or "none"). Creating it on a folder
    that holds an unfinished extraction with the same settings resumes it (`todo()` lists what
    is left); with other settings — other weights included — it refuses, unless `overwrite`.
    `fingerprints` (one per image, `ImageSource.item_fingerprints()`) are recorded per row: an
    image whose content changed since a row was written makes its chunk be computed again."""

    on_driver = True  # its files are on the machine that started the run

    def __init__(self, out: str | Path, infos: dict[str, dict[str, TapInfo]],
                 pools: dict[str, dict[str, list[str]]], *, ids: list[str], labels=None,
                 fingerprints: list[str] | None = None, dtype: str = "float16",
                 chunk_size: int = 256, config: dict | None = None,
                 listing_skips: list[dict] | None = None, overwrite: bool = False):
        if dtype not in ("float16", "float32"):
            raise InputError(f"dtype {dtype!r}: use float16 or float32")
        if chunk_size < 1:
            raise InputError(f"chunk size {chunk_size}: must be at least 1")
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"--out {str(self.out)!r} is a file; give a folder for the store")
        self.dtype = np.dtype(dtype)
        self.chunk_size = chunk_size
        self.n = len(ids)
        self.arrays: dict[tuple[str, str, str], _Array] = {}  # (model, layer, requested pool)
        entries: dict[str, dict] = {}
        for model, by_layer in infos.items():
            entries[model] = {}
            for layer, info in by_layer.items():
                per_pool = {}
                for how in sorted(set(pools[model][layer]), key=pools[model][layer].index):
                    eff = effective_pool(info, how)
                    shape = pooled_shape(info, how)
                    rel = f"{slug(model)}/{slug(layer)}.{eff}.npy"
                    self.arrays[(model, layer, how)] = _Array(self.out / rel, shape)
                    per_pool[how] = {"pool": eff, "shape": list(shape), "file": rel}
                first = next(iter(per_pool))
                entries[model][layer] = {"pool": per_pool[first]["pool"], "requested_pool": first,
                                         "shape": per_pool[first]["shape"],
                                         "file": per_pool[first]["file"], "tap": info.to_json(),
                                         "pools": per_pool}
        self.need = Need.from_pools(pools)
        self.config = {"format": _FORMAT, "n_images": self.n, "dtype": dtype,
                       "chunk_size": chunk_size, "layers": entries, **(config or {})}
        # None when resuming a store written before sizes were kept (its finished rows have none)
        self.sizes: _Array | None = _Array(self.out / SIZES, (2,), dtype=np.dtype(np.int32))
        self.manifest = self._open(overwrite, ids, labels, fingerprints, listing_skips or [])
        self.add_state("done_chunks", set(self.manifest["done_chunks"]), merge="union")
        self.add_state("skipped", list(self.manifest["skipped"]), merge=_merge_records)
        self.add_state("notes", list(self.manifest["notes"]), merge=_merge_records)
        self._remaining: dict[int, set[int]] = {}  # chunk -> indices not yet written or skipped
        self._chunk_skips: list[dict] = []  # skips and notes wait for their chunk to finish
        self._chunk_notes: list[dict] = []

    # -- creation and resumption -------------------------------------------------------
    def _open(self, overwrite: bool, ids, labels, fingerprints, listing_skips) -> dict:
        path = self.out / MANIFEST
        if path.exists() and not overwrite:
            old = json.loads(path.read_text())
            new = _plain(self.config)
            if old.get("config") != new:
                raise InputError(_refusal(self.out, old.get("config", {}), new))
            for a in self.arrays.values():
                if not a.path.exists():
                    raise InputError(f"{self.out} is damaged: {a.path} is missing; overwrite it")
            if not self.sizes.path.exists():
                self.sizes = None
            self._open_files()
            if fingerprints is not None:
                self._forget_changed(old, fingerprints)
            return old
        self.out.mkdir(parents=True, exist_ok=True)
        self._remove_old_arrays(path)
        for a in {a.path: a for a in self._files()}.values():
            a.path.parent.mkdir(parents=True, exist_ok=True)
            # preallocated (sparse) and zero: rows of skipped images stay zero
            np.lib.format.open_memmap(a.path, mode="w+", dtype=a.dtype or self.dtype,
                                      shape=(self.n, *a.shape))._mmap.close()
        _write_json_atomic(self.out / "ids.json", {"ids": list(ids), "labels": labels,
                                                   "fingerprints": fingerprints})
        manifest = {"config": self.config, "done_chunks": [], "skipped": list(listing_skips),
                    "notes": [], "complete": False, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_json_atomic(path, manifest)
        self._open_files()
        return manifest

    def _forget_changed(self, manifest: dict, fingerprints: list[str]) -> None:
        """Images whose content changed since their rows were written: their chunks are
        computed again (and their old skip or note entries dropped)."""
        meta_path = self.out / "ids.json"
        meta = json.loads(meta_path.read_text())
        before = meta.get("fingerprints") or [None] * self.n
        changed = [i for i, (a, b) in enumerate(zip(before, fingerprints)) if a != b]
        if not changed:
            return
        chunks = {i // self.chunk_size for i in changed}
        log.warning("%d image(s) changed since %s was written (e.g. %s); computing their %d "
                    "chunk(s) again", len(changed), self.out, meta["ids"][changed[0]], len(chunks))
        stale = lambda r: "index" in r and r["index"] // self.chunk_size in chunks  # noqa: E731
        manifest["done_chunks"] = [c for c in manifest["done_chunks"] if c not in chunks]
        manifest["skipped"] = [r for r in manifest["skipped"] if not stale(r)]
        manifest["notes"] = [r for r in manifest["notes"] if not stale(r)]
        manifest["complete"] = False
        meta["fingerprints"] = list(fingerprints)
        _write_json_atomic(meta_path, meta)  # rows are rewritten before their chunk is done
        _write_json_atomic(self.out / MANIFEST, manifest)

    def _remove_old_arrays(self, manifest: Path) -> None:
        """Starting over on a store folder: the arrays of the old extraction go (a later reader
        must never take a stale file for this run's)."""
        if not manifest.exists():
            return
        try:
            old = json.loads(manifest.read_text())["config"]["layers"]
        except (ValueError, KeyError, OSError):
            return
        keep = {a.path for a in self.arrays.values()}
        for by_layer in old.values():
            for entry in by_layer.values():
                for sub in (entry.get("pools") or {"": entry}).values():
                    stale = self.out / sub["file"]
                    if stale not in keep and stale.is_file():
                        stale.unlink()

    def _files(self) -> list[_Array]:
        """Every array written per image: the features, and the decoded sizes."""
        return list(self.arrays.values()) + ([self.sizes] if self.sizes is not None else [])

    def _open_files(self):
        fds: dict[Path, int] = {}
        for a in self._files():
            a.offset = _npy_header_size(a.path)
            a.row_bytes = int(np.prod(a.shape)) * (a.dtype or self.dtype).itemsize
            if a.path not in fds:
                fds[a.path] = os.open(a.path, os.O_RDWR)
            a.fd = fds[a.path]

    def todo(self) -> list[int]:
        """Source indices of the chunks not yet finished."""
        n_chunks = -(-self.n // self.chunk_size)
        return [i for c in range(n_chunks) if c not in self.done_chunks
                for i in range(c * self.chunk_size, min(self.n, (c + 1) * self.chunk_size))]

    # -- the sink ----------------------------------------------------------------------
    def update(self, batch: Batch) -> None:
        written = set()
        for (model, layer, how), a in self.arrays.items():
            if batch.indices and a.path not in written:  # poolings may share one array
                self._write_rows(a, batch.indices, batch.features[model][layer][how])
                written.add(a.path)
        if self.sizes is not None and batch.indices and len(batch.sizes) == len(batch.indices):
            self._write_rows(self.sizes, batch.indices, np.asarray(batch.sizes, dtype=np.int32))
        self._chunk_skips += batch.skipped
        self._chunk_notes += batch.notes
        for i in list(batch.indices) + [s["index"] for s in batch.skipped]:
            c = i // self.chunk_size
            if c not in self._remaining:
                end = min(self.n, (c + 1) * self.chunk_size)
                self._remaining[c] = set(range(c * self.chunk_size, end))
            self._remaining[c].discard(i)
            if not self._remaining[c]:
                del self._remaining[c]
                self._finish_chunk(c)

    def _write_rows(self, a: _Array, indices: list[int], t) -> None:
        if not indices:
            return
        rows = t.detach().to("cpu").numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        rows = rows.astype(a.dtype or self.dtype, copy=False)
        rows = np.ascontiguousarray(rows.reshape(len(indices), -1))
        start = 0
        for k in range(1, len(indices) + 1):  # one write per run of consecutive indices
            if k == len(indices) or indices[k] != indices[k - 1] + 1:
                os.pwrite(a.fd, rows[start:k].tobytes(), a.offset + indices[start] * a.row_bytes)
                start = k

    def _finish_chunk(self, chunk: int) -> None:
        for fd in {a.fd for a in self._files()}:
            os.fsync(fd)
        lo, hi = chunk * self.chunk_size, (chunk + 1) * self.chunk_size
        inside = lambda s: lo <= s["index"] < hi  # noqa: E731
        self.skipped += [s for s in self._chunk_skips if inside(s)]
        self.notes += [s for s in self._chunk_notes if inside(s)]
        self._chunk_skips = [s for s in self._chunk_skips if not inside(s)]
        self._chunk_notes = [s for s in self._chunk_notes if not inside(s)]
        self.done_chunks.add(chunk)
        self._save()

    def _save(self, **extra) -> None:
        self.manifest.update(done_chunks=sorted(self.done_chunks), skipped=self.skipped,
                             notes=self.notes, complete=not self.todo(), **extra)
        _write_json_atomic(self.out / MANIFEST, self.manifest)

    def merge(self, other: "StoreWriter") -> "StoreWriter":
        """Add the chunks another writer of the same store finished (its rows are on disk)."""
        if other.out.resolve() != self.out.resolve() or _plain(other.config) != _plain(self.config):
            raise InputError(f"cannot merge the writer of {other.out} into that of {self.out}: "
                             "not the same store")
        super().merge(other)
        self._save()
        return self

    def load_state_dict(self, state: dict) -> "StoreWriter":
        super().load_state_dict(state)
        self._save()
        return self

    def close(self, **extra) -> None:
        """Close the files; `extra` (timings, say) goes into the manifest."""
        self._save(**extra)
        for fd in {a.fd for a in self._files() if a.fd >= 0}:
            os.close(fd)
        for a in self._files():
            a.fd = -1

    def result(self) -> "Store":
        return Store(self.out)


def _refusal(out: Path, old: dict, new: dict) -> str:
    """Why a store folder cannot take this extraction: other weights, or other settings."""
    for name, rec in new.get("models", {}).items():
        was = old.get("models", {}).get(name) or {}
        if was.get("weights_fingerprint") and was.get("weights_fingerprint") != \
                rec.get("weights_fingerprint"):
            return (f"{out} was written by {name} with other weights ({was['weights_fingerprint'][:19]}"
                    f"... then, {rec['weights_fingerprint'][:19]}... now; seed {was.get('seed')} "
                    f"then, {rec.get('seed')} now): resuming would mix two models in one store; "
                    "choose another --out, or --overwrite to start over")
    diff = [k for k in set(old) | set(new) if old.get(k) != new.get(k)]
    return (f"{out} holds another extraction (settings differ in: {', '.join(sorted(diff))}); "
            "choose another --out, or --overwrite (overwrite=True) to extract again")


def _merge_records(a: list[dict], b: list[dict]) -> list[dict]:
    """Skip or note records of two writers, each listed once, in source order."""
    seen = {(r.get("index"), r.get("id")) for r in a}
    merged = list(a) + [r for r in b if (r.get("index"), r.get("id")) not in seen]
    return sorted(merged, key=lambda r: (r.get("index", -1), str(r.get("id"))))


class Store:
    """Read access to an extraction: memory-mapped arrays per model, layer and pooling, image
    ids, labels, and the skip list. Rows follow the source order; skipped rows are zero and
    `valid` is False there."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.exists():
            raise InputError(f"{self.path} is no zoolens store (no {MANIFEST}); "
                             "create one with `zoolens extract`")
        self.manifest = json.loads(mpath.read_text())
        self.config = self.manifest["config"]
        meta = json.loads((self.path / "ids.json").read_text())
        self.ids: list[str] = meta["ids"]
        self.labels = meta.get("labels")
        self.fingerprints: list[str] | None = meta.get("fingerprints")
        self.skipped: list[dict] = self.manifest["skipped"]
        self.complete: bool = self.manifest["complete"]
        self.valid = np.ones(len(self.ids), bool)
        self.valid[[s["index"] for s in self.skipped if "index" in s]] = False
        if not self.complete:  # rows of unfinished chunks hold nothing trustworthy
            done = set(self.manifest["done_chunks"])
            cs = self.config["chunk_size"]
            self.valid &= np.isin(np.arange(len(self.ids)) // cs, list(done))

    def __repr__(self) -> str:
        return (f"Store({str(self.path)!r}, images={len(self.ids)}, models={self.models}, "
                f"skipped={len(self.skipped)}, complete={self.complete})")

    @property
    def models(self) -> list[str]:
        return list(self.config["layers"])

    def layers(self, model: str) -> list[str]:
        return list(self._model(model))

    def _model(self, model: str) -> dict:
        if model not in self.config["layers"]:
            raise InputError(f"store {self.path} has no model {model!r}; have {', '.join(self.models)}")
        return self.config["layers"][model]

    def info(self, model: str, layer: str, pool: str | None = None) -> dict:
        """A layer's entry: its pooling ("pool"), per-image "shape", "file" and "tap" record;
        with `pool`, the entry of that pooling (requested or effective name)."""
        entry = self._model(model).get(layer)
        if entry is None:
            raise InputError(f"store {self.path} has no layer {layer!r} for {model}; "
                             f"have {', '.join(self.layers(model))}")
        if pool is None:
            return entry
        sub = self._pool_entry(model, layer, pool)
        if sub is not None:
            return {**entry, **sub}
        raise InputError(f"store {self.path} holds {model} {layer} pooled as "
                         f"{', '.join(self.pools(model, layer))}, not {pool!r}")

    def pools(self, model: str, layer: str) -> dict[str, dict]:
        """{requested pooling: {"pool" (the one applied), "shape", "file"}} of a layer."""
        entry = self._model(model)[layer]
        return entry.get("pools") or {entry.get("requested_pool", entry["pool"]): {
            "pool": entry["pool"], "shape": entry["shape"], "file": entry["file"]}}

    def _pool_entry(self, model: str, layer: str, how: str) -> dict | None:
        """The entry of the pooling `how` (requested or effective name) of a layer, or None."""
        for requested, sub in self.pools(model, layer).items():
            if how in (requested, sub["pool"]):
                return sub
        return None

    def features(self, model: str, layer: str, pool: str | None = None, *,
                 valid_only: bool = False) -> np.ndarray:
        """(n_images, *shape) memory-mapped, read-only; `pool` picks one of several poolings
        stored for the layer; `valid_only` drops skipped rows (a copy when any is dropped)."""
        arr = np.load(self.path / self.info(model, layer, pool)["file"], mmap_mode="r")
        return arr[self.valid] if valid_only and not self.valid.all() else arr

    def valid_ids(self) -> list[str]:
        return [i for i, ok in zip(self.ids, self.valid) if ok]

    @property
    def sizes(self) -> np.ndarray | None:
        """(n_images, 2) int32 decoded (height, width) of every image, memory-mapped (0 for
        skipped images); None for a store written before sizes were kept."""
        path = self.path / SIZES
        return np.load(path, mmap_mode="r") if path.exists() else None

    # -- serving a pass from disk --------------------------------------------------------
    def holds(self, need: Need) -> bool:
        """True when this complete store has every (model, layer, pooling) `need` asks for, and
        `need` wants nothing only a live pass has (decoded images, windows)."""
        if not self.complete or need.images or need.windows:
            return False
        for model, by_layer in need.taps.items():
            have = self.config["layers"].get(model, {})
            for layer, hows in by_layer.items():
                if layer not in have:
                    return False
                if any(self._pool_entry(model, layer, how) is None for how in hows):
                    return False
        return True

    def batches(self, need: Need, *, indices=None, batch_size: int = 256) -> Iterator[Batch]:
        """The stored features `need` asks for, as the engine's batches (float32 tensors), in
        source order (or the order of `indices`); skipped images come as skips."""
        order = list(range(len(self.ids))) if indices is None else [int(i) for i in indices]
        reasons = {s["index"]: s["reason"] for s in self.skipped if "index" in s}
        arrays = {(m, layer, how): self.features(m, layer, how)
                  for m, by in need.taps.items() for layer, hows in by.items() for how in hows}
        sizes = self.sizes
        for start in range(0, len(order), batch_size):
            part = order[start:start + batch_size]
            good = [i for i in part if self.valid[i]]
            features: dict = {}
            for (m, layer, how), arr in arrays.items():
                rows = torch.from_numpy(np.asarray(arr[good], dtype=np.float32))
                features.setdefault(m, {}).setdefault(layer, {})[how] = rows
            yield Batch(good, [self.ids[i] for i in good], features,
                        skipped=[{"index": i, "id": self.ids[i],
                                  "reason": reasons.get(i, "not extracted")}
                                 for i in part if not self.valid[i]],
                        sizes=[] if sizes is None else [tuple(map(int, sizes[i])) for i in good])


def open_store(path: str | Path) -> Store:
    """Open an extraction written by `zoolens.extract` / `zoolens extract`."""
    return Store(path)
