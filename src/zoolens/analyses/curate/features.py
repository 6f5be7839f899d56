"""The features a curate command works on: one model, one layer, one image set at a time.

Extract once, curate many ways. Each image set's features go to a feature store
(`zoolens.plan.extract`) at ``out/features/<model>/<images>/<layer>.<pool>/``, where ``<images>``
names the set by its folder and a fingerprint of its listing: every later curate command on the
same images (any step, any role: images, pool, reference, A or B) with the same ``--out`` finds it
and runs no model. An unfinished store is resumed. A store written earlier by ``zoolens extract``
is read with ``store=DIR`` when it holds the layer, computed by the same model (same weights)
from the same images; what it lacks is said, never written into it.

`ImageSet` is what the commands see: the usable rows (float32, memory-mapped when the store is
float32 and nothing was left out), the source position of each row, and the images not used
with the reason (could not be decoded; all-zero or non-finite features, which have no direction
for a cosine; left out by a `subset`).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np
from PIL import Image

from ... import plan
from ...backends import Backend
from ...errors import InputError
from ...sinks import Need
from ...sources import ImageSource, open_source
from ...store import Store, slug
from ...taps import OUTPUT, PENULTIMATE
from ...zoo.model import Model

__all__ = ["ImageSet", "image_set", "default_layer", "check_layer", "check_pool", "set_name",
           "read_ids", "decoded_sizes", "EMBEDDING_POOLS"]

log = logging.getLogger("zoolens")

EMBEDDING_POOLS = ("mean", "cls")  # a curate command needs one vector per image


def default_layer(model: Model) -> str:
    """The layer a curate command embeds images with when none is given: a classifier's
    penultimate features (its head's input; the logits describe the training classes, not the
    image), else the model's forward output (an embedding model's embedding), else its last
    block."""
    names = {i.name for i in model.layers()}
    if model.head is not None and PENULTIMATE in names:
        return PENULTIMATE
    if OUTPUT in names:
        return OUTPUT
    if model.blocks:
        return model.blocks[-1]
    raise InputError(f"{model.name}: no embedding layer found (no classifier head, no forward "
                     "output, no blocks); pass --layer NAME (see `zoolens layers`)")


def check_layer(model: Model, layer: str | None) -> str:
    """One layer of `model`: `layer` (a name, or a selector naming exactly one), or the
    default."""
    if layer is None:
        return default_layer(model)
    names = model.select(layer)  # unknown names raise, listing what exists
    if len(names) != 1:
        raise InputError(f"--layer {layer!r} names {len(names)} layers of {model.name} "
                         f"({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}); a curate "
                         "command embeds images with one layer: name one")
    return names[0]


def set_name(source: ImageSource) -> str:
    """A folder name for an image set: its folder's (or CSV's) name and 8 hex digits of its
    listing's fingerprint, so the same images get the same folder whatever the command."""
    kind, _, rest = source.description.partition(":")
    name = Path(rest).stem if kind in ("folder", "csv") and rest else (kind or "images")
    return f"{slug(name)}-{source.fingerprint()[:8]}"


def read_ids(path: str | Path, source: ImageSource, flag: str = "--subset") -> np.ndarray:
    """Positions in `source` of the ids listed in the first column of the CSV `path` (a header
    row ``id`` is skipped): e.g. the ``keep.csv`` a curate step wrote. Sorted; an id the source
    does not hold is an error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{flag} {str(path)!r}: no such file (give a CSV of image ids, e.g. "
                         "the keep.csv of a curate step)")
    where = {i: k for k, i in enumerate(source.ids)}
    found, unknown = [], []
    with open(path, newline="") as f:
        for k, row in enumerate(csv.reader(f)):
            if not row or (k == 0 and row[0].strip().lower() == "id"):
                continue
            i = row[0].strip()
            (found if i in where else unknown).append(where.get(i, i))
    if unknown:
        raise InputError(f"{flag} {str(path)!r}: {len(unknown)} id(s) are not among the images "
                         f"{source.description} (e.g. {unknown[0]!r}); ids are paths relative to "
                         "the image folder, as keep.csv writes them")
    if not found:
        raise InputError(f"{flag} {str(path)!r}: lists no ids")
    return np.unique(np.asarray(found, dtype=np.int64))


@dataclass
class ImageSet:
    """The features of one image set, as a curate command uses them.

    Attributes:
        role: what the set is to the command ("images", "reference", "queries", "pool", "a",
            "b").
        source: the images.
        store: the feature store the rows were read from.
        x: (n_used, d) float32 features of the usable images, in source order.
        rows: (n_used,) int64 source position of each row of `x`.
        skipped: ``{"index", "id", "reason"}`` of each image not used, in source order.
        excluded: source positions left out on purpose (not in `subset`); not listed as skipped.
    """

    role: str
    source: ImageSource
    store: Store
    x: np.ndarray
    rows: np.ndarray
    skipped: list[dict] = field(default_factory=list)
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def ids(self) -> list[str]:
        return self.source.ids

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, index: int) -> Image.Image:
        """The decoded image at source position `index` (for contact sheets)."""
        return self.source.decode(int(index)).image

    def row_ids(self, rows) -> list[str]:
        """Ids of rows of `x` (positions in `x`, not in the source)."""
        return [self.source.ids[int(self.rows[r])] for r in np.asarray(rows).ravel()]

    def to_source(self, rows) -> np.ndarray:
        """Rows of `x` -> source positions; -1 (padding in the array results) stays -1."""
        r = np.asarray(rows, dtype=np.int64)
        if not len(self.rows):
            return np.full(r.shape, -1, np.int64)
        return np.where(r >= 0, self.rows[np.maximum(r, 0)], -1)

    def describe(self, out: Path) -> dict:
        """The set's entry in a result's settings."""
        path = self.store.path
        try:
            path = path.resolve().relative_to(out.resolve())
        except ValueError:
            pass
        return {"source": self.source.description, "images": len(self.source),
                "used": len(self.rows), "skipped": len(self.skipped),
                "excluded": len(self.excluded), "store": str(path)}


def _mismatch(path: Path, model: Model, source: ImageSource, layer: str,
              pool: str) -> str | None:
    """Why the store at `path` cannot serve `layer` of `model` on `source`; None if it can."""
    st = Store(path)  # raises when the folder is no store
    if model.name not in st.models:
        return (f"holds the features of {', '.join(st.models)}, not of {model.name} (name the "
                "model as the store does: -m NAME=SPEC)")
    if layer not in st.layers(model.name):
        return (f"holds the layers {', '.join(st.layers(model.name))} of {model.name}, not "
                f"{layer} (pass --layer one of them)")
    names = {n for r, sub in st.pools(model.name, layer).items() for n in (r, sub["pool"])}
    if pool not in names:
        return f"holds {layer} pooled as {', '.join(sorted(names))}, not {pool} (pass --pool)"
    if st.config.get("source_fingerprint") != source.fingerprint():
        return (f"was extracted from other images ({st.config.get('source')}), not from "
                f"{source.description}")
    have = st.config.get("models", {}).get(model.name, {})
    if plan.store_config([model], source)["models"][model.name] != have:
        return (f"was extracted with other weights of {model.name} (seed {have.get('seed')}, "
                f"{str(have.get('weights_fingerprint'))[:19]}...)")
    if not st.complete:
        return "is unfinished: finish it with the `zoolens extract` command that made it"
    return ("was extracted before some of the images changed: extract again (`zoolens "
            "extract --overwrite`), or leave --store out")


def _usable(arr: np.ndarray, valid: np.ndarray, block: int = 1 << 14) -> np.ndarray:
    """Mask of the valid rows whose features are finite and not all zero (block by block: a
    memory-mapped store is not read whole)."""
    ok = valid.copy()
    for s in range(0, len(arr), block):
        b = np.asarray(arr[s:s + block])
        ok[s:s + block] &= np.isfinite(b).all(1) & (b != 0).any(1)
    return ok


def image_set(model: Model, images, role: str, *, layer: str, pool: str, out: Path,
              store: str | Path | None = None, subset: str | Path | None = None,
              source: ImageSource | None = None, batch_size: int = 32, device=None,
              backend: Backend | None = None, dtype: str = "float32", overwrite: bool = False,
              progress: bool = True) -> ImageSet:
    """The features of `images` at `layer` of `model`, from (or written to) a feature store.

    Args:
        model: a loaded model.
        images: anything `open_source` takes (or give `source`, opened already).
        role: the set's role, for messages and the result's settings.
        layer: one layer name of `model`; pool: "mean" or "cls".
        out: the command's folder; the store defaults to
            ``out/features/<model>/<images>/<layer>.<pool>/``.
        store: a store folder to read (it must hold these features of these images) or, when
            the folder does not exist yet, to write.
        subset: a CSV of ids (e.g. a keep.csv): only those images are used.
        batch_size, device, backend, dtype, overwrite, progress: the extraction
            (`zoolens.plan.extract`; `backend` carries its workers).
    """
    source = source if source is not None else open_source(images)
    if len(source) == 0:
        raise InputError(f"{role} {images!r}: holds no images")
    chosen = read_ids(subset, source) if subset is not None else None
    pools = {model.name: {layer: [pool]}}
    if store is not None and (Path(store) / "manifest.json").exists():
        path = Path(store)
        held = plan.reusable_store(path, [model], source, Need({model.name: {layer: {pool}}}))
        if held is None:
            raise InputError(f"--store {str(path)!r} cannot give the {role} features: it "
                             f"{_mismatch(path, model, source, layer, pool)}")
    else:
        options = dict(batch_size=batch_size, dtype=dtype, overwrite=overwrite, device=device,
                       backend=backend, progress=progress)
        if store is not None:  # a new folder the user named
            log.info("%s: %s features (%s, %s) -> %s", model.name, role, layer, pool, store)
            held = plan.extract([model], source, pools, Path(store), **options)
        else:  # one store per image set and layer, whatever the role: any step reuses it
            split = f"{set_name(source)}/{layer}.{pool}"
            held = plan.extract_splits(model, {split: source}, pools[model.name],
                                       Path(out) / "features" / slug(model.name),
                                       **options)[split]
    arr = held.features(model.name, layer, pool)
    if arr.ndim != 2:
        raise InputError(f"{held.path}: {model.name} {layer} is stored with shape "
                         f"{arr.shape[1:]} per image, not as one vector; pass --pool mean or cls")
    ok = _usable(arr, held.valid)
    excluded = np.zeros(0, np.int64)
    if chosen is not None:
        wanted = np.zeros(len(ok), bool)
        wanted[chosen] = True
        excluded = np.flatnonzero(~wanted)
        ok &= wanted
    reasons = {s["index"]: s["reason"] for s in held.skipped if "index" in s}
    skipped = []
    for i in np.flatnonzero(~ok):
        if chosen is not None and not wanted[i]:
            continue
        why = reasons.get(int(i)) or ("not extracted" if not held.valid[i] else
                                      f"its {layer} features are all zero or not finite (no "
                                      "direction for a cosine similarity)")
        skipped.append({"index": int(i), "id": held.ids[i], "reason": why})
    if chosen is None:  # files never decoded (not images, broken links) have no row
        skipped += [{"index": None, "id": s["id"], "reason": s["reason"]}
                    for s in source.skipped_at_listing]
    rows = np.flatnonzero(ok)
    # read in place when nothing is left out and the store is float32; else one float32 copy
    x = arr if ok.all() and arr.dtype == np.float32 else np.asarray(arr[rows], np.float32)
    return ImageSet(role=role, source=source, store=held, x=x, rows=rows, skipped=skipped,
                    excluded=excluded)


def check_pool(pool: str) -> str:
    if pool not in EMBEDDING_POOLS:
        raise InputError(f"--pool {pool!r}: use one of {', '.join(EMBEDDING_POOLS)} (a curate "
                         "command needs one vector per image)")
    return pool


def decoded_sizes(images: ImageSet) -> np.ndarray:
    """(n_used, 2) int decoded (height, width) of the used images, from their store."""
    sizes = images.store.sizes
    if sizes is None:
        raise InputError(f"--keep resolution needs each image's decoded size, which the store "
                         f"{images.store.path} does not hold (it was written before zoolens kept "
                         "sizes): extract it again, or use --keep centroid or first")
    picked = np.asarray(sizes[images.rows], dtype=np.int64)
    unknown = np.flatnonzero((picked <= 0).any(1))
    if len(unknown):
        raise InputError(f"the store {images.store.path} has no size for "
                         f"{images.row_ids(unknown[:1])[0]} ({len(unknown)} image(s)): extract "
                         "it again, or use --keep centroid or first")
    return picked
