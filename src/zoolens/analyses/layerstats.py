"""Per-unit activation statistics of every tapped layer: `layerstats(models, images)`.

Over all (image, position) samples of each unit (a channel of a tapped layer): the mean, the
standard deviation, the fraction of samples where the unit is positive, the minimum and the
maximum; per layer, the dead units (zero variance: Rosetta excludes them, and a probe gains
nothing from them) and summaries. Useful before mining or probing: which layers carry signal,
how sparse they are, what a layer's scale is.

The statistics stream and merge exactly: per unit a count, a float64 mean and sum of squared
deviations combined across batches with Chan et al.'s pairwise update (no cancellation when a
unit's level dwarfs its spread), a count of positive samples, a running min and max. Memory is
O(units), whatever the number of images.

This module is also the worked example of README's "Extending zoolens": a sink, a function that
runs it through the planner and writes `layerstats.json`, one line in the CLI, one report
section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .. import plan
from ..backends import Backend, resolve_backend
from ..sinks import Batch, Need, Sink
from ..sources import open_source
from ..zoo.model import resolve_layers
from ..zoo.registry import as_models
from .result import AnalysisResult

__all__ = ["layerstats", "LayerStatsSink", "LayerStatsResult", "UnitMoments"]


class UnitMoments:
    """Streaming, mergeable moments of C units: count, mean, M2 (sum of squared deviations),
    positive count, min, max — all over samples, float64."""

    def __init__(self, channels: int):
        self.n = 0
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)
        self.positive = np.zeros(channels, np.int64)
        self.min = np.full(channels, np.inf)
        self.max = np.full(channels, -np.inf)

    def update(self, x: torch.Tensor) -> None:
        """x: (samples, C)."""
        x = x.detach().to("cpu", torch.float64)
        mean = x.mean(dim=0)
        self._combine(x.shape[0], mean.numpy(), ((x - mean) ** 2).sum(dim=0).numpy(),
                      (x > 0).sum(dim=0).numpy().astype(np.int64), x.amin(dim=0).numpy(),
                      x.amax(dim=0).numpy())

    def merge(self, other: "UnitMoments") -> "UnitMoments":
        """Chan et al.'s pairwise combination: exact in exact arithmetic, stable in floats."""
        return self._combine(other.n, other.mean, other.m2, other.positive, other.min, other.max)

    def _combine(self, n_b, mean_b, m2_b, positive_b, min_b, max_b) -> "UnitMoments":
        """Fold in the moments of n_b more samples (`merge`, and `update`'s batch)."""
        if n_b == 0:
            return self
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta ** 2 * (self.n * n_b / n)
        self.n = n
        self.positive = self.positive + positive_b
        self.min, self.max = np.minimum(self.min, min_b), np.maximum(self.max, max_b)
        return self

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1))

    def dead(self, rtol: float = 1e-12) -> np.ndarray:
        """Zero-variance units, as `zoolens.stats.CrossCorrelation` counts them."""
        var = self.m2 / max(self.n, 1)
        return var <= rtol * (var + self.mean ** 2)

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("n", "mean", "m2", "positive", "min", "max")}

    def load_state_dict(self, state: dict) -> "UnitMoments":
        for k, v in state.items():
            setattr(self, k, v)
        return self


class LayerStatsSink(Sink):
    """UnitMoments per model and layer, over every (image, position) sample of its full maps."""

    def __init__(self, layers: dict[str, list[str]], channels: dict[str, dict[str, int]]):
        self.layers = layers
        self.need = Need.of(layers, "none")
        self.add_state("moments", {(m, layer): UnitMoments(channels[m][layer])
                                   for m, names in layers.items() for layer in names},
                       merge="merge")
        self.add_state("images", 0, merge="sum")

    def update(self, batch: Batch) -> None:
        if not batch.indices:
            return
        for (m, layer), moments in self.moments.items():
            x = batch.features[m][layer]["none"]
            # (B, C, h, w) maps and (B, C) vectors alike -> (samples, C)
            moments.update(x.flatten(2).transpose(1, 2).reshape(-1, x.shape[1]) if x.ndim > 2
                           else x)
        self.images += len(batch.indices)

    def result(self) -> dict[tuple[str, str], UnitMoments]:
        return self.moments


@dataclass
class LayerStatsResult(AnalysisResult):
    """Per model and layer: `units`, `samples` (images x positions), `mean` / `std` / `min` /
    `max` of the units' means and standard deviations summarised, `positive` (the mean fraction
    of positive samples: 1 - sparsity), `dead` (unit ids with zero variance). Per-unit arrays
    are in `layerstats.npz` beside the JSON."""

    analysis: ClassVar[str] = "layerstats"

    models: list[str]
    images: int
    layers: dict[str, list[dict]]
    skipped: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)


    def summary(self) -> str:
        n_layers = sum(len(v) for v in self.layers.values())
        dead = sum(len(row["dead"]) for rows in self.layers.values() for row in rows)
        return (f"{n_layers} layers of {len(self.models)} model(s) over {self.images} images; "
                f"{dead} dead units")


def layerstats(models, images, *, layers="blocks", batch_size: int = 32, device=None,
               num_workers: int | None = None, pretrained: bool = True, seed: int = 0,
               store=None, progress: bool = True, out: str | Path | None = None,
               backend: str | Backend | None = None) -> LayerStatsResult:
    """Activation statistics of every unit of the tapped `layers` of `models` on `images`.

    models: specs or Models; images: anything `open_source` takes; layers: a selector or a dict
    per model. store: a feature store holding the layers as full maps (`extract --pool none`),
    read instead of running the models. backend: where the models run ("local", "ray", or a
    `zoolens.RayBackend`; see `zoolens.plan.run`). With `out`, writes `layerstats.json` and the
    per-unit arrays in `layerstats.npz`."""
    runner = resolve_backend(backend, num_workers=num_workers)
    models = as_models(models, pretrained=pretrained, device=runner.load_device(device),
                       seed=seed)
    source = open_source(images)
    chosen = resolve_layers(models, layers)
    channels = {m.name: {i.name: i.channels for i in m.layers(chosen[m.name])} for m in models}
    sink = LayerStatsSink(chosen, channels)
    summary = plan.run(models, source, [sink], store=store, batch_size=batch_size,
                       device=device, progress=progress, backend=runner,
                       desc="layer statistics")
    if sink.images == 0:
        raise plan.no_usable_images(source, list(source.skipped_at_listing) + summary.skipped)
    rows: dict[str, list[dict]] = {}
    arrays = {}
    for (m, layer), mo in sink.result().items():
        dead = np.flatnonzero(mo.dead())
        rows.setdefault(m, []).append({
            "layer": layer, "units": int(mo.mean.size), "samples": int(mo.n),
            "mean": float(mo.mean.mean()), "std": float(mo.std.mean()),
            "min": float(mo.min.min()), "max": float(mo.max.max()),
            "positive": float((mo.positive / mo.n).mean()),
            "dead": [f"{m}/{layer}:{c}" for c in dead.tolist()]})
        for key in ("mean", "std", "min", "max"):
            arrays[f"{m}/{layer}/{key}"] = getattr(mo, key)
        arrays[f"{m}/{layer}/positive"] = mo.positive / mo.n
    result = LayerStatsResult(models=[m.name for m in models], images=sink.images, layers=rows,
                              skipped=list(source.skipped_at_listing) + summary.skipped,
                              settings={"layers": chosen, "source": source.description,
                                        "specs": {m.name: m.spec for m in models},
                                        "weights": {m.name: m.record() for m in models}})
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / "layerstats.npz", **arrays)
        (out / "layerstats.json").write_text(json.dumps(result.to_dict(), indent=1))
    return result
