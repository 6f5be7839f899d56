"""One streaming pass: images -> every model (each with its own preprocessing) -> hooks that
reduce each tapped output at once -> sinks.

Every image that reaches a model comes through here. Items are decoded once, in DataLoader
workers, where each model's preprocessing is applied to the decoded image too, along with the
per-image facts sinks may ask for (`Need`): the decoded size, where each model's input lies in
the image (`zoolens.zoo.window`), the decoded pixels. A source whose items are latents is drawn
by a zoo member (`ImageSource.drawn_by`): that model runs first in each batch, its own layers
tapped like any other's, and the others look at what it drew.

Memory holds one batch of activations at a time, whatever the number of images. The analyses
rarely call `run` themselves: `zoolens.plan.run` plans a pass for a set of sinks, and replays a
feature store instead when one already holds what they need.

The pieces are public so that every backend runs the same code (`zoolens.backends`): `Decoder`
(item i -> every model's input), `forward_batch` (a decoded batch -> every model -> the `Batch`
the sinks see), `plan_batches` (which images form each batch). `run` is the local backend: a
DataLoader over a `Decoder`, `forward_batch` per batch, the sinks in this process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import InputError
from .sinks import Batch, Need, Sink
from .sources import BadImage, ImageSource
from .taps import OUTPUT, PENULTIMATE, TapInfo, first_tensor, hooks, pool
from .zoo.model import Model
from .zoo.registry import resolve_device
from .zoo.window import WindowProbe

__all__ = ["RunSummary", "run", "plan_batches", "progress_bar", "default_workers", "Decoder", "Item",
           "forward_batch", "running_order", "tap_infos", "autocast_context", "move_zoo",
           "count_batch"]

log = logging.getLogger("zoolens")


@dataclass
class RunSummary:
    images: int = 0  # images seen by the models
    skipped: list[dict] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    forwards: int = 0  # model forward passes (one per model and batch)
    nodes: dict[str, int] = field(default_factory=dict)  # backend ray: units run per node
    redone: list[int] = field(default_factory=list)  # backend ray: units redone (a worker died)


@dataclass
class Item:
    """One decoded item: every model's preprocessed input, or why the item cannot be used."""

    index: int
    inputs: list | None = None  # per model: its preprocessed input, or None (drawn later)
    reason: str | None = None  # why the item cannot be used
    note: str | None = None
    size: tuple[int, int] | None = None
    windows: list | None = None  # per model, when asked
    image: np.ndarray | None = None  # the decoded pixels, when asked


class Decoder(Dataset):
    """Decodes item i once and applies every model's preprocessing to it (in a DataLoader worker
    locally, in a Ray task on a cluster). `models` in running order (`running_order`)."""

    def __init__(self, source: ImageSource, models: Sequence[Model], need: Need):
        self.source = source
        # a generator's input is the item's latent itself: no preprocessing
        self.preprocess = [None if m.is_generator else m.preprocess for m in models]
        self.probes = ([None if m.is_generator else WindowProbe(m.preprocess, m.input_size)
                        for m in models] if need.windows else None)
        self.keep_images = need.images

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index: int) -> Item:
        return self.decode(index)

    def decode(self, index: int) -> Item:
        """Item `index`: decoded, preprocessed for every model, with the facts `need` asks for;
        a bad image comes back with its reason instead of raising."""
        try:
            decoded = self.source.decode(index)
            image = decoded.image
            inputs = [decoded.latent if p is None else (p(image) if image is not None else None)
                      for p in self.preprocess]
        except BadImage as exc:
            return Item(index, reason=str(exc))
        except Exception as exc:  # a preprocessing that chokes on one image: skip it, say why
            return Item(index, reason=f"preprocessing failed: {type(exc).__name__}: {exc}")
        item = Item(index, inputs, note=decoded.note)
        if image is not None:
            item.size = (image.height, image.width)
            if self.probes is not None:
                item.windows = [p(item.size) if p else None for p in self.probes]
            if self.keep_images:
                item.image = np.asarray(image)
        return item


def _collate(items: list[Item]):
    return items


def _stack(model: Model, tensors: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise InputError(f"{model.spec}: its preprocessing gives images of different sizes "
                         f"{sorted(shapes)}; it must resize or crop to one size")
    return torch.stack(tensors)


def plan_batches(indices: Iterable[int], batch_size: int,
                 chunk_size: int | None = None) -> list[list[int]]:
    """Batches of at most `batch_size`, in the given order, that never straddle a chunk boundary,
    so a resumed run feeds the models exactly the batches an uninterrupted one does."""
    if batch_size < 1:
        raise InputError(f"batch size {batch_size}: must be at least 1")
    batches: list[list[int]] = []
    for i in indices:
        same_chunk = chunk_size is None or (batches and i // chunk_size == batches[-1][-1] // chunk_size)
        if batches and len(batches[-1]) < batch_size and same_chunk:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def running_order(models: Sequence[Model], source: ImageSource) -> list[Model]:
    """The models of a pass in running order: the source's drawing model first."""
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise InputError(f"two models share a name ({names}); give each a distinct name")
    drawer = source.drawn_by
    for m in models:
        if m.is_generator and m is not drawer:
            raise InputError(f"{m.spec} is a generator (latent -> image): give it as the image "
                             "source (--generator), not as a model looking at images")
    if drawer is None:
        return list(models)
    return [drawer] + [m for m in models if m is not drawer]


def tap_infos(zoo: Sequence[Model], need: Need) -> dict[str, dict[str, TapInfo]]:
    """Per model, the `TapInfo` of each layer `need` taps (how its output is reduced)."""
    return {m.name: {i.name: i for i in m.layers(list(need.taps[m.name]))}
            if need.taps.get(m.name) else {} for m in zoo}


def autocast_context(device: torch.device, amp: bool):
    """Mixed precision for the forward pass when `amp` (float16 on CUDA, bfloat16 elsewhere)."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda"
                          else torch.bfloat16)


def move_zoo(zoo: Sequence[Model], device: torch.device) -> None:
    """Put every model of a pass on `device`."""
    for m in zoo:
        if m.device != device:
            m.module.to(device)
            m.device = device


def run(models: Sequence[Model], source: ImageSource, need: Need, sinks: Sequence[Sink], *,
        indices: Iterable[int] | None = None, batch_size: int = 32, chunk_size: int | None = None,
        num_workers: int | None = None, device=None, amp: bool = False, progress: bool = True,
        desc: str = "extracting",
        on_done: Callable[[list[int]], None] | None = None) -> RunSummary:
    """Stream `source` (or its `indices`, in that order) through every model, calling each sink
    per batch. `need` names, per model and layer, the reductions computed inside the hooks, and
    the per-image facts wanted (`Need.images`, `Need.windows`). `on_done(indices)` is called
    after each batch, once every sink has taken it in, with the batch's source indices (used
    and skipped): the planner checkpoints there."""
    zoo = running_order(models, source)
    device = resolve_device(device if device is not None or not zoo else zoo[0].device)
    move_zoo(zoo, device)
    indices = list(range(len(source))) if indices is None else list(indices)
    batches = plan_batches(indices, batch_size, chunk_size)
    infos = tap_infos(zoo, need)
    summary = RunSummary(device=str(device))
    autocast = autocast_context(device, amp)
    workers = default_workers() if num_workers is None else num_workers
    if workers < 0:
        raise InputError(f"workers {workers}: must be 0 (decode in this process) or more")
    dataset = Decoder(source, zoo, need)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda")
    bar = progress_bar(len(indices), progress, desc)
    start = time.perf_counter()
    try:
        for items in loader:
            batch = forward_batch(zoo, source, items, need, infos, device, autocast, dataset)
            summary.forwards += len(zoo) if batch.indices else 0
            for sink in sinks:
                sink.update(batch)
            count_batch(summary, batch, bar)
            if on_done is not None:
                on_done([it.index for it in items])
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
    return summary


def count_batch(summary: RunSummary, batch: Batch, bar) -> None:
    """A batch the sinks took in: its images, skips (each logged) and notes in the summary."""
    for s in batch.skipped:
        log.warning("skipped %s: %s", s["id"], s["reason"])
    _tally(summary, batch, bar)


def _tally(summary: RunSummary, batch: Batch, bar) -> None:
    """A batch's images, skips and notes added to the summary and the progress bar (no logging:
    a replay from a store does not warn again about the images its extraction skipped)."""
    summary.images += len(batch.indices)
    summary.skipped += batch.skipped
    summary.notes += batch.notes
    bar.update(len(batch.indices) + len(batch.skipped))
    if batch.skipped:
        bar.set_postfix(skipped=len(summary.skipped))


def forward_batch(zoo: list[Model], source: ImageSource, items: list[Item], need: Need,
                  infos: dict[str, dict[str, TapInfo]], device: torch.device, autocast,
                  decoder: Decoder) -> Batch:
    """Every model (in running order, on `device`) on one decoded batch -> the Batch the sinks
    see. `decoder` places the windows of images a generator drew in this batch."""
    good = [it for it in items if it.reason is None]
    ids = source.ids
    batch = Batch([it.index for it in good], [ids[it.index] for it in good], {},
                  skipped=[{"index": it.index, "id": ids[it.index], "reason": it.reason}
                           for it in items if it.reason is not None],
                  notes=[{"index": it.index, "id": ids[it.index], "note": it.note}
                         for it in good if it.note],
                  sizes=[it.size for it in good],
                  images=[it.image for it in good] if need.images else None)
    if need.windows and all(it.windows is not None for it in good):  # decoded, not drawn
        batch.windows = {m.name: [it.windows[k] for it in good] for k, m in enumerate(zoo)
                         if not m.is_generator}
    if not good:
        return batch
    drawn = None  # images drawn by a generator earlier in this batch
    for k, model in enumerate(zoo):
        parts = [it.inputs[k] for it in good]
        if parts[0] is None:  # this model looks at what the generator drew
            parts = [model.preprocess(im) for im in drawn]
        x = _stack(model, parts).to(device, non_blocking=True)
        taps, output = _forward(model, x, need.taps.get(model.name, {}), infos[model.name],
                                autocast)
        if model.name in need.taps:
            batch.features[model.name] = taps
        if model.is_generator:
            drawn = model.to_images(output)
            batch.sizes = [(im.height, im.width) for im in drawn]
            if need.images:
                batch.images = [np.asarray(im) for im in drawn]
            if need.windows:
                for j, m in enumerate(zoo):
                    if not m.is_generator:
                        batch.windows[m.name] = [decoder.probes[j](s) for s in batch.sizes]
    return batch


def _forward(model: Model, x: torch.Tensor, wanted: dict[str, set[str]], infos, autocast):
    """One model on one batch; each tapped output (or input) is reduced inside its hook.
    Returns (taps: layer -> reduction -> tensor, the model's output)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    # the forward's own output, and a classifier head's input, are layers no module outputs
    pseudo = {n for n in (OUTPUT, PENULTIMATE) if n in wanted and n not in model.module_names}
    outputs = [n for n, hows in wanted.items() if n not in pseudo and any(
        not h.startswith("input:") for h in hows)]
    inputs: dict[str, list[tuple[str, list[str]]]] = {}  # module -> [(tap, reductions)]
    for n, hows in wanted.items():
        if n not in pseudo and any(h.startswith("input:") for h in hows):
            inputs.setdefault(n, []).append(
                (n, [h for h in hows if h.startswith("input:")]))
    if PENULTIMATE in pseudo:
        inputs.setdefault(model.head, []).append((PENULTIMATE, sorted(wanted[PENULTIMATE])))

    def reduce(name, output):
        t = first_tensor(output)
        out.setdefault(name, {}).update(
            {how: pool(t, infos[name], how) for how in wanted[name] if not how.startswith("input:")})

    def reduce_input(module, tensor):
        for tap, hows in inputs[module]:
            out.setdefault(tap, {}).update(
                {how: pool(tensor, infos[tap], how.removeprefix("input:")) for how in hows})

    with torch.inference_mode(), autocast, hooks(model.module, outputs, reduce,
                                                 input_names=list(inputs), input_fn=reduce_input):
        result = model.forward(x)
    if OUTPUT in pseudo:
        reduce(OUTPUT, result)
    return out, result


def progress_bar(total: int, enabled: bool = True, desc: str = "extracting"):
    """The one progress bar of zoolens (tqdm: terminal or notebook), silent when disabled."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=desc, dynamic_ncols=True, disable=not enabled)
