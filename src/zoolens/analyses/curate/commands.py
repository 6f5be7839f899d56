"""The curate commands: images in, files out. One function per step of DINOv2's curation, and
one that compares two image sets; each embeds the images with one layer of one model (features
through the planner and a feature store: see `features`), runs the array function of this
package on them, and writes its outputs.

- `dedup`: near-duplicate groups (`deduplicate`), one image kept per group; optionally every
  group touching a reference set (an evaluation set) dropped.
- `sample`: a balanced sample of a budget of images from a hierarchical k-means
  (`hierarchical_kmeans`, `balanced_sample`).
- `retrieve`: pool images close to a set of queries (`retrieve_nearest`, or
  `retrieve_by_clusters`).
- `find_prototypes`: k-means prototypes and their medoids (`prototypes`).
- `datasets`: how two image sets differ (`compare_datasets`).

A curate step writes ``out/<step>/``: ``curate.json`` (``"analysis": "curate"``, ``"step"``),
``keep.csv`` (the ids to keep, one per line under the header ``id``, in source order), the
step's own CSVs, ``skipped.csv`` (images that could not be used, with the reason) and a contact
sheet ``<step>.png``. Steps live in their own folders so that several steps can share one
``out`` and its feature stores (``out/features``): a later step on the same images extracts
nothing. `datasets` writes ``out/datasets.json`` (``"analysis": "datasets"``), ``clusters.csv``,
``skipped.csv`` and ``datasets.png``.

Indices in a result (``result.kept``, ``result.groups`` ...) are positions in the image source
(``source.ids[i]`` is the id; the store's ``ids.json`` lists them), never rows of a feature
array: images that could not be used are left out of the arrays and listed in ``skipped``.
Per-image arrays over the used images (``Prototypes.labels``, ``ClusterRetrieval.query_clusters``,
the rows of ``Retrieval.neighbors``) follow the used images in source order.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from ...backends import Backend, resolve_backend
from ...errors import InputError
from ...neighbors import inverse_norms
from ...sources import ImageSource, open_source
from ...zoo.model import Model
from ...zoo.registry import as_models
from ..result import AnalysisResult
from ._result import _plain
from .compare import DatasetComparison, compare_datasets
from .duplicates import KEEP_RULES, DedupResult, deduplicate
from .features import ImageSet, check_layer, check_pool, decoded_sizes, image_set
from .clustering import hierarchical_kmeans, kmeans
from .centroids import Prototypes, prototypes
from .retrieval import ClusterRetrieval, Retrieval, retrieve_by_clusters, retrieve_nearest
from .sampling import BalancedSample, balanced_sample
from .sheet import contact_sheet, dedup_sheet, prototype_sheet, shared_prototype_sheet

__all__ = ["CurateResult", "DatasetsResult", "dedup", "sample", "retrieve", "find_prototypes",
           "datasets", "STEPS", "RETRIEVE_MODES"]

log = logging.getLogger("zoolens")

STEPS = ("dedup", "sample", "retrieve", "prototypes")
RETRIEVE_MODES = ("nearest", "clusters")
_TABLE_ROWS = 500  # rows of a result table kept in the JSON (the report shows as many)
_SHOWN = 8         # images per row of a table and of a contact sheet
_DTYPES = ("float16", "float32")


# ----------------------------------------------------------------------------------------------
# results


@dataclass(kw_only=True)
class _ImageSetResult(AnalysisResult):
    """The fields every curate step and `datasets` share: counts, tables, settings, skipped
    images, files written and notes (see `CurateResult`)."""

    counts: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def _n_skipped(self) -> str:
        n = sum(len(v) for v in self.skipped.values())
        return f"; {n} image(s) skipped (skipped.csv)" if n else ""

    def _shared_dict(self) -> dict:
        return {"analysis": self.analysis, "version": 1, "summary": self.summary(),
                "counts": _plain(self.counts), "settings": _plain(self.settings),
                "tables": _plain(self.tables), "files": dict(self.files),
                "skipped": _plain(self.skipped), "notes": list(self.notes)}

    @staticmethod
    def _shared_fields(d: dict) -> dict:
        return {k: d.get(k, {}) for k in ("counts", "tables", "settings", "skipped", "files")} \
            | {"notes": d.get("notes", [])}

    @classmethod
    def derived_keys(cls) -> tuple[str, ...]:
        return ("summary",)


@dataclass
class CurateResult(_ImageSetResult):
    """What a curate step found, and where it wrote it.

    Attributes:
        step: "dedup", "sample", "retrieve" or "prototypes".
        result: the array function's result (`DedupResult`, `BalancedSample`, `Retrieval` or
            `ClusterRetrieval`, `Prototypes`) with indices turned into source positions.
        counts: the numbers a reader wants first (images, used, skipped, kept, removed ...).
        tables: named tables for the report (``groups``, ``clusters``, ``queries``,
            ``prototypes``): one dict per row, ids not positions, at most 500 rows each (the
            CSVs hold all).
        settings: the model (spec, seed, weights fingerprint), layer, pooling, each image set
            (source, images, used, store) and the step's parameters.
        skipped: per image set (role), ``{"index", "id", "reason"}`` of each image not used.
        files: the files written, relative to the JSON's folder.
        notes: plain sentences (a budget above the images available, ...).
    """

    step: str
    result: Any

    analysis: ClassVar[str] = "curate"

    def summary(self) -> str:
        c = self.counts
        head = f"{self.step}: {c.get('used', 0)} of {c.get('images', 0)} images"
        parts = {"dedup": lambda: f"{c['groups']} duplicate groups, kept {c['kept']}, removed "
                                  f"{c['removed']}",
                 "sample": lambda: f"sampled {c['sampled']} (budget {c['budget']})",
                 "retrieve": lambda: f"retrieved {c['retrieved']} pool images for "
                                     f"{c['queries_used']} queries",
                 "prototypes": lambda: f"{c['prototypes']} prototypes"}
        return f"{head}; {parts[self.step]()}{self._n_skipped()}"

    def to_dict(self) -> dict:
        return self._shared_dict() | {"step": self.step, "result": self.result.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "CurateResult":
        step = d["step"]
        kind = {"dedup": DedupResult, "sample": BalancedSample, "prototypes": Prototypes,
                "retrieve": ClusterRetrieval if d.get("settings", {}).get("mode") == "clusters"
                else Retrieval}[step]
        return cls(step=step, result=kind.from_dict(d["result"]), **cls._shared_fields(d))


@dataclass
class DatasetsResult(_ImageSetResult):
    """How two image sets differ (`datasets`); the fields as in `CurateResult`, with
    `comparison` the `DatasetComparison` (prototype examples as source positions of each set)
    and `names` the two sets' names."""

    comparison: DatasetComparison
    names: tuple = ("A", "B")

    analysis: ClassVar[str] = "datasets"

    def summary(self) -> str:
        c, (a, b) = self.counts, self.names
        return (f"{a} ({c['used_a']} images) vs {b} ({c['used_b']}): Frechet distance "
                f"{c['frechet']:.4g}, precision {c['precision']:.3f}, recall {c['recall']:.3f}, "
                f"density {c['density']:.3f}, coverage {c['coverage']:.3f}; {c['only_a']} "
                f"clusters only in {a}, {c['only_b']} only in {b}{self._n_skipped()}")

    def to_dict(self) -> dict:
        return self._shared_dict() | {"names": list(self.names),
                                      "result": self.comparison.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetsResult":
        return cls(comparison=DatasetComparison.from_dict(d["result"]),
                   names=tuple(d.get("names", ("A", "B"))), **cls._shared_fields(d))


# ----------------------------------------------------------------------------------------------
# checks at the edge: before any model is loaded or any file written


def _positive(value, flag: str, *, allow_none: bool = False, low: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"{flag} {value!r}: give an integer >= {low}")
    return int(value)


def _cosine(value, flag: str) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    if not -1.0 < t < 1.0:
        raise InputError(f"{flag} {value!r}: give a cosine similarity between -1 and 1 "
                         "(exclusive), e.g. 0.9")
    return t


def _levels(levels) -> list[int] | None:
    """``"100,10"`` or a sequence -> clusters per level, bottom first, each at most the one
    below (a level clusters the centroids of the level below)."""
    if levels is None:
        return None
    try:
        ks = ([int(v) for v in levels.split(",") if v.strip()] if isinstance(levels, str)
              else [int(v) for v in levels])
    except (TypeError, ValueError):
        ks = []
    if not ks or min(ks) < 1:
        raise InputError(f"--levels {levels!r}: give clusters per level, bottom first, as "
                         "positive integers, e.g. 100,10")
    if any(b > a for a, b in zip(ks, ks[1:])):
        raise InputError(f"--levels {levels!r}: each level clusters the centroids of the one "
                         "below, so it has at most as many clusters (e.g. 100,10)")
    return ks


def _common(out, pool: str, dtype: str) -> Path:
    if out is None:
        raise InputError("out: give a folder for the results and the feature stores (--out)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is a file; give a folder (it is created if "
                         "missing)")
    check_pool(pool)
    if dtype not in _DTYPES:
        raise InputError(f"--dtype {dtype!r}: use float16 or float32")
    return out


def _open(images, flag: str) -> ImageSource:
    """The image source, opened before any model runs; its errors name the flag."""
    try:
        source = open_source(images)
    except InputError as exc:
        raise InputError(f"{flag}: {exc}") from None
    if len(source) == 0:
        raise InputError(f"{flag} {images!r}: holds no images")
    return source


def _one_model(model, *, pretrained: bool, device, seed: int, layer: str | None,
               backend: Backend) -> tuple[Model, str]:
    models = as_models(model, pretrained=pretrained, device=backend.load_device(device),
                       seed=seed)
    if len(models) != 1:
        raise InputError(f"--model: a curate command embeds the images with one model; got "
                         f"{len(models)} ({', '.join(m.name for m in models)})")
    return models[0], check_layer(models[0], layer)


def _embed(model, sets: Sequence[tuple], *, layer: str | None, pool: str, out: Path,
           pretrained: bool, device, seed: int, backend, num_workers, batch_size: int,
           dtype: str, overwrite: bool, progress: bool) -> tuple[Model, str, list]:
    """Every image set opened first (an error names its flag, before any model loads), then
    the one model loaded and each set embedded at `layer` (read from its store where given).

    `sets`: ``(images, role, flag, store, subset)`` per set; ``images=None`` (an optional set
    left out) gives None."""
    sources = [_open(images, flag) if images is not None else None
               for images, _, flag, _, _ in sets]
    runner = resolve_backend(backend, num_workers=num_workers)
    m, layer = _one_model(model, pretrained=pretrained, device=device, seed=seed, layer=layer,
                          backend=runner)
    ext = dict(layer=layer, pool=pool, out=out, batch_size=batch_size, device=device,
               backend=runner, dtype=dtype, overwrite=overwrite, progress=progress)
    return m, layer, [image_set(m, images, role, source=src, store=store, subset=subset, **ext)
                      if src is not None else None
                      for (images, role, _, store, subset), src in zip(sets, sources)]


def _need_images(s: ImageSet, at_least: int = 1, why: str = "") -> None:
    if len(s) < at_least:
        first = (f"; {len(s.skipped)} skipped, e.g. {s.skipped[0]['id']}: "
                 f"{s.skipped[0]['reason']}" if s.skipped else "")
        raise InputError(f"{s.role}: {len(s)} usable image(s) of {len(s.source)} "
                         f"({s.source.description}){why}{first}")


# ----------------------------------------------------------------------------------------------
# writing


def _short(text: str, n: int = 15) -> str:
    """The end of an id (its file name first), at most `n` characters, for thumbnails."""
    name = text.rsplit("/", 1)[-1]
    return name if len(name) <= n else "…" + name[-(n - 1):]


def _write_csv(path: Path, header: Sequence[str], rows) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path.name


def _write_ids(path: Path, ids: Sequence[str]) -> str:
    return _write_csv(path, ["id"], ([i] for i in ids))


def _write_skipped(folder: Path, sets: Sequence[ImageSet], files: dict) -> None:
    rows = [(s.role, x["id"], x["reason"]) for s in sets for x in s.skipped]
    files["skipped"] = _write_csv(folder / "skipped.csv", ["set", "id", "reason"], rows)


def _sheet(draw: Callable[[Path], Any], folder: Path, name: str, files: dict,
           notes: list[str]) -> None:
    """Draw a contact sheet, or say why there is none: a sheet is a view, never a failure."""
    path = folder / name
    try:
        draw(path)
    except Exception as exc:  # an image that no longer decodes: the results still stand
        notes.append(f"contact sheet {name} not drawn: {type(exc).__name__}: {exc}")
        return
    files["sheet"] = name


def _settings(model: Model, layer: str, pool: str, sets: Sequence[ImageSet], out: Path,
              **params) -> dict:
    return {"model": model.name, "spec": model.spec, "weights": model.record(), "layer": layer,
            "pool": pool, "sets": {s.role: s.describe(out) for s in sets}, **params}


def _skipped(sets: Sequence[ImageSet]) -> dict:
    return {s.role: list(s.skipped) for s in sets}


def _set_counts(s: ImageSet, suffix: str = "") -> dict:
    return {f"images{suffix}": len(s.source), f"used{suffix}": len(s),
            f"skipped{suffix}": len(s.skipped), f"excluded{suffix}": len(s.excluded)}


def _finish(result, folder: Path, name: str):
    result.files["json"] = name
    (folder / name).write_text(result.to_json(indent=1))
    return result


@contextlib.contextmanager
def _noted(notes: list[str]):
    """Warnings of the array functions (a budget above the images available ...) become
    notes of the result."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if str(w.message) not in notes:
            notes.append(str(w.message))


# ----------------------------------------------------------------------------------------------
# dedup


def dedup(model, images, *, threshold: float = 0.9, keep: str = "centroid", reference=None,
          reference_threshold: float | None = None, max_neighbors: int | None = None,
          layer: str | None = None, pool: str = "mean", subset: str | Path | None = None,
          out: str | Path | None = None, store: str | Path | None = None,
          reference_store: str | Path | None = None, seed: int = 0, pretrained: bool = True,
          batch_size: int = 32, device=None, num_workers: int | None = None,
          dtype: str = "float32", overwrite: bool = False, sheet: bool = True,
          progress: bool = True, backend: str | Backend | None = None) -> CurateResult:
    """Find near-duplicate images and keep one per group (DINOv2's deduplication, exact).

    Every pair of images whose embeddings have a cosine similarity above `threshold` is linked
    (found exactly, without an n x n matrix); groups are the connected components of the links;
    each group keeps one image, the others are removed. With a `reference` set (e.g. your
    evaluation images), every image above `reference_threshold` to a reference image is removed
    with its whole group.

    Args:
        model: one spec or `Model` (``NAME=SPEC`` names it).
        images: the images (a folder, a CSV of path,label, a .txt of paths, ...).
        threshold: cosine similarity above which two images are duplicates. It depends on the
            features: DINOv2 linked at 0.6 with copy-detection features (SSCD); generic
            embeddings put near-copies above about 0.9. The contact sheet shows what it found.
        keep: which image a group keeps: "centroid" (nearest the group's mean embedding),
            "first" (first in source order) or "resolution" (most decoded pixels; ties: the
            first).
        reference: a reference image set; reference_threshold: its threshold (default
            `threshold`; DINOv2 used 0.45 against its evaluation sets).
        max_neighbors: link each image only to its k most similar ones (DINOv2: 64); None
            links every pair above the threshold.
        layer: the embedding layer (default: a classifier's penultimate features, else the
            model's output, else its last block); pool: "mean" or "cls".
        subset: a CSV of ids (e.g. another step's keep.csv): only those images.
        out: the folder; this step writes ``out/dedup/``, features go to ``out/features/``.
        store, reference_store: feature stores to read the features from (``zoolens
            extract``), or to write them to when the folder does not exist.
        seed: random weights' seed (and the pruning clustering's, which never changes the
            answer).
        pretrained, batch_size, device, num_workers, dtype, overwrite, progress: extraction.
        backend: where the models run: "local", "ray" or a `zoolens.RayBackend`
            (`num_workers` then counts its model workers); the stores are written here.
        sheet: draw ``dedup.png``.

    Returns:
        A `CurateResult` (``result``: a `DedupResult`), written to ``out/dedup/curate.json``
        with ``keep.csv``, ``removed.csv`` (id, reason, group, kept id, reference id,
        similarity), ``groups.csv`` (group, id, kept) and ``skipped.csv``.
    """
    out = _common(out, pool, dtype)
    threshold = _cosine(threshold, "--threshold")
    if keep not in KEEP_RULES:
        raise InputError(f"--keep {keep!r}: use one of {', '.join(KEEP_RULES)}")
    if reference_threshold is not None:
        if reference is None:
            raise InputError("--reference-threshold: given without --reference")
        reference_threshold = _cosine(reference_threshold, "--reference-threshold")
    if reference_store is not None and reference is None:
        raise InputError("--reference-store: given without --reference")
    max_neighbors = _positive(max_neighbors, "--max-neighbors", allow_none=True)
    m, layer, (imgs, ref) = _embed(
        model, [(images, "images", "--images", store, subset),
                (reference, "reference", "--reference", reference_store, None)],
        layer=layer, pool=pool, out=out, pretrained=pretrained, device=device, seed=seed,
        backend=backend, num_workers=num_workers, batch_size=batch_size, dtype=dtype,
        overwrite=overwrite, progress=progress)
    _need_images(imgs)
    if ref is not None:
        _need_images(ref)
    sizes = decoded_sizes(imgs) if keep == "resolution" else None
    notes: list[str] = []
    with _noted(notes):
        res = deduplicate(imgs.x, threshold, keep=keep, resolution=sizes,
                          max_neighbors=max_neighbors, reference=None if ref is None else ref.x,
                          reference_threshold=reference_threshold, seed=seed)
    folder = out / "dedup"
    folder.mkdir(parents=True, exist_ok=True)
    files: dict = {}
    files["keep"] = _write_ids(folder / "keep.csv", imgs.row_ids(res.kept))
    files["removed"] = _write_csv(folder / "removed.csv", ["id", "reason", "group", "kept_id",
                                                            "reference_id", "similarity"],
                                  _removed_rows(res, imgs, ref))
    found = _dedup_to_source(res, imgs, ref)
    files["groups"] = _write_csv(folder / "groups.csv", ["group", "id", "kept"],
                                 ((g, imgs.ids[i], int(i == k))
                                  for g, (members, k) in enumerate(zip(found.groups,
                                                                       found.group_kept))
                                  for i in members))
    _write_skipped(folder, [s for s in (imgs, ref) if s is not None], files)
    label = lambda i: _short(imgs.ids[i])  # noqa: E731
    if sheet and found.groups:
        _sheet(lambda p: dedup_sheet(found, imgs.image, p, label=label), folder, "dedup.png",
               files, notes)
    elif sheet:
        notes.append(f"no duplicate groups above cosine {threshold}: no contact sheet")
    sets = [s for s in (imgs, ref) if s is not None]
    counts = {**_set_counts(imgs), "groups": len(res.groups),
              "in_groups": int(sum(len(g) for g in res.groups)), "kept": len(res.kept),
              "removed": len(res.removed),
              "duplicates_removed": int(sum(len(g) - 1 for g, k in zip(res.groups, res.group_kept)
                                            if k >= 0)),
              "contaminated": len(res.contaminated), "pairs": len(res.pairs)}
    if ref is not None:
        counts.update(_set_counts(ref, "_reference"))
    table = []
    for g, (members, k) in enumerate(zip(found.groups[:_TABLE_ROWS],
                                         found.group_kept[:_TABLE_ROWS])):
        order = ([int(k)] if k >= 0 else []) + [int(i) for i in members if i != k]
        table.append({"group": g, "images": len(members),
                      "kept": imgs.ids[k] if k >= 0 else None,
                      "members": [imgs.ids[i] for i in order[:_SHOWN]]})
    tables = {"groups": table}
    if ref is not None and len(found.contaminated):
        tables["contaminated"] = [
            {"id": imgs.ids[i], "reference": ref.ids[r], "similarity": float(s)}
            for i, r, s in zip(found.contaminated[:_TABLE_ROWS],
                               found.contaminated_reference[:_TABLE_ROWS],
                               found.contaminated_similarity[:_TABLE_ROWS])]
    result = CurateResult(
        step="dedup", result=found, counts=counts, tables=tables,
        settings=_settings(m, layer, pool, sets, out, threshold=threshold, keep=keep,
                           max_neighbors=max_neighbors,
                           reference_threshold=res.reference_threshold, seed=seed,
                           subset=None if subset is None else str(subset),
                           search=res.stats),
        skipped=_skipped(sets), files=files, notes=notes)
    return _finish(result, folder, "curate.json")


def _dedup_to_source(res: DedupResult, imgs: ImageSet, ref: ImageSet | None) -> DedupResult:
    """`res` with feature rows turned into source positions."""
    return replace(res, groups=[imgs.to_source(g) for g in res.groups],
                   group_kept=imgs.to_source(res.group_kept), kept=imgs.to_source(res.kept),
                   removed=imgs.to_source(res.removed),
                   pairs=imgs.to_source(res.pairs).reshape(-1, 2),
                   contaminated=imgs.to_source(res.contaminated),
                   contaminated_reference=(ref.to_source(res.contaminated_reference)
                                           if ref is not None else res.contaminated_reference))


def _removed_rows(res: DedupResult, imgs: ImageSet, ref: ImageSet | None) -> list[tuple]:
    """One row per removed image, in source order: why it goes, and next to what."""
    group_of = {int(i): g for g, members in enumerate(res.groups) for i in members}
    dirty = {int(i): (int(r), float(s)) for i, r, s in zip(
        res.contaminated, res.contaminated_reference, res.contaminated_similarity)}
    # cosine of each removed duplicate with the image its group keeps (float64, exact rows)
    dup = np.array([i for i in res.removed if int(i) not in dirty
                    and res.group_kept[group_of[int(i)]] >= 0], dtype=np.int64)
    kept_of = res.group_kept[[group_of[int(i)] for i in dup]] if len(dup) else dup
    sims = {}
    if len(dup):
        a = np.asarray(imgs.x[dup], np.float64)
        b = np.asarray(imgs.x[kept_of], np.float64)
        # norms of the gathered rows only, row by row as `inverse_norms` of all rows gives them
        cos = np.einsum("ij,ij->i", a, b) * inverse_norms(a, "features") \
            * inverse_norms(b, "features")
        sims = dict(zip(dup.tolist(), cos.tolist()))
    rows = []
    for i in res.removed:  # sorted rows = source order
        i = int(i)
        g = group_of.get(i)
        if i in dirty:
            r, s = dirty[i]
            rows.append((imgs.row_ids([i])[0], "matches the reference", "" if g is None else g,
                         "", ref.row_ids([r])[0] if ref is not None else "", f"{s:.6f}"))
        elif res.group_kept[g] < 0:
            rows.append((imgs.row_ids([i])[0], "in a group that matches the reference", g, "",
                         "", ""))
        else:
            rows.append((imgs.row_ids([i])[0], "duplicate", g,
                         imgs.row_ids([res.group_kept[g]])[0], "", f"{sims[i]:.6f}"))
    return rows


# ----------------------------------------------------------------------------------------------
# sample


def sample(model, images, *, budget: int, levels: str | Sequence[int] | None = None,
           strategy: str = "random", resampling_steps: int = 10,
           sample_size: int | None = None, spherical: bool = True, layer: str | None = None,
           pool: str = "mean", subset: str | Path | None = None, out: str | Path | None = None,
           store: str | Path | None = None, seed: int = 0, pretrained: bool = True,
           batch_size: int = 32, device=None, num_workers: int | None = None,
           dtype: str = "float32", overwrite: bool = False, sheet: bool = True,
           progress: bool = True, backend: str | Backend | None = None) -> CurateResult:
    """Draw a sample of `budget` images balanced over the concepts of the data (DINOv2 /
    ssl-data-curation: hierarchical k-means, then the budget split top-down by water-filling).

    Args:
        model, images, layer, pool, subset, out, store, pretrained, batch_size, device,
            num_workers, dtype, overwrite, progress, sheet, backend: as in `dedup` (this step writes
            ``out/sample/``; ``subset`` takes e.g. ``out/dedup/keep.csv`` to sample from the
            images dedup kept).
        budget: how many images to draw (all of them, with a note, when it exceeds them).
        levels: clusters per level, bottom first (``"1000,100"`` or a sequence); default one
            level of round(sqrt(n)) clusters.
        strategy: "random" (a seeded draw inside each bottom cluster) or "closest" (the images
            nearest its centroid first).
        resampling_steps, sample_size: the hierarchical k-means' resampling (per level or one
            value; see `hierarchical_kmeans`).
        spherical: cluster by cosine similarity (default; False: Euclidean, as the reference).
        seed: one seed for the clustering, the draws and random weights: the same seed gives
            the same sample.

    Returns:
        A `CurateResult` (``result``: a `BalancedSample`), written to ``out/sample/curate.json``
        with ``keep.csv`` (the sample), ``clusters.csv`` (every used image: its cluster at each
        level, and whether it was sampled) and ``skipped.csv``.
    """
    out = _common(out, pool, dtype)
    budget = _positive(budget, "--budget")
    ks = _levels(levels)
    if strategy not in ("random", "closest"):
        raise InputError(f"--strategy {strategy!r}: use random or closest")
    resampling_steps = _positive(resampling_steps, "--resampling-steps", low=0)
    sample_size = _positive(sample_size, "--sample-size", allow_none=True)
    m, layer, (imgs,) = _embed(
        model, [(images, "images", "--images", store, subset)],
        layer=layer, pool=pool, out=out, pretrained=pretrained, device=device, seed=seed,
        backend=backend, num_workers=num_workers, batch_size=batch_size, dtype=dtype,
        overwrite=overwrite, progress=progress)
    _need_images(imgs)
    n = len(imgs)
    ks = ks or [max(1, min(n, round(math.sqrt(n))))]
    if ks[0] > n:
        raise InputError(f"--levels: {ks[0]} clusters at the first level for {n} usable images; "
                         f"give at most {n}")
    notes: list[str] = []
    with _noted(notes):
        h = hierarchical_kmeans(imgs.x, ks, spherical=spherical,
                                resampling_steps=resampling_steps, sample_size=sample_size,
                                seed=seed)
        drawn = balanced_sample(h, budget, strategy=strategy, seed=seed)
    folder = out / "sample"
    folder.mkdir(parents=True, exist_ok=True)
    files: dict = {}
    files["keep"] = _write_ids(folder / "keep.csv", imgs.row_ids(drawn.indices))
    labels = [h.data_labels(lv) for lv in range(len(ks))]
    picked = np.zeros(n, dtype=bool)
    picked[drawn.indices] = True
    files["clusters"] = _write_csv(
        folder / "clusters.csv", ["id"] + [f"level_{lv + 1}" for lv in range(len(ks))]
        + ["sampled"], ((imgs.ids[int(r)], *(int(lab[j]) for lab in labels), int(picked[j]))
                        for j, r in enumerate(imgs.rows)))
    _write_skipped(folder, [imgs], files)
    top = labels[-1]
    sizes = np.bincount(top, minlength=len(drawn.top_counts))
    order = np.lexsort((np.arange(len(sizes)), -sizes))  # largest clusters first
    taken = {c: imgs.to_source(drawn.indices[top[drawn.indices] == c]) for c in order}
    table = [{"cluster": int(c), "images": int(sizes[c]), "sampled": int(drawn.top_counts[c]),
              "examples": [imgs.ids[i] for i in taken[c][:_SHOWN]]}
             for c in order[:_TABLE_ROWS]]
    if sheet and len(drawn.indices):
        rows = [(c, taken[c][:_SHOWN]) for c in order if len(taken[c])][:16]
        _sheet(lambda p: contact_sheet(
            imgs.image, [list(map(int, r)) for _, r in rows], p,
            titles=[f"cluster {int(c)}: {int(drawn.top_counts[c])} of {int(sizes[c])} images "
                    "sampled" for c, _ in rows],
            captions=[[_short(imgs.ids[i]) for i in r] for _, r in rows]),
            folder, "sample.png", files, notes)
    found = replace(drawn, indices=imgs.to_source(drawn.indices))
    counts = {**_set_counts(imgs), "budget": budget, "sampled": len(drawn.indices),
              "clusters": [len(lv.centroids) for lv in h.levels]}
    result = CurateResult(
        step="sample", result=found, counts=counts, tables={"clusters": table},
        settings=_settings(m, layer, pool, [imgs], out, budget=budget, levels=ks,
                           strategy=strategy, resampling_steps=resampling_steps,
                           sample_size=h.sample_size, spherical=spherical, seed=seed,
                           subset=None if subset is None else str(subset)),
        skipped=_skipped([imgs]), files=files, notes=notes)
    return _finish(result, folder, "curate.json")


# ----------------------------------------------------------------------------------------------
# retrieve


def retrieve(model, queries, pool_images, *, k: int = 4, mode: str = "nearest",
             n_clusters: int | None = None, min_queries: int = 1, layer: str | None = None,
             pool: str = "mean", out: str | Path | None = None,
             queries_store: str | Path | None = None, pool_store: str | Path | None = None,
             seed: int = 0, pretrained: bool = True, batch_size: int = 32, device=None,
             num_workers: int | None = None, dtype: str = "float32", overwrite: bool = False,
             sheet: bool = True, progress: bool = True,
             backend: str | Backend | None = None) -> CurateResult:
    """Retrieve the images of a pool close to a set of queries (DINOv2's retrieval of
    uncurated images near curated sets).

    Args:
        model, layer, pool, out, pretrained, batch_size, device, num_workers, dtype, overwrite,
            progress, sheet, backend: as in `dedup` (this step writes ``out/retrieve/``).
        queries: the query images (e.g. a curated set); pool_images: the pool searched.
        k: "nearest": the k nearest pool images of each query, by cosine similarity (DINOv2:
            4 for large query sets).
        mode: "nearest", or "clusters" (for small query sets): cluster the pool (spherical
            k-means, `n_clusters`, default round(sqrt(pool size))) and take every pool image of
            the clusters that hold at least `min_queries` queries.
        queries_store, pool_store: feature stores to read (or write) each set's features.
        seed: random weights' seed and the pool clustering's.

    Returns:
        A `CurateResult` (``result``: a `Retrieval` or `ClusterRetrieval`), written to
        ``out/retrieve/curate.json`` with ``keep.csv`` (the retrieved pool images),
        ``retrieved.csv`` (nearest: query_id, rank, pool_id, similarity; clusters: pool_id,
        cluster, queries_in_cluster) and ``skipped.csv``.
    """
    out = _common(out, pool, dtype)
    if mode not in RETRIEVE_MODES:
        raise InputError(f"--mode {mode!r}: use one of {', '.join(RETRIEVE_MODES)}")
    k = _positive(k, "--k")
    n_clusters = _positive(n_clusters, "--clusters", allow_none=True)
    min_queries = _positive(min_queries, "--min-queries")
    m, layer, (q, p) = _embed(
        model, [(queries, "queries", "--queries", queries_store, None),
                (pool_images, "pool", "--pool-images", pool_store, None)],
        layer=layer, pool=pool, out=out, pretrained=pretrained, device=device, seed=seed,
        backend=backend, num_workers=num_workers, batch_size=batch_size, dtype=dtype,
        overwrite=overwrite, progress=progress)
    _need_images(q)
    _need_images(p, k if mode == "nearest" else 1, f", fewer than --k {k}"
                 if mode == "nearest" else "")
    folder = out / "retrieve"
    folder.mkdir(parents=True, exist_ok=True)
    files: dict = {}
    notes: list[str] = []
    label_q = lambda i: "query " + _short(q.ids[i], 10)  # noqa: E731
    if mode == "nearest":
        res = retrieve_nearest(q.x, p.x, k)
        found = replace(res, neighbors=p.to_source(res.neighbors),
                        selected=p.to_source(res.selected))
        files["retrieved"] = _write_csv(
            folder / "retrieved.csv", ["query_id", "rank", "pool_id", "similarity"],
            ((q.ids[int(qi)], r + 1, p.ids[int(pi)], f"{s:.6f}")
             for qi, nb, sim in zip(q.rows, found.neighbors, found.similarities)
             for r, (pi, s) in enumerate(zip(nb, sim))))
        tables = {"queries": [
            {"query": q.ids[int(qi)], "neighbors": [p.ids[int(i)] for i in nb[:_SHOWN]],
             "similarities": [round(float(s), 6) for s in sim[:_SHOWN]]}
            for qi, nb, sim in list(zip(q.rows, found.neighbors,
                                        found.similarities))[:_TABLE_ROWS]]}
        rows = [[("q", int(qi))] + [("p", int(i)) for i in nb[:_SHOWN - 1]]
                for qi, nb in list(zip(q.rows, found.neighbors))[:12]]
        titles = [f"query {q.ids[r[0][1]]}: its {k} nearest pool images" for r in rows]
        clusters_n = None
    else:
        kk = n_clusters or max(1, min(len(p), round(math.sqrt(len(p)))))
        if kk > len(p):
            raise InputError(f"--clusters {kk}: the pool has {len(p)} usable images; give at "
                             f"most {len(p)}")
        km = kmeans(p.x, kk, spherical=True, seed=seed)
        res = retrieve_by_clusters(q.x, p.x, clusters=km, min_queries=min_queries)
        found = replace(res, selected=p.to_source(res.selected))
        per = dict(zip(res.clusters.tolist(), res.queries_per_cluster.tolist()))
        files["retrieved"] = _write_csv(
            folder / "retrieved.csv", ["pool_id", "cluster", "queries_in_cluster"],
            ((p.ids[int(p.rows[j])], int(km.labels[j]), per[int(km.labels[j])])
             for j in res.selected))
        by_cluster = km.all_members()  # nearest the centroid first
        members = {c: p.to_source(by_cluster[c]) for c in res.clusters.tolist()}
        in_cluster = {c: q.rows[res.query_clusters == c] for c in res.clusters.tolist()}
        tables = {"clusters": [
            {"cluster": c, "queries": per[c], "pool_images": int(km.sizes[c]),
             "query_examples": [q.ids[i] for i in in_cluster[c][:_SHOWN]],
             "pool_examples": [p.ids[i] for i in members[c][:_SHOWN]]}
            for c in res.clusters.tolist()[:_TABLE_ROWS]]}
        rows = [[("q", int(i)) for i in in_cluster[c][:2]]
                + [("p", int(i)) for i in members[c][:_SHOWN - 2]]
                for c in res.clusters.tolist()[:12]]
        titles = [f"pool cluster {c}: {per[c]} quer{'y' if per[c] == 1 else 'ies'}, "
                  f"{int(km.sizes[c])} pool images" for c in res.clusters.tolist()[:12]]
        clusters_n = kk
    files["keep"] = _write_ids(folder / "keep.csv", [p.ids[int(i)] for i in found.selected])
    _write_skipped(folder, [q, p], files)
    if sheet and rows:
        def image(key):
            side, i = key
            return (q if side == "q" else p).image(i)

        _sheet(lambda path: contact_sheet(
            image, rows, path, titles=titles,
            captions=[[label_q(i) if s == "q" else _short(p.ids[i]) for s, i in r]
                      for r in rows],
            highlight=[[s == "q" for s, _ in r] for r in rows]),
            folder, "retrieve.png", files, notes)
    counts = {**_set_counts(q, "_queries"), **_set_counts(p, "_pool"),
              "queries_used": len(q), "retrieved": len(found.selected),
              "images": len(p.source), "used": len(p)}
    result = CurateResult(
        step="retrieve", result=found, counts=counts, tables=tables,
        settings=_settings(m, layer, pool, [q, p], out, mode=mode,
                           k=k if mode == "nearest" else None, n_clusters=clusters_n,
                           min_queries=min_queries if mode == "clusters" else None, seed=seed),
        skipped=_skipped([q, p]), files=files, notes=notes)
    return _finish(result, folder, "curate.json")


# ----------------------------------------------------------------------------------------------
# prototypes


def find_prototypes(model, images, *, n_clusters: int | None = None, n_examples: int = 8,
                    spherical: bool = True, layer: str | None = None, pool: str = "mean",
                    subset: str | Path | None = None, out: str | Path | None = None,
                    store: str | Path | None = None, seed: int = 0, pretrained: bool = True,
                    batch_size: int = 32, device=None, num_workers: int | None = None,
                    dtype: str = "float32", overwrite: bool = False, sheet: bool = True,
                    progress: bool = True,
                    backend: str | Backend | None = None) -> CurateResult:
    """What a dataset holds, as k-means prototypes: each cluster's size, its medoid (the real
    image nearest the centroid) and its members nearest the centroid.

    Args:
        model, images, layer, pool, subset, out, store, pretrained, batch_size, device,
            num_workers, dtype, overwrite, progress, sheet, backend: as in `dedup` (this step writes
            ``out/prototypes/``).
        n_clusters: k (default round(sqrt(n))).
        n_examples: members kept per prototype (nearest first) for the table and the sheet.
        spherical: cosine k-means (default).
        seed: the k-means' seed and random weights'.

    Returns:
        A `CurateResult` (``result``: `Prototypes`, medoids and examples as source positions,
        ``labels`` per used image), written to ``out/prototypes/curate.json`` with ``keep.csv``
        (the medoids, one image per prototype), ``prototypes.csv`` (cluster, size, medoid id,
        largest first), ``clusters.csv`` (every used image's cluster) and ``skipped.csv``.
    """
    out = _common(out, pool, dtype)
    n_clusters = _positive(n_clusters, "--clusters", allow_none=True)
    n_examples = _positive(n_examples, "--examples")
    m, layer, (imgs,) = _embed(
        model, [(images, "images", "--images", store, subset)],
        layer=layer, pool=pool, out=out, pretrained=pretrained, device=device, seed=seed,
        backend=backend, num_workers=num_workers, batch_size=batch_size, dtype=dtype,
        overwrite=overwrite, progress=progress)
    _need_images(imgs)
    n = len(imgs)
    kk = n_clusters or max(1, min(n, round(math.sqrt(n))))
    if kk > n:
        raise InputError(f"--clusters {kk}: {n} usable images; give at most {n}")
    notes: list[str] = []
    with _noted(notes):
        proto = prototypes(imgs.x, kk, spherical=spherical, n_examples=n_examples, seed=seed)
    found = replace(proto, medoids=imgs.to_source(proto.medoids),
                    examples=imgs.to_source(proto.examples))
    folder = out / "prototypes"
    folder.mkdir(parents=True, exist_ok=True)
    files: dict = {}
    shown = [int(c) for c in found.order if found.sizes[c] > 0]
    files["keep"] = _write_ids(folder / "keep.csv",
                               [imgs.ids[i] for i in sorted(int(found.medoids[c])
                                                            for c in shown)])
    files["prototypes"] = _write_csv(folder / "prototypes.csv", ["cluster", "images", "medoid_id"],
                                     ((c, int(found.sizes[c]), imgs.ids[found.medoids[c]])
                                      for c in shown))
    files["clusters"] = _write_csv(folder / "clusters.csv", ["id", "cluster"],
                                   ((imgs.ids[int(r)], int(c))
                                    for r, c in zip(imgs.rows, proto.labels)))
    _write_skipped(folder, [imgs], files)
    if sheet and shown:
        _sheet(lambda p: prototype_sheet(found, imgs.image, p,
                                         label=lambda i: _short(imgs.ids[i])),
               folder, "prototypes.png", files, notes)
    table = [{"cluster": c, "images": int(found.sizes[c]), "medoid": imgs.ids[found.medoids[c]],
              "examples": [imgs.ids[i] for i in found.examples[c][:_SHOWN] if i >= 0]}
             for c in shown[:_TABLE_ROWS]]
    counts = {**_set_counts(imgs), "prototypes": len(shown), "clusters": kk}
    result = CurateResult(
        step="prototypes", result=found, counts=counts, tables={"prototypes": table},
        settings=_settings(m, layer, pool, [imgs], out, n_clusters=kk, n_examples=n_examples,
                           spherical=spherical, seed=seed,
                           subset=None if subset is None else str(subset)),
        skipped=_skipped([imgs]), files=files, notes=notes)
    return _finish(result, folder, "curate.json")


# ----------------------------------------------------------------------------------------------
# datasets


def datasets(model, images_a, images_b, *, names: Sequence[str] | None = None, k: int = 5,
             n_clusters: int | None = None, metric: str = "euclidean",
             min_purity: float = 0.95, n_examples: int = 8, layer: str | None = None,
             pool: str = "mean", out: str | Path | None = None,
             store_a: str | Path | None = None, store_b: str | Path | None = None,
             seed: int = 0, pretrained: bool = True, batch_size: int = 32, device=None,
             num_workers: int | None = None, dtype: str = "float32", overwrite: bool = False,
             sheet: bool = True, progress: bool = True,
             backend: str | Backend | None = None) -> DatasetsResult:
    """Compare two image sets through one model's features: the Fréchet distance of their
    feature Gaussians, k-NN precision / recall / density / coverage (B judged against A), and
    the clusters of a joint k-means that only one of them populates.

    Args:
        model, layer, pool, out, pretrained, batch_size, device, num_workers, dtype, overwrite,
            progress, sheet, backend: as in `dedup` (writes ``out/datasets.json``).
        images_a: the reference set ("real" for precision / recall); images_b: the other.
        names: the two sets' names in tables and sheets (default: their folder names, else A
            and B).
        k: neighbours of precision / recall / density / coverage (5, as Naeem et al.).
        n_clusters: joint k-means clusters (default ``max(2, round(sqrt((n_a + n_b) / 10)))``,
            at most 100).
        metric: "euclidean" (the papers') or "cosine" for precision / recall / density /
            coverage.
        min_purity: a cluster is one-sided when this share of its (size-weighted) mass comes
            from one set.
        n_examples: members per set and cluster kept for the sheet.
        store_a, store_b: feature stores to read (or write) each set's features.
        seed: the k-means' seed and random weights'.

    Returns:
        A `DatasetsResult`, written to ``out/datasets.json`` with ``clusters.csv`` (per joint
        cluster: each set's count and share, A's purity, which side), ``skipped.csv`` and
        ``datasets.png`` (the one-sided clusters).
    """
    out = _common(out, pool, dtype)
    k = _positive(k, "--k")
    n_clusters = _positive(n_clusters, "--clusters", allow_none=True)
    n_examples = _positive(n_examples, "--examples")
    if metric not in ("euclidean", "cosine"):
        raise InputError(f"--metric {metric!r}: use euclidean or cosine")
    if not 0.5 < float(min_purity) <= 1.0:
        raise InputError(f"--min-purity {min_purity!r}: give a share in (0.5, 1], e.g. 0.95")
    if names is not None and (len(names) != 2 or not all(names) or names[0] == names[1]):
        raise InputError(f"--names {names!r}: give two different names")
    m, layer, (a, b) = _embed(
        model, [(images_a, "a", "--images-a", store_a, None),
                (images_b, "b", "--images-b", store_b, None)],
        layer=layer, pool=pool, out=out, pretrained=pretrained, device=device, seed=seed,
        backend=backend, num_workers=num_workers, batch_size=batch_size, dtype=dtype,
        overwrite=overwrite, progress=progress)
    for s in (a, b):
        _need_images(s, k + 1, f"; --k {k} needs more than k")
    if names is None:
        names = (a.source.short_name(), b.source.short_name())
        if not all(names) or names[0] == names[1]:
            names = ("A", "B")
    names = tuple(str(x) for x in names)
    if n_clusters is not None and n_clusters > len(a) + len(b):
        raise InputError(f"--clusters {n_clusters}: {len(a) + len(b)} usable images in both "
                         "sets; give at most that")
    notes: list[str] = []
    with _noted(notes):
        cmp = compare_datasets(a.x, b.x, k=k, n_clusters=n_clusters, metric=metric,
                               min_purity=min_purity, n_examples=n_examples, seed=seed)
    sp = cmp.prototypes
    found = replace(cmp, prototypes=replace(sp, examples_a=a.to_source(sp.examples_a),
                                            examples_b=b.to_source(sp.examples_b)))
    fp = found.prototypes
    out.mkdir(parents=True, exist_ok=True)
    files: dict = {}
    side = lambda c: (f"only {names[0]}" if c in set(fp.only_a.tolist()) else  # noqa: E731
                      f"only {names[1]}" if c in set(fp.only_b.tolist()) else "both")
    files["clusters"] = _write_csv(
        out / "clusters.csv", ["cluster", f"count_{names[0]}", f"count_{names[1]}",
                               f"share_{names[0]}", f"share_{names[1]}",
                               f"purity_{names[0]}", "side"],
        ((int(c), int(fp.counts_a[c]), int(fp.counts_b[c]), f"{fp.share_a[c]:.6f}",
          f"{fp.share_b[c]:.6f}", f"{fp.purity_a[c]:.6f}", side(int(c))) for c in fp.order))
    _write_skipped(out, [a, b], files)
    if sheet and (len(fp.only_a) or len(fp.only_b)):
        _sheet(lambda p: shared_prototype_sheet(
            fp, a.image, b.image, p, names=names,
            labels=(lambda i: _short(a.ids[i]), lambda i: _short(b.ids[i]))),
            out, "datasets.png", files, notes)
    elif sheet:
        notes.append(f"no cluster is populated (at purity {min_purity}) by one set only: no "
                     "contact sheet")
    table = [{"cluster": int(c), names[0]: int(fp.counts_a[c]), names[1]: int(fp.counts_b[c]),
              f"purity {names[0]}": round(float(fp.purity_a[c]), 4), "side": side(int(c)),
              f"examples {names[0]}": [a.ids[i] for i in fp.examples_a[c][:4] if i >= 0],
              f"examples {names[1]}": [b.ids[i] for i in fp.examples_b[c][:4] if i >= 0]}
             for c in fp.order[:_TABLE_ROWS] if fp.counts_a[c] + fp.counts_b[c] > 0]
    counts = {**_set_counts(a, "_a"), **_set_counts(b, "_b"), "frechet": found.frechet,
              "precision": found.prdc.precision, "recall": found.prdc.recall,
              "density": found.prdc.density, "coverage": found.prdc.coverage,
              "clusters": len(fp.counts_a), "only_a": len(fp.only_a), "only_b": len(fp.only_b)}
    result = DatasetsResult(
        comparison=found, names=names, counts=counts, tables={"clusters": table},
        settings=_settings(m, layer, pool, [a, b], out, k=k, metric=metric,
                           n_clusters=len(fp.counts_a), min_purity=float(min_purity),
                           n_examples=n_examples, seed=seed),
        skipped=_skipped([a, b]), files=files, notes=notes)
    return _finish(result, out, "datasets.json")
