"""One streaming pass: images -> every model (each with its own preprocessing) -> hooks that
reduce each tapped output at once -> sinks (a store writer, statistic accumulators).

Memory holds one batch of activations at a time, whatever the number of images. Images are
decoded once, in DataLoader workers, and each model's preprocessing is applied to the decoded
image there too."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .errors import InputError
from .sources import BadImage, ImageSource
from .sources.generated import GeneratedImages
from .taps import first_tensor, hooks, pool
from .zoo.model import Model
from .zoo.registry import resolve_device

__all__ = ["Batch", "Sink", "Request", "RunSummary", "run", "plan_batches", "progress_bar"]

log = logging.getLogger("zoolens")

# model name -> layer name -> the poolings wanted ("mean", "cls", "none")
Request = dict[str, dict[str, set[str]]]


@dataclass
class Batch:
    """What sinks receive: the images that decoded, and the tapped, reduced activations."""

    indices: list[int]  # positions in the source
    ids: list[str]
    features: dict[str, dict[str, dict[str, torch.Tensor]]]  # model -> layer -> pool -> tensor
    skipped: list[dict] = field(default_factory=list)  # {"index", "id", "reason"}
    notes: list[dict] = field(default_factory=list)  # {"index", "id", "note"} e.g. converted


class Sink(Protocol):
    def update(self, batch: Batch) -> None: ...


@dataclass
class RunSummary:
    images: int = 0  # images seen by the models
    skipped: list[dict] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"


class _Decoding(Dataset):
    """Decodes item i once and applies every model's preprocessing to it (in a worker)."""

    def __init__(self, source: ImageSource, preprocess: Sequence):
        self.source, self.preprocess = source, list(preprocess)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index: int):
        try:
            decoded = self.source.decode(index)
            tensors = [p(decoded.image) for p in self.preprocess]
        except BadImage as exc:
            return index, None, str(exc), None
        except Exception as exc:  # a preprocessing that chokes on one image: skip it, say why
            return index, None, f"preprocessing failed: {type(exc).__name__}: {exc}", None
        return index, tensors, None, decoded.note


def _collate(items):
    good = [it for it in items if it[1] is not None]
    bad = [(it[0], it[2]) for it in items if it[1] is None]
    notes = [(it[0], it[3]) for it in good if it[3]]
    indices = [it[0] for it in good]
    per_model = []
    if good:
        for m in range(len(good[0][1])):
            shapes = {tuple(it[1][m].shape) for it in good}
            if len(shapes) > 1:
                raise InputError(f"model #{m}'s preprocessing gives images of different sizes "
                                 f"{sorted(shapes)}; it must resize or crop to one size")
            per_model.append(torch.stack([it[1][m] for it in good]))
    return indices, per_model, bad, notes


def plan_batches(indices: Iterable[int], batch_size: int,
                 chunk_size: int | None = None) -> list[list[int]]:
    """Batches of at most `batch_size`, in the given order, that never straddle a chunk boundary,
    so a resumed run feeds the models exactly the batches an uninterrupted one does."""
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


def run(models: Sequence[Model], source: ImageSource, request: Request, sinks: Sequence[Sink], *,
        indices: Iterable[int] | None = None, batch_size: int = 32, chunk_size: int | None = None,
        num_workers: int | None = None, device=None, amp: bool = False,
        progress: bool = True) -> RunSummary:
    """Stream `source` (or its `indices`) through every model, calling each sink per batch.

    `request` names, per model and layer, the poolings to compute inside the hooks."""
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise InputError(f"two models share a name ({names}); give each a distinct name")
    device = resolve_device(device) if device is not None else models[0].device
    generator = source.generator if isinstance(source, GeneratedImages) else None
    for m in models:
        if m.is_generator and m is not generator:
            raise InputError(f"{m.spec} is a generator (latent -> image): give it as the image "
                             "source (--generator), not as a model looking at images")
    for m in list(models) + ([generator] if generator is not None else []):
        if m.device != device:
            m.module.to(device)
            m.device = device
    indices = list(range(len(source))) if indices is None else list(indices)
    batches = plan_batches(indices, batch_size, chunk_size)
    infos = {m.name: {i.name: i for i in m.layers(list(request[m.name]))} if request.get(m.name)
             else {} for m in models}
    summary = RunSummary(device=str(device))
    autocast = (torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda"
                               else torch.bfloat16) if amp else contextlib.nullcontext())
    if isinstance(source, GeneratedImages):
        feed = _generated(source, models, batches, request, infos, device, autocast)
    else:
        workers = default_workers() if num_workers is None else num_workers
        feed = _decoded(source, models, batches, workers, device)
    bar = progress_bar(len(indices), progress)
    start = time.perf_counter()
    try:
        for batch_indices, inputs, features, bad, notes in feed:
            skipped = [{"index": i, "id": source.ids[i], "reason": r} for i, r in bad]
            for s in skipped:
                log.warning("skipped %s: %s", s["id"], s["reason"])
            for model in models:
                if batch_indices and model.name not in features:
                    features[model.name], _ = _forward(
                        model, inputs[model.name].to(device, non_blocking=True),
                        request.get(model.name, {}), infos[model.name], autocast)
            batch = Batch(batch_indices, [source.ids[i] for i in batch_indices], features,
                          skipped, [{"index": i, "id": source.ids[i], "note": n} for i, n in notes])
            for sink in sinks:
                sink.update(batch)
            summary.images += len(batch_indices)
            summary.skipped += skipped
            summary.notes += batch.notes
            bar.update(len(batch_indices) + len(bad))
            if skipped:
                bar.set_postfix(skipped=len(summary.skipped))
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
    return summary


def _decoded(source, models, batches, workers, device):
    """Batches decoded and preprocessed in DataLoader workers."""
    loader = DataLoader(_Decoding(source, [m.preprocess for m in models]), batch_sampler=batches,
                        num_workers=workers, collate_fn=_collate,
                        pin_memory=device.type == "cuda")
    for indices, per_model, bad, notes in loader:
        yield indices, {m.name: x for m, x in zip(models, per_model)}, {}, bad, notes


def _generated(source, models, batches, request, infos, device, autocast):
    """Batches drawn by a generator on the device; the generator's own taps come with them and
    every other model's preprocessing is applied to the generated images."""
    gen = source.generator
    others = [m for m in models if m is not gen]
    for indices in batches:
        z = source.latents(indices).to(device)
        taps, images = _forward(gen, z, request.get(gen.name, {}), infos.get(gen.name, {}),
                                autocast)
        pil = source.to_pil(first_tensor(images))
        inputs = {m.name: torch.stack([m.preprocess(p) for p in pil]) for m in others}
        features = {gen.name: taps} if gen in models else {}
        yield list(indices), inputs, features, [], []


def _forward(model: Model, x: torch.Tensor, wanted: dict[str, set[str]], infos, autocast):
    """One model on one batch; each tapped output is pooled inside its hook.
    Returns (taps: layer -> pool -> tensor, the model's output)."""
    out: dict[str, dict[str, torch.Tensor]] = {}

    def reduce(name, output):
        t = first_tensor(output)
        out[name] = {how: pool(t, infos[name], how) for how in wanted[name]}

    with torch.inference_mode(), autocast, hooks(model.module, list(wanted), reduce):
        result = model.forward(x)
    return out, result


def progress_bar(total: int, enabled: bool = True, desc: str = "extracting"):
    """The one progress bar of zoolens (tqdm: terminal or notebook), silent when disabled."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=desc, dynamic_ncols=True, disable=not enabled)
