"""`RosettaResult`: everything a Rosetta run found, with the settings that produced it, as JSON."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ...errors import InputError
from ...resize import as_size
from ..result import AnalysisResult

__all__ = ["RosettaResult"]


def _pair_key_str(pair) -> list[str]:
    return [str(pair[0]), str(pair[1])]


@dataclass
class RosettaResult(AnalysisResult):
    """Everything a Rosetta run found, with the settings that produced it.

    Attributes
    ----------
    models : model names, in set-unit order
    images : number of images used
    resolution : (H, W) common grid all maps were resized to
    units : {model: number of units tapped}
    pairs : {(model_a, model_b): [{"units": [id_a, id_b], "correlation": r}, ...]} sorted by r desc
    sets : [{"units": [id per model], "mean_correlation": r}, ...]
    concepts : [{"id": int, "sets": [set indices]}, ...]
    dead_units : {model: [unit ids with zero variance]}
    skipped : [{"item": ..., "reason": ...}, ...] images or layers left out, and why
    settings : {"mode", "k", "anchor", "min_correlation", "pairwise", ...}
    """

    analysis: ClassVar[str] = "rosetta"

    models: list[str]
    images: int
    resolution: tuple[int, int]
    units: dict[str, int]
    pairs: dict[tuple[str, str], list[dict]] = field(default_factory=dict)
    sets: list[dict] = field(default_factory=list)
    concepts: list[dict] = field(default_factory=list)
    dead_units: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.resolution = tuple(int(v) for v in as_size(self.resolution))
        self.pairs = {tuple(k): [dict(p) for p in v] for k, v in self.pairs.items()}
        for key, items in self.pairs.items():
            if len(key) != 2:
                raise InputError(f"pairs: keys must be (model_a, model_b), got {key!r}")
            items.sort(key=lambda p: -p["correlation"])

    @staticmethod
    def pair_records(buddies: Sequence[tuple[str, str, float]]) -> list[dict]:
        """`label_buddies` output -> the `pairs` entries of one model pair."""
        return [{"units": [u, v], "correlation": float(r)} for u, v, r in buddies]

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["resolution"] = list(self.resolution)
        # JSON keys are strings and model specs contain ':' and '/': list the pairs instead
        d["pairs"] = [{"models": _pair_key_str(k), "buddies": v} for k, v in self.pairs.items()]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RosettaResult:
        d["pairs"] = {tuple(p["models"]): p["buddies"] for p in d.get("pairs", [])}
        d["resolution"] = tuple(d["resolution"])
        return cls(**d)
