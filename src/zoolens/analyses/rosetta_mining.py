"""Mining Rosetta neurons across a zoo: the model-level half of `zoolens.rosetta`.

1. One streaming pass: every model sees every image (or the generator draws them and is tapped
   itself); each tapped layer's native maps are fed, per model pair, to exactly mergeable
   `CrossCorrelation` accumulators that count them as resized to one common resolution (and
   take a coarser layer's products at its own grid: the same sums for a fraction of the
   flops). Memory is O(units_a x units_b), whatever the number of images. When all tables do
   not fit `max_memory`, B's units are split into column blocks accumulated in further passes
   and reduced to top-K partners.
2. Best buddies per pair, Rosetta sets anchored on one model, dead units listed.
3. A second, short pass over the images that excite the sets most: each set's standardised maps
   -> concepts by clustering (`cluster_sets`) -> one heatmap figure per concept.

Accumulators are checkpointed after every chunk of images, so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..engine import run
from ..errors import InputError
from ..extract import as_models, resolve_layers
from ..sources import ImageSource, open_source
from ..sources.generated import GeneratedImages
from ..stats import CrossCorrelation, TopKPartners, plan_column_blocks, release_buffers
from ..zoo.model import Model
from ..zoo.registry import load
from .rosetta import (RosettaResult, UnitIndex, best_buddies, cluster_sets, concat_resized,
                      label_buddies, rosetta_sets, set_profiles)

__all__ = ["rosetta", "DEFAULT_MAX_MEMORY", "default_resolution"]

log = logging.getLogger("zoolens")

DEFAULT_MAX_MEMORY = 4 * 2**30  # bytes of correlation tables held at once
_MAX_DEFAULT_RESOLUTION = 32
_CHUNK = 256  # images between checkpoints


def default_resolution(models: Sequence[Model], layers: dict[str, list[str]]) -> int:
    """The largest grid among the tapped layers (the paper upsamples each pair to the larger
    map), capped at 32 so the number of (image, position) samples stays moderate."""
    sides = [max(i.grid) for m in models for i in m.layers(layers[m.name]) if i.grid]
    if not sides:
        raise InputError("no tapped layer has a spatial grid; Rosetta needs maps or patch tokens")
    return min(max(sides), _MAX_DEFAULT_RESOLUTION)


class _TopImages:
    """For each unit, the `m` images with the highest peak activation (streaming; the peak over
    the layer's own grid, which resizing could only flatten)."""

    def __init__(self, m: int = 8):
        self.m, self.values, self.index = m, None, None

    def update(self, layers: list[torch.Tensor], indices: list[int]) -> None:  # (B, C_l, h, w)
        peak = torch.cat([x.amax(dim=(2, 3)) for x in layers], dim=1).T.double().cpu()  # (C, B)
        idx = torch.as_tensor(indices, dtype=torch.long).expand_as(peak)
        if self.values is not None:
            peak, idx = torch.cat([self.values, peak], 1), torch.cat([self.index, idx], 1)
        order = torch.argsort(-peak, dim=1, stable=True)[:, : self.m]
        self.values, self.index = peak.gather(1, order), idx.gather(1, order)


class _MiningSink:
    """Per batch: prepare each model's native maps once (resized or kept at a coarser layer's
    own grid, centred) and update the accumulators of this pass's pairs with them."""

    def __init__(self, layers: dict[str, list[str]], resolution: int,
                 jobs: list[tuple[str, str, tuple[int, int] | None]], track: bool):
        self.layers, self.resolution = layers, resolution
        self.acc = {job: CrossCorrelation(resolution=resolution, cols=job[2]) for job in jobs}
        self.track = track  # top images: once, in the first pass
        self.top = {m: _TopImages() for m in layers}
        self.done: set[int] = set()
        self.skipped: list[dict] = []

    def native(self, batch, model: str) -> list[torch.Tensor]:
        return [batch.features[model][l]["none"] for l in self.layers[model]]

    def update(self, batch) -> None:
        self.done.update(s["index"] for s in batch.skipped)
        self.skipped += batch.skipped
        if not batch.indices:
            return
        native = {m: self.native(batch, m) for m in self.layers}
        # each model's batch is centred and laid out once, and shared by all its pairs
        some = next(iter(self.acc.values()))
        size = (self.resolution, self.resolution)
        sides = {m: some._prepare(maps, size, tag=f"m{i}") for i, (m, maps) in
                 enumerate(native.items()) if any(m in job[:2] for job in self.acc)}
        for (a, b, cols), acc in self.acc.items():
            acc._update_sides(sides[a], sides[b] if cols is None else sides[b].select(*cols))
        if self.track:
            for m, layers in native.items():
                self.top[m].update(layers, batch.indices)
        self.done.update(batch.indices)


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


def _settings_key(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _run_pass(models, source, layers, resolution, jobs, track, *, state_dir, key, pass_no,
              batch_size, device, num_workers, progress):
    """One streaming pass, resumable: accumulators are saved after every chunk of images."""
    sink = _MiningSink(layers, resolution, jobs, track)
    ckpt = state_dir / f"pass{pass_no}.pt" if state_dir else None
    if ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        if saved["key"] == key:
            sink.done = set(saved["done"])
            sink.skipped = saved["skipped"]
            for job, state in zip(jobs, saved["acc"]):
                sink.acc[job] = CrossCorrelation.from_state_dict(state)
            if track:
                for m in layers:
                    sink.top[m].values, sink.top[m].index = saved["top"][m]
            log.info("resuming pass %d: %d of %d images done", pass_no, len(sink.done), len(source))
    todo = [i for i in range(len(source)) if i not in sink.done]
    request = {m: {l: {"none"} for l in names} for m, names in layers.items()}
    for start in range(0, len(todo), _CHUNK):
        chunk = todo[start:start + _CHUNK]
        run(models, source, request, [sink], indices=chunk, batch_size=batch_size,
            num_workers=num_workers, device=device, progress=progress)
        if ckpt is not None:
            state = {"key": key, "done": sorted(sink.done), "skipped": sink.skipped,
                     "acc": [sink.acc[j].state_dict() for j in jobs]}
            if track:
                state["top"] = {m: (t.values, t.index) for m, t in sink.top.items()}
            tmp = ckpt.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(ckpt)
    return sink, sink.skipped


def rosetta(models, images=None, *, generator=None, n_generated: int = 64, seed: int = 0,
            layers="blocks", resolution: int | None = None, anchor: str | None = None,
            mode: str = "strict", k: int = 5, pairwise: bool = False,
            min_correlation: float | None = None, concepts: int = 8, profile_images: int = 16,
            max_memory: float = DEFAULT_MAX_MEMORY, batch_size: int = 32, device=None,
            pretrained: bool = True, num_workers: int | None = None, progress: bool = True,
            out: str | Path | None = None) -> RosettaResult:
    """Mine Rosetta neurons: units of different models that respond to the same thing.

    models: specs or Models (discriminative ones); images: anything `open_source` takes, or
    None with `generator` (a latent -> image spec or Model, sampled `n_generated` times with
    `seed`; it joins the zoo and is the default anchor). layers: a selector or a dict per
    model. resolution: the common grid (default: `default_resolution`). mode: "strict" or
    "relaxed" best buddies (k for relaxed). With `out`, writes `out/rosetta.json`, one figure
    per concept in `out/concepts/`, and resumable checkpoints in `out/state/`."""
    models = as_models(models, pretrained=pretrained, device=device)
    if generator is not None:
        gen = generator if isinstance(generator, Model) else load(generator, pretrained=pretrained,
                                                                 device=device)
        if images is not None:
            raise InputError("give either images or a generator, not both")
        source: ImageSource = GeneratedImages(gen, n=n_generated, seed=seed)
        models = [gen] + models
    elif isinstance(images, GeneratedImages):  # a generator with chosen latents
        source = images
        models = [source.generator] + models
    else:
        if images is None:
            raise InputError("rosetta needs images (a folder, synthetic:scenes, ...) or a generator")
        source = open_source(images)
    if len(models) < 2:
        raise InputError("Rosetta neurons are shared by two or more models; give at least two")
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
                "specs": {m.name: m.spec for m in models}}
    out = Path(out) if out is not None else None
    state_dir = None
    if out is not None:
        state_dir = out / "state"
        state_dir.mkdir(parents=True, exist_ok=True)
    key = _settings_key({**settings, "n": len(source), "ids": source.fingerprint()})

    tables: dict[tuple[str, str], object] = {}
    topk: dict[tuple[str, str], TopKPartners] = {}
    skipped: list[dict] = list(source.skipped_at_listing)
    first = None
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for p, jobs in enumerate(passes):
        sink, sk = _run_pass(models, source, chosen, resolution, jobs, p == 0, state_dir=state_dir,
                             key=key, pass_no=p, batch_size=batch_size, device=device,
                             num_workers=num_workers, progress=progress)
        first = first or sink
        if p == 0:
            skipped += sk
        for (a, b, cols), acc in sink.acc.items():
            # each unit's mean and std over the resized samples, to standardise concept maps
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
    n_images = int(sum(1 for _ in first.done)) - sum(1 for s in skipped if "index" in s)

    dead = {}
    pair_buddies, pair_records = {}, {}
    for a, b in pairs:
        if (a, b) in tables:
            acc = tables[(a, b)]
            corr, da, db = acc.correlation(), acc.dead_a, acc.dead_b
            buddies = best_buddies(corr, mode, k, da, db, min_correlation=min_correlation)
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
    result = RosettaResult(models=names, images=n_images, resolution=(resolution, resolution),
                           units=units, pairs=pair_records, sets=sets, dead_units=dead_units,
                           skipped=skipped, settings=settings)
    if sets and concepts > 0:
        _concepts(result, models, source, chosen, indexes, first, stats, concepts=concepts,
                  profile_images=profile_images, batch_size=batch_size, device=device,
                  num_workers=num_workers, out=out)
    if out is not None:
        (out / "rosetta.json").write_text(result.to_json(indent=1))
    return result


class _CollectSink:
    """Keeps the resized maps of a few images (the concept pass only)."""

    def __init__(self, layers, resolution):
        self.layers, self.resolution, self.maps, self.indices = layers, resolution, {}, []

    def update(self, batch):
        if not batch.indices:
            return
        for m, names in self.layers.items():
            x = concat_resized([batch.features[m][l]["none"] for l in names], self.resolution)
            self.maps.setdefault(m, []).append(x.float().cpu())
        self.indices += batch.indices


def _concepts(result: RosettaResult, models, source, layers, indexes, first: _MiningSink,
              stats: dict[str, tuple[np.ndarray, np.ndarray]], *, concepts, profile_images,
              batch_size, device, num_workers, out) -> None:
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
    sink = _CollectSink(layers, result.resolution)
    request = {m: {l: {"none"} for l in ls} for m, ls in layers.items()}
    run(models, source, request, [sink], indices=sorted(chosen), batch_size=batch_size,
        num_workers=num_workers, device=device, progress=False)
    maps = {m: torch.cat(v) for m, v in sink.maps.items()}  # (I, C_m, R, R)
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
    for c in range(int(labels.max()) + 1):
        members = [int(i) for i in np.flatnonzero(labels == c)]
        heat = z[members].mean(axis=0)  # (models, images, R, R)
        order = np.argsort(-heat.mean(axis=0).max(axis=(1, 2)), kind="stable")[:4]
        entry = {"id": c, "sets": members, "top_images": [source.ids[sink.indices[i]] for i in order]}
        if out is not None:
            from ..report.figures import concept_figure

            path = out / "concepts" / f"concept_{c:02d}.png"
            concept_figure([source.decode(sink.indices[i]).image for i in order],
                           heat[:, order], names, path,
                           title=f"concept {c}: {len(members)} set(s)")
            # the heatmaps of every profile image, for scoring against ground truth
            np.savez_compressed(path.with_suffix(".npz"), heat=heat.astype(np.float32),
                                indices=np.asarray(sink.indices), models=np.asarray(names))
            entry["figure"] = str(path.relative_to(out))
            entry["maps"] = str(path.with_suffix(".npz").relative_to(out))
        result.concepts.append(entry)
