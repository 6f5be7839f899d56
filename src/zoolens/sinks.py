"""What flows from the engine to the analyses.

- `Batch`: the images of one batch that decoded, their tapped and reduced activations, and the
  per-image facts analyses need (decoded size, where each model's input lies in the image, the
  decoded pixels when asked for).
- `Need`: what a sink asks of a pass — per model, the layers and how each is reduced, and
  whether it wants the decoded images and the preprocessing windows. The planner merges the
  needs of all sinks of a pass into one request.
- `Sink`: the protocol every analysis follows. A sink writes `update(batch)` and `result()`, and
  declares its state once with `add_state(name, default, merge=...)`; `state_dict()`,
  `load_state_dict()` and `merge()` then come from this base class (the shape of torchmetrics'
  `Metric` and Ray Data's aggregators). Sinks fed disjoint parts of a dataset — batches, chunks,
  processes, machines — merge into the sink of all of it; a backend needs no per-analysis code.
  `fresh()` gives an empty sink made as this one was (for each share of a split run), and
  `on_driver` says a sink must stay in the process that started the run.

This module imports neither the engine nor the store: both import it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["Batch", "Need", "Sink", "MERGE_RULES"]


@dataclass
class Batch:
    """One batch, as every sink receives it.

    indices: positions in the source of the images that decoded (in batch order).
    ids: their ids.
    features: model name -> layer -> reduction ("mean", "cls", "none", "tokens", ...) -> tensor
        with the batch on axis 0.
    skipped: ``{"index", "id", "reason"}`` of the images of this batch that could not be used.
    notes: ``{"index", "id", "note"}`` (e.g. "converted from CMYK").
    sizes: the decoded (H, W) of each image (replayed from a feature store: the sizes it
        recorded; empty for a store written before sizes were kept).
    windows: model name -> one `zoolens.zoo.window.Window` per image, where the model's input
        lies in the image (only when a sink's `Need.windows` asked for them).
    images: the decoded RGB images as (H, W, 3) uint8 arrays (only when `Need.images`).
    """

    indices: list[int]
    ids: list[str]
    features: dict[str, dict[str, dict[str, torch.Tensor]]]
    skipped: list[dict] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    windows: dict[str, list] = field(default_factory=dict)
    images: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def maps(self, model: str, layers: list[str], how: str = "none") -> list[torch.Tensor]:
        """The tensors of `layers` of `model` reduced by `how`, in the order given."""
        return [self.features[model][layer][how] for layer in layers]


@dataclass
class Need:
    """What a sink asks of a pass.

    taps: model name -> layer -> the reductions wanted (`zoolens.taps.REDUCTIONS`).
    images: the decoded images in `Batch.images`.
    windows: each model's preprocessing window per image in `Batch.windows`.
    """

    taps: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    images: bool = False
    windows: bool = False

    @classmethod
    def of(cls, layers: dict[str, list[str]], how: str | set[str], **flags) -> "Need":
        """Every layer of every model reduced the same way: ``Need.of({"m": ["l1"]}, "mean")``."""
        hows = {how} if isinstance(how, str) else set(how)
        return cls({m: {name: set(hows) for name in names} for m, names in layers.items()},
                   **flags)

    @classmethod
    def from_pools(cls, pools: dict[str, dict[str, list[str]]]) -> "Need":
        """The taps of a store's poolings: ``{model: {layer: [pooling, ...]}}``."""
        return cls({m: {layer: set(p) for layer, p in by.items()} for m, by in pools.items()})

    def __or__(self, other: "Need") -> "Need":
        taps = {m: {name: set(h) for name, h in by.items()} for m, by in self.taps.items()}
        for m, by in other.taps.items():
            for name, hows in by.items():
                taps.setdefault(m, {}).setdefault(name, set()).update(hows)
        return Need(taps, self.images or other.images, self.windows or other.windows)


# ---------------------------------------------------------------------------------------------
# merge rules: how two partial states of one quantity combine


def _sum(a, b):
    return a + b


def _cat(a, b):
    if isinstance(a, dict):  # e.g. per model or per layer: each key's rows concatenated
        merged = {key: _cat(value, b[key]) if key in b else value for key, value in a.items()}
        merged.update((key, copy.deepcopy(value)) for key, value in b.items() if key not in a)
        return merged
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b])
    return list(a) + list(b)


def _union(a, b):
    if isinstance(a, set):
        return a | b
    return sorted(set(a) | set(b))


def _merge_objects(a, b):
    """Accumulators with their own `merge` (CrossCorrelation, LayerCKA...), or dicts of them."""
    if isinstance(a, dict):
        for key, value in b.items():
            if key in a:
                a[key] = _merge_objects(a[key], value)
            else:
                a[key] = copy.deepcopy(value)
        return a
    return a.merge(b)


MERGE_RULES: dict[str, Callable[[Any, Any], Any]] = {
    "sum": _sum,  # counts, sums, sums of squares, cross-products
    "cat": _cat,  # per-image rows or records, in the order fed (dicts of them: key by key)
    "union": _union,  # sets of indices done
    "merge": _merge_objects,  # objects (or dicts of objects) that merge themselves
}


def _export(value, rule: str):
    if rule == "merge":
        if isinstance(value, dict):
            return {k: _export(v, rule) for k, v in value.items()}
        return value.state_dict()
    return copy.deepcopy(value)


def _import(current, saved, rule: str):
    if rule == "merge":
        if isinstance(saved, dict) and isinstance(current, dict):
            return {k: _import(current[k], v, rule) for k, v in saved.items()}
        return current.load_state_dict(saved)
    return copy.deepcopy(saved)


class Sink:
    """Base class of every analysis that consumes batches.

    Subclasses set `need` (a `Need`), declare each piece of state in `__init__` with
    `add_state(name, default, merge=rule)`, and write `update(batch)` and `result()`. A rule is
    one of `MERGE_RULES` ("sum", "cat", "union", "merge") or a function ``(a, b) -> merged``.
    Everything else — `state_dict`, `load_state_dict`, `merge`, `fresh` — is here, once.

    A backend that splits a run (`zoolens.backends.RayBackend`) feeds `fresh()` copies of a sink
    in its workers and merges their states into the sink it was given, in source order. A sink
    that cannot run there sets `on_driver = True`: one that writes files on the machine that
    started the run (`StoreWriter`), or one whose result depends on seeing the whole stream in
    one process; the backend then sends it the batches it needs.

    The contract, tested for every sink: a sink fed the first part of a dataset, merged with one
    fed the rest, gives the result of one sink fed all of it.

    >>> class Count(Sink):
    ...     def __init__(self):
    ...         self.need = Need()
    ...         self.add_state("n", 0, merge="sum")
    ...     def update(self, batch):
    ...         self.n += len(batch)
    ...     def result(self):
    ...         return self.n
    """

    need: Need = Need()
    #: True: runs only where the run started (writes local files, needs the whole stream).
    on_driver: bool = False

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        # the constructor's arguments, kept so that `fresh()` can build an empty twin, like
        # scikit-learn's `clone` (the arguments are shared, not copied: they are settings)
        self.__dict__["_init_args"] = (args, kwargs)
        return self

    def fresh(self) -> "Sink":
        """A new, empty sink made with this one's constructor arguments (its state as declared
        by `add_state`, before any batch)."""
        args, kwargs = self.__dict__.get("_init_args", ((), {}))
        return type(self)(*args, **kwargs)

    def add_state(self, name: str, default, merge: str | Callable = "sum") -> None:
        if isinstance(merge, str) and merge not in MERGE_RULES:
            raise ValueError(f"merge rule {merge!r}: use one of {', '.join(MERGE_RULES)} or a "
                             "function")
        rules = self.__dict__.setdefault("_merge_rules", {})
        rules[name] = merge
        setattr(self, name, default)

    def update(self, batch: Batch) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def result(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Every declared state, as copies (accumulators as their own state dicts)."""
        rules = self.__dict__.get("_merge_rules", {})
        return {name: _export(getattr(self, name), rule if isinstance(rule, str) else "plain")
                for name, rule in rules.items()}

    def load_state_dict(self, state: dict) -> "Sink":
        """Replace every declared state by the saved one; returns self."""
        rules = self.__dict__.get("_merge_rules", {})
        missing = [n for n in rules if n not in state]
        if missing:
            raise KeyError(f"{type(self).__name__}: saved state lacks {', '.join(missing)}")
        for name, rule in rules.items():
            rule = rule if isinstance(rule, str) else "plain"
            setattr(self, name, _import(getattr(self, name), state[name], rule))
        return self

    def merge(self, other: "Sink") -> "Sink":
        """Add another sink's state (fed other data) into this one; returns self."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        rules = self.__dict__.get("_merge_rules", {})
        for name, rule in rules.items():
            fn = MERGE_RULES[rule] if isinstance(rule, str) else rule
            setattr(self, name, fn(getattr(self, name), getattr(other, name)))
        return self
