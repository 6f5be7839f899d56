"""The on-disk feature store: one preallocated `.npy` file per (model, layer, pooling), rows in
source order, written chunk by chunk; a JSON manifest records which chunks are finished.

Why npy files and not zarr: no extra dependency, NumPy memory-maps them natively, and one
preallocated file per layer makes resuming O(1) — a chunk is rewritten in place until the
manifest (replaced atomically, after the rows are flushed to disk) lists it as finished. An
interrupted run therefore never leaves a half-written chunk marked done, and a rerun with the
same settings skips finished chunks. Rows of skipped images stay zero and are flagged."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .engine import Batch
from .errors import InputError
from .taps import TapInfo, effective_pool, pooled_shape

__all__ = ["StoreWriter", "Store", "open_store", "MANIFEST"]

MANIFEST = "manifest.json"
_FORMAT = 1


def _slug(text: str) -> str:
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


@dataclass
class _Array:
    key: str  # "<model>|<layer>|<pool>"
    path: Path
    shape: tuple[int, ...]  # per image
    fd: int = -1
    offset: int = 0
    row_bytes: int = 0


class StoreWriter:
    """A sink writing pooled features to `out`. Creating it on a folder that holds an
    unfinished extraction with the same settings resumes it (`todo()` lists what is left)."""

    def __init__(self, out: str | Path, layers: dict[str, dict[str, TapInfo]],
                 pools: dict[str, dict[str, str]], *, ids: list[str], labels=None,
                 dtype: str = "float16", chunk_size: int = 256, config: dict | None = None,
                 listing_skips: list[dict] | None = None, overwrite: bool = False):
        if dtype not in ("float16", "float32"):
            raise InputError(f"dtype {dtype!r}: use float16 or float32")
        self.out = Path(out)
        self.dtype = np.dtype(dtype)
        self.chunk_size = chunk_size
        self.n = len(ids)
        arrays, entries = [], {}
        for model, by_layer in layers.items():
            entries[model] = {}
            for layer, info in by_layer.items():
                how = effective_pool(info, pools[model][layer])
                shape = pooled_shape(info, how)
                rel = f"{_slug(model)}/{_slug(layer)}.{how}.npy"
                arrays.append(_Array(f"{model}|{layer}|{pools[model][layer]}", self.out / rel, shape))
                entries[model][layer] = {"pool": how, "requested_pool": pools[model][layer],
                                         "shape": list(shape), "file": rel, "tap": info.to_json()}
        self.arrays = {a.key: a for a in arrays}
        self.config = {"format": _FORMAT, "n_images": self.n, "dtype": dtype,
                       "chunk_size": chunk_size, "layers": entries, **(config or {})}
        self.manifest = self._open(overwrite, ids, labels, listing_skips or [])
        self._remaining: dict[int, set[int]] = {}  # chunk -> indices not yet written or skipped
        self._chunk_skips: list[dict] = []  # skips and notes wait for their chunk to finish
        self._chunk_notes: list[dict] = []

    # -- creation and resumption -------------------------------------------------------
    def _open(self, overwrite: bool, ids, labels, listing_skips) -> dict:
        path = self.out / MANIFEST
        if path.exists() and not overwrite:
            old = json.loads(path.read_text())
            if old.get("config") != json.loads(json.dumps(self.config)):
                diff = [k for k in set(old.get("config", {})) | set(self.config)
                        if old.get("config", {}).get(k) != json.loads(json.dumps(self.config)).get(k)]
                raise InputError(f"{self.out} holds another extraction (settings differ in: "
                                 f"{', '.join(sorted(diff))}); choose another --out, or overwrite")
            for a in self.arrays.values():
                if not a.path.exists():
                    raise InputError(f"{self.out} is damaged: {a.path} is missing; overwrite it")
            self._open_files()
            return old
        self.out.mkdir(parents=True, exist_ok=True)
        for a in self.arrays.values():
            a.path.parent.mkdir(parents=True, exist_ok=True)
            # preallocated (sparse) and zero: rows of skipped images stay zero
            np.lib.format.open_memmap(a.path, mode="w+", dtype=self.dtype,
                                      shape=(self.n, *a.shape))._mmap.close()
        _write_json_atomic(self.out / "ids.json", {"ids": list(ids), "labels": labels})
        manifest = {"config": self.config, "done_chunks": [], "skipped": list(listing_skips),
                    "notes": [], "complete": False, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_json_atomic(path, manifest)
        self._open_files()
        return manifest

    def _open_files(self):
        for a in self.arrays.values():
            a.offset = _npy_header_size(a.path)
            a.row_bytes = int(np.prod(a.shape)) * self.dtype.itemsize
            a.fd = os.open(a.path, os.O_RDWR)

    def todo(self) -> list[int]:
        """Source indices of the chunks not yet finished."""
        done = set(self.manifest["done_chunks"])
        n_chunks = -(-self.n // self.chunk_size)
        return [i for c in range(n_chunks) if c not in done
                for i in range(c * self.chunk_size, min(self.n, (c + 1) * self.chunk_size))]

    # -- the sink ----------------------------------------------------------------------
    def update(self, batch: Batch) -> None:
        for model, by_layer in batch.features.items():
            for layer, by_pool in by_layer.items():
                for how, t in by_pool.items():
                    a = self.arrays.get(f"{model}|{layer}|{how}")
                    if a is not None:
                        self._write_rows(a, batch.indices, t)
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
        rows = t.detach().to("cpu").numpy().astype(self.dtype, copy=False)
        rows = np.ascontiguousarray(rows.reshape(len(indices), -1))
        start = 0
        for k in range(1, len(indices) + 1):  # one write per run of consecutive indices
            if k == len(indices) or indices[k] != indices[k - 1] + 1:
                os.pwrite(a.fd, rows[start:k].tobytes(), a.offset + indices[start] * a.row_bytes)
                start = k

    def _finish_chunk(self, chunk: int) -> None:
        for a in self.arrays.values():
            os.fsync(a.fd)
        lo, hi = chunk * self.chunk_size, (chunk + 1) * self.chunk_size
        take = lambda items: [s for s in items if lo <= s["index"] < hi]  # noqa: E731
        self.manifest["skipped"] += take(self._chunk_skips)
        self.manifest["notes"] += take(self._chunk_notes)
        self._chunk_skips = [s for s in self._chunk_skips if not lo <= s["index"] < hi]
        self._chunk_notes = [s for s in self._chunk_notes if not lo <= s["index"] < hi]
        self.manifest["done_chunks"] = sorted(set(self.manifest["done_chunks"]) | {chunk})
        self.manifest["complete"] = not self.todo()
        _write_json_atomic(self.out / MANIFEST, self.manifest)

    def close(self, **extra) -> None:
        """Close the files; `extra` (timings, say) goes into the manifest."""
        self.manifest.update(extra)
        self.manifest["complete"] = not self.todo()
        _write_json_atomic(self.out / MANIFEST, self.manifest)
        for a in self.arrays.values():
            if a.fd >= 0:
                os.close(a.fd)
                a.fd = -1


class Store:
    """Read access to an extraction: memory-mapped arrays per model and layer, image ids,
    labels, and the skip list. Rows follow the source order; skipped rows are zero and
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

    def info(self, model: str, layer: str) -> dict:
        entry = self._model(model).get(layer)
        if entry is None:
            raise InputError(f"store {self.path} has no layer {layer!r} for {model}; "
                             f"have {', '.join(self.layers(model))}")
        return entry

    def features(self, model: str, layer: str, *, valid_only: bool = False) -> np.ndarray:
        """(n_images, *shape) memory-mapped, read-only; `valid_only` drops skipped rows (a copy
        when any row is dropped)."""
        arr = np.load(self.path / self.info(model, layer)["file"], mmap_mode="r")
        return arr[self.valid] if valid_only and not self.valid.all() else arr

    def valid_ids(self) -> list[str]:
        return [i for i, ok in zip(self.ids, self.valid) if ok]


def open_store(path: str | Path) -> Store:
    """Open an extraction written by `zoolens.extract` / `zoolens extract`."""
    return Store(path)
