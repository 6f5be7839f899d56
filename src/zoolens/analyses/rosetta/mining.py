"""Mining Rosetta neurons across a zoo: `rosetta(models, images)`.

1. One streaming pass (`CorrelationSink`): every model sees every image (or the generator draws
   them and is tapped itself); each tapped layer's native maps feed, per model pair, exactly
   mergeable `CrossCorrelation` accumulators that count them as resized to one common resolution
   (and take a coarser layer's products at its own grid: the same sums for a fraction of the
   flops). Memory is O(units_a x units_b), whatever the number of images. When all tables do
   not fit `max_memory`, B's units are split into column blocks accumulated in further passes
   and reduced to top-K partners.
2. Best buddies per pair, Rosetta sets anchored on one model, dead units listed.
3. A second, short pass (`MapsSink`) over the images that excite the sets most: each set's
   standardised maps -> concepts by clustering -> one heatmap figure per concept.

Each pass is checkpointed by the planner (`out/state/`), so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ... import plan
from ...backends import Backend, resolve_backend
from ...errors import InputError
from ...resize import concat_resized
from ...sinks import Batch, Need, Sink
from ...sources import ImageSource, open_source
from ...sources.generated import GeneratedImages
from ...stats import CrossCorrelation, TopKPartners, plan_column_blocks, release_buffers
from ...zoo.model import Model, resolve_layers
from ...zoo.registry import as_models, load
from .buddies import MODES, best_buddies, label_buddies, rosetta_sets
from .profiles import cluster_sets, set_profiles
from .result import RosettaResult
from .units import UnitIndex

__all__ = ["rosetta", "CorrelationSink", "MapsSink", "TopImages", "DEFAULT_MAX_MEMORY",
           "default_resolution"]

log = logging.getLogger("zoolens")

DEFAULT_MAX_MEMORY = 4 * 2**30  # bytes of correlation tables held at once
_MAX_DEFAULT_RESOLUTION = 32
_CHECKPOINT_EVERY = 256  # images between checkpoints


def default_resolution(models: Sequence[Model], layers: dict[str, list[str]]) -> int:
    """The largest grid among the tapped layers (the paper upsamples each pair to the larger
    map), capped at 32 so the number of (image, position) samples stays moderate."""
    sides = [max(i.grid) for m in models for i in m.layers(layers[m.name]) if i.grid]
    if not sides:
        raise InputError("no tapped layer has a spatial grid; Rosetta needs maps or patch tokens")
    return min(max(sides), _MAX_DEFAULT_RESOLUTION)


# ---------------------------------------------------------------------------------------------
# sinks


class TopImages:
    """For each unit, the `m` images with the highest peak activation (streaming; the peak over
    the layer's own grid, which resizing could only flatten). Ties keep the earlier image."""

    def __init__(self, m: int = 8):
        self.m, self.values, self.index = m, None, None

    def update(self, layers: list[torch.Tensor], indices: list[int]) -> None:  # (B, C_l, h, w)
        peak = torch.cat([x.amax(dim=(2, 3)) for x in layers], dim=1).T.double().cpu()  # (C, B)
        self._add(peak, torch.as_tensor(indices, dtype=torch.long).expand_as(peak))

    def _add(self, values: torch.Tensor, index: torch.Tensor) -> None:
        if self.values is not None:
            values, index = torch.cat([self.values, values], 1), torch.cat([self.index, index], 1)
        order = torch.argsort(-values, dim=1, stable=True)[:, : self.m]
        self.values, self.index = values.gather(1, order), index.gather(1, order)

    def merge(self, other: "TopImages") -> "TopImages":
        if other.values is not None:
            self._add(other.values, other.index)
        return self

    def state_dict(self) -> dict:
        return {"m": self.m, "values": self.values, "index": self.index}

    def load_state_dict(self, state: dict) -> "TopImages":
        self.m, self.values, self.index = state["m"], state["values"], state["index"]
        return self


class CorrelationSink(Sink):
    """Per batch: each model's native maps prepared once (resized or kept at a coarser layer's
    own grid, centred) and shared by the accumulators of this pass's jobs (a, b, cols); with
    `track`, each model's top images too (the first pass only)."""

    def __init__(self, layers: dict[str, list[str]], resolution: int,
                 jobs: list[tuple[str, str, tuple[int, int] | None]], track: bool):
        used = [m for m in layers if any(m in job[:2] for job in jobs)]
        self.layers, self.resolution = {m: layers[m] for m in used}, resolution
        self.need = Need.of(self.layers, "none")
        self.add_state("acc", {job: CrossCorrelation(resolution=resolution, cols=job[2])
                               for job in jobs}, merge="merge")
        self.add_state("top", {m: TopImages() for m in self.layers} if track else {},
                       merge="merge")
        self.add_state("images", 0, merge="sum")
        self.add_state("skipped", [], merge="cat")

    def update(self, batch: Batch) -> None:
        self.skipped += batch.skipped
        if not batch.indices:
            return
        native = {m: batch.maps(m, names) for m, names in self.layers.items()}
        some = next(iter(self.acc.values()))
        prepared = {m: some.prepare(maps, tag=f"m{i}") for i, (m, maps) in enumerate(native.items())}
        for (a, b, _), acc in self.acc.items():
            acc.update(prepared[a], prepared[b])  # an accumulator with cols takes its block
        for m, top in self.top.items():
            top.update(native[m], batch.indices)
        self.images += len(batch.indices)

    def result(self) -> dict:
        return self.acc


class MapsSink(Sink):
    """The maps of a few images resized to the common grid, with the images (concept figures)."""

    def __init__(self, layers: dict[str, list[str]], resolution: int):
        self.layers, self.resolution = layers, resolution
        self.need = Need.of(layers, "none", images=True)
        self.add_state("maps", {m: [] for m in layers}, merge="cat")
        self.add_state("indices", [], merge="cat")
        self.add_state("images", [], merge="cat")

    def update(self, batch: Batch) -> None:
        if not batch.indices:
            return
        for m, names in self.layers.items():
            self.maps[m].append(concat_resized(batch.maps(m, names), self.resolution).float().cpu())
        self.indices += batch.indices
        self.images += batch.images

    def result(self) -> dict[str, torch.Tensor]:
        """model -> (images, units, R, R) in the order the images came."""
        return {m: torch.cat(v) for m, v in self.maps.items()}


# ---------------------------------------------------------------------------------------------
# the analysis


def rosetta(models, images=None, *, generator=None, n_generated: int = 64, seed: int = 0,
            layers="blocks", resolution: int | None = None, anchor: str | None = None,
            mode: str = "strict", k: int = 5, pairwise: bool = False,
            min_correlation: float | None = None, concepts: int = 8, profile_images: int = 16,
            max_memory: float = DEFAULT_MAX_MEMORY, batch_size: int = 32, device=None,
            pretrained: bool = True, num_workers: int | None = None, progress: bool = True,
            store=None, out: str | Path | None = None,
            backend: str | Backend | None = None) -> RosettaResult:
    """Mine Rosetta neurons: units of different models that respond to the same thing.

    models: specs or Models (discriminative ones); images: anything `open_source` takes, or
    None with `generator` (a latent -> image spec or Model, sampled `n_generated` times with
    `seed`; it joins the zoo and is the default anchor). seed: also the seed of random weights
    (`pretrained=False`). layers: a selector or a dict per
    model. resolution: the common grid (default: `default_resolution`). mode: "strict" or
    "relaxed" best buddies (k for relaxed). store: a feature store holding the layers' full
    maps (`zoolens extract --pool none`), read instead of running the models. backend: where
    the models run ("local", "ray", or a `zoolens.RayBackend`; the correlation sums of the
    workers are merged here and equal a local run's). With `out`, writes `out/rosetta.json`,
    one figure per concept in `out/concepts/`, and resumable checkpoints in `out/state/`."""
    _check_settings(mode, k, resolution, concepts, max_memory, min_correlation)
    runner = resolve_backend(backend, num_workers=num_workers)
    models, source = _zoo_and_source(models, images, generator, n_generated, seed, pretrained,
                                     runner.load_device(device))
    names = [m.name for m in models]
    anchor = anchor or names[0]
    if anchor not in names:
        raise InputError(f"anchor {anchor!r} is not one of the models: {', '.join(names)}")
    chosen = resolve_layers(models, layers)
    for m in models:  # Rosetta correlates maps: every tapped layer needs a spatial grid
        flat = [i.name for i in m.layers(chosen[m.name]) if not i.grid]
        if flat:
            raise InputError(f"{m.name}: layers {', '.join(flat)} have no spatial map; choose "
                             "conv stages or transformer blocks")
    resolution = int(resolution or default_resolution(models, chosen))
    indexes = {m.name: UnitIndex(m.name, [(i.name, i.channels) for i in m.layers(chosen[m.name])])
               for m in models}
    units = {n: len(ix) for n, ix in indexes.items()}
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    passes, blocked = _plan_passes(units, pairs, max_memory)
    settings = {"mode": mode, "k": k, "anchor": anchor, "pairwise": pairwise,
                "min_correlation": min_correlation, "layers": chosen, "resolution": resolution,
                "resize": "bilinear, antialiased when downsampling", "max_memory": max_memory,
                "passes": len(passes), "blocked": blocked, "source": source.description,
                "specs": {m.name: m.spec for m in models},
                "weights": {m.name: m.record() for m in models}}
    out = Path(out) if out is not None else None
    key = hashlib.sha1(json.dumps({**settings, "n": len(source), "ids": source.fingerprint(),
                                   "models": [m.record() for m in models]},
                                  sort_keys=True, default=str).encode()).hexdigest()
    run = dict(batch_size=batch_size, device=device, progress=progress, backend=runner)
    first, tables, topk, stats = _mine(models, source, chosen, resolution, passes, units, k,
                                       store=store, out=out, key=key, run=run)
    result = _buddies_and_sets(first, tables, topk, names, indexes, units, pairs, source,
                               settings, mode, k, anchor, pairwise, min_correlation, resolution)
    if result.sets and concepts > 0:
        _concepts(result, models, source, chosen, indexes, first, stats, concepts=concepts,
                  profile_images=profile_images, out=out, run=run)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "rosetta.json").write_text(result.to_json(indent=1))
    return result


def _check_settings(mode, k, resolution, concepts, max_memory, min_correlation) -> None:
    """Every setting checked before any model runs (a bad k must not cost a whole pass)."""
    if mode not in MODES:
        raise InputError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise InputError(f"--k {k!r}: relaxed best buddies need k >= 1 (the paper uses 5)")
    if resolution is not None and (isinstance(resolution, bool) or int(resolution) != resolution
                                   or resolution < 1):
        raise InputError(f"--resolution {resolution!r}: give the common grid side in cells, "
                         "e.g. 16 (at least 1), or leave it out for the largest tapped grid")
    if concepts < 0:
        raise InputError(f"--concepts {concepts}: must be 0 (none) or more")
    if not max_memory > 0:
        raise InputError(f"--max-memory {max_memory!r}: must be a positive size, e.g. 4GiB")
    if min_correlation is not None and not -1.0 <= min_correlation <= 1.0:
        raise InputError(f"--min-correlation {min_correlation}: a correlation lies in [-1, 1]")


def _zoo_and_source(models, images, generator, n_generated, seed, pretrained, device):
    """The loaded zoo (a generator first) and the images it sees."""
    models = as_models(models, pretrained=pretrained, device=device, seed=seed)
    if generator is not None:
        if images is not None:
            raise InputError("give either images or a generator, not both")
        gen = generator if isinstance(generator, Model) else load(generator, pretrained=pretrained,
                                                                 device=device, seed=seed)
        source: ImageSource = GeneratedImages(gen, n=n_generated, seed=seed)
    elif images is None:
        raise InputError("rosetta needs images (a folder, synthetic:scenes, ...) or a generator")
    else:
        source = open_source(images)
    if source.drawn_by is not None:  # the generator joins the zoo, first
        models = [source.drawn_by] + [m for m in models if m is not source.drawn_by]
    if len(models) < 2:
        raise InputError("Rosetta neurons are shared by two or more models; give at least two")
    return models, source


def _plan_passes(units: dict[str, int], pairs: list[tuple[str, str]], max_memory: float):
    """Jobs (a, b, cols) grouped into passes whose tables fit `max_memory` together."""
    per = CrossCorrelation.bytes_per_entry
    if sum(units[a] * units[b] * per for a, b in pairs) <= max_memory:
        return [[(a, b, None) for a, b in pairs]], False
    passes, current, used = [], [], 0.0
    for a, b in pairs:
        for cols in plan_column_blocks(units[a], units[b], max_memory):
            cost = units[a] * (cols[1] - cols[0]) * per
            if current and used + cost > max_memory:
                passes.append(current)
                current, used = [], 0.0
            current.append((a, b, cols))
            used += cost
    return passes + [current], True


def _mine(models, source, chosen, resolution, passes, units, k, *, store, out, key, run):
    """The correlation passes -> (the first pass's sink, full tables, top-K partners, each
    unit's mean and std over the resized samples)."""
    tables: dict[tuple[str, str], CrossCorrelation] = {}
    topk: dict[tuple[str, str], TopKPartners] = {}
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    first = None
    for p, jobs in enumerate(passes):
        sink = CorrelationSink(chosen, resolution, jobs, track=p == 0)
        plan.run(models, source, [sink], store=store, every=_CHECKPOINT_EVERY, key=key,
                 checkpoint=out / "state" / f"pass{p}.pt" if out is not None else None,
                 desc=f"correlating (pass {p + 1} of {len(passes)})", **run)
        first = first or sink
        for (a, b, cols), acc in sink.acc.items():
            start, stop = cols or (0, units[b])
            stats[a] = (acc.mean_a, acc.std_a)
            stats.setdefault(b, (np.zeros(units[b]), np.zeros(units[b])))
            stats[b][0][start:stop], stats[b][1][start:stop] = acc.mean_b, acc.std_b
            if cols is None:
                tables[(a, b)] = acc
            else:
                tp = topk.setdefault((a, b), TopKPartners(units[a], units[b], k=max(k, 1)))
                tp.update(acc.correlation(), col_offset=cols[0], dead_a=acc.dead_a,
                          dead_b=acc.dead_b)
    release_buffers()  # the accumulators' batch-sized work buffers
    if first.images == 0:
        raise plan.no_usable_images(source, list(source.skipped_at_listing) + sorted(
            first.skipped, key=lambda s: s["index"]))
    return first, tables, topk, stats


def _buddies_and_sets(first, tables, topk, names, indexes, units, pairs, source, settings, mode,
                      k, anchor, pairwise, min_correlation, resolution) -> RosettaResult:
    dead, pair_buddies, pair_records = {}, {}, {}
    for a, b in pairs:
        if (a, b) in tables:
            acc = tables[(a, b)]
            da, db = acc.dead_a, acc.dead_b
            buddies = best_buddies(acc.correlation(), mode, k, da, db,
                                   min_correlation=min_correlation)
        else:
            tp = topk[(a, b)]
            da, db = tp.dead_a, tp.dead_b
            buddies = best_buddies(tp, mode, k, min_correlation=min_correlation)
        dead.setdefault(a, da)
        dead.setdefault(b, db)
        labelled = label_buddies(buddies, indexes[a], indexes[b])
        pair_buddies[(a, b)] = labelled
        pair_records[(a, b)] = RosettaResult.pair_records(labelled)
    dead_units = {n: indexes[n].unit_ids(np.flatnonzero(dead[n])) for n in names}
    for n, ids in dead_units.items():
        if ids:
            log.warning("%s: %d dead (zero-variance) units excluded", n, len(ids))
    sets = rosetta_sets(pair_buddies, names, anchor, pairwise=pairwise,
                        min_correlation=min_correlation)
    skipped = list(source.skipped_at_listing) + sorted(first.skipped, key=lambda s: s["index"])
    return RosettaResult(models=names, images=first.images, resolution=(resolution, resolution),
                         units=units, pairs=pair_records, sets=sets, dead_units=dead_units,
                         skipped=skipped, settings=settings)


def _concepts(result: RosettaResult, models, source, layers, indexes, first: CorrelationSink,
              stats: dict[str, tuple[np.ndarray, np.ndarray]], *, concepts, profile_images, out,
              run) -> None:
    """Cluster the sets into concepts and draw each concept's heatmaps."""
    names = result.models
    anchor = result.settings["anchor"]
    set_units = [[indexes[n].index_of(u) for n, u in zip(names, s["units"])] for s in result.sets]
    # the images that excite the sets' anchor units most, most frequent first
    top = first.top[anchor].index.numpy()
    votes: dict[int, float] = {}
    for units in set_units:
        for rank, img in enumerate(top[units[names.index(anchor)]]):
            votes[int(img)] = votes.get(int(img), 0.0) + 1.0 / (rank + 1)
    chosen = sorted(votes, key=lambda i: (-votes[i], i))[:profile_images]
    sink = MapsSink(layers, result.resolution)
    plan.run(models, source, [sink], indices=sorted(chosen),
             **{**run, "progress": False})
    maps = sink.result()  # model -> (I, C_m, R, R)
    # (sets, models, images, R, R) of each set unit's maps, standardised by dataset statistics
    set_maps = torch.stack([torch.stack([maps[n][:, u] for n, u in zip(names, units)])
                            for units in set_units])
    mean = np.array([[stats[n][0][u] for n, u in zip(names, units)] for units in set_units])
    std = np.array([[stats[n][1][u] for n, u in zip(names, units)] for units in set_units])
    profiles = set_profiles(set_maps, mean=mean, std=std)
    n_concepts = min(concepts, len(result.sets))
    labels = cluster_sets(profiles, n_concepts, seed=0) if len(result.sets) > 1 else np.zeros(1, int)
    z = (set_maps.double().numpy() - mean[..., None, None, None]) / np.where(
        std > 0, std, 1.0)[..., None, None, None]
    result.concepts = []
    if out is not None:  # figures of an earlier run would be taken for this run's
        for old in (out / "concepts").glob("concept_*.*"):
            old.unlink()
    for c in range(int(labels.max()) + 1):
        members = [int(i) for i in np.flatnonzero(labels == c)]
        heat = z[members].mean(axis=0)  # (models, images, R, R)
        order = np.argsort(-heat.mean(axis=0).max(axis=(1, 2)), kind="stable")[:4]
        entry = {"id": c, "sets": members,
                 "top_images": [source.ids[sink.indices[i]] for i in order]}
        if out is not None:
            from ...report.figures import concept_figure

            path = out / "concepts" / f"concept_{c:02d}.png"
            concept_figure([Image.fromarray(sink.images[i]) for i in order], heat[:, order],
                           names, path,
                           title=f"concept {c}: {len(members)} set(s)")
            # the heatmaps of every profile image, for scoring against ground truth
            np.savez_compressed(path.with_suffix(".npz"), heat=heat.astype(np.float32),
                                indices=np.asarray(sink.indices), models=np.asarray(names))
            entry["figure"] = str(path.relative_to(out))
            entry["maps"] = str(path.with_suffix(".npz").relative_to(out))
        result.concepts.append(entry)
