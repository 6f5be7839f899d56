"""Unit identity: a model's tapped layers, concatenated in order, give each channel a global index;
its id string is `<model>/<layer>:<channel>`.

Model names may contain '/' and ':' (`open_clip:ViT-B-32/laion2b_s34b_b79k`); layer names (module
paths) may not contain '/', so an id splits unambiguously at its last ':' and the last '/' before
it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import InputError, UnknownLayerError

__all__ = ["UnitIndex"]


class UnitIndex:
    """Global channel index <-> (layer, channel) <-> unit id for one model's concatenated layers.

    Parameters
    ----------
    model : str
        The model's name as used in unit ids (its spec, e.g. `timm:resnet50`).
    layers : sequence of (layer name, channels)
        In concatenation order. `TapInfo` records work too (`UnitIndex.from_taps`).
    """

    def __init__(self, model: str, layers: Sequence[tuple[str, int]]) -> None:
        self.model = str(model)
        self.layers = tuple((str(name), int(c)) for name, c in layers)
        if not self.model:
            raise InputError("model: expected a non-empty name")
        if not self.layers:
            raise InputError(f"layers of {self.model}: expected at least one (name, channels)")
        names = [name for name, _ in self.layers]
        for name, c in self.layers:
            if not name or "/" in name:
                raise InputError(f"layer {name!r} of {self.model}: layer names must be non-empty "
                                 f"and contain no '/'")
            if c < 1:
                raise InputError(f"layer {name!r} of {self.model}: has {c} channels")
        if len(set(names)) != len(names):
            raise InputError(f"layers of {self.model}: duplicate names in {names}")
        self._offsets = np.concatenate([[0], np.cumsum([c for _, c in self.layers])])
        self._by_name = {name: i for i, name in enumerate(names)}

    @classmethod
    def from_taps(cls, model: str, taps: Sequence) -> UnitIndex:
        """From records with `.name` and `.channels` (e.g. `zoolens.taps.TapInfo`)."""
        return cls(model, [(t.name, t.channels) for t in taps])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return f"UnitIndex({self.model!r}, {list(self.layers)})"

    def __eq__(self, other) -> bool:
        return isinstance(other, UnitIndex) and (self.model, self.layers) == (other.model,
                                                                              other.layers)

    def layer_slice(self, layer: str) -> slice:
        """The global indices of one layer's channels."""
        i = self._layer_pos(layer)
        return slice(int(self._offsets[i]), int(self._offsets[i + 1]))

    def _layer_pos(self, layer: str) -> int:
        try:
            return self._by_name[layer]
        except KeyError:
            have = ", ".join(self._by_name)
            raise UnknownLayerError(f"unknown layer {layer!r} in {self.model}; have {have}",
                                    ) from None

    def locate(self, i: int) -> tuple[str, int]:
        """Global index -> (layer, channel)."""
        i = int(i)
        if not 0 <= i < len(self):
            raise InputError(f"unit index {i} is outside 0..{len(self) - 1} of {self.model}")
        pos = int(np.searchsorted(self._offsets, i, side="right")) - 1
        return self.layers[pos][0], i - int(self._offsets[pos])

    def index(self, layer: str, channel: int) -> int:
        """(layer, channel) -> global index."""
        pos = self._layer_pos(layer)
        c = self.layers[pos][1]
        if not 0 <= int(channel) < c:
            raise InputError(f"channel {channel} is outside 0..{c - 1} of {self.model}/{layer}")
        return int(self._offsets[pos]) + int(channel)

    def unit_id(self, i: int) -> str:
        """Global index -> `<model>/<layer>:<channel>`."""
        layer, channel = self.locate(i)
        return f"{self.model}/{layer}:{channel}"

    def unit_ids(self, indices=None) -> list[str]:
        """Ids of `indices` (default: all units, in order)."""
        idx = range(len(self)) if indices is None else indices
        return [self.unit_id(i) for i in idx]

    def index_of(self, unit_id: str) -> int:
        """`<model>/<layer>:<channel>` -> global index (the model must be this one)."""
        model, layer, channel = self.parse(unit_id)
        if model != self.model:
            raise InputError(f"unit {unit_id!r} belongs to {model!r}, not {self.model!r}")
        return self.index(layer, channel)

    @staticmethod
    def parse(unit_id: str) -> tuple[str, str, int]:
        """`<model>/<layer>:<channel>` -> (model, layer, channel)."""
        try:
            rest, channel = str(unit_id).rsplit(":", 1)
            model, layer = rest.rsplit("/", 1)
            if not model or not layer:
                raise ValueError
            return model, layer, int(channel)
        except ValueError:
            raise InputError(f"unit id {unit_id!r}: expected '<model>/<layer>:<channel>'") from None
