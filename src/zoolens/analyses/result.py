"""What an analysis returns: a dataclass that is also its `<analysis>.json`.

`AnalysisResult` gives a result dataclass `to_dict` (its fields, plus ``"analysis"``, ``"version"``
and whatever `derived()` adds, e.g. a leaderboard computed from the rows), `to_json`, and
`from_json`, which checks the ``"analysis"`` key, drops the derived keys and rebuilds the
dataclass (`from_dict` is where a result turns JSON lists back into tuples or keys)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import ClassVar

from ..errors import InputError

__all__ = ["AnalysisResult"]


class AnalysisResult:
    """Mixin for a result dataclass: set `analysis` (the kind, as in ``<analysis>.json``)."""

    analysis: ClassVar[str]
    version: ClassVar[int] = 1

    def derived(self) -> dict:
        """Keys computed from the fields, written for readers and dropped when read back."""
        return {}

    def to_dict(self) -> dict:
        return {"analysis": self.analysis, "version": self.version, **asdict(self),
                **self.derived()}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**d)

    @classmethod
    def from_json(cls, s: str | bytes | dict):
        d = json.loads(s) if isinstance(s, (str, bytes)) else dict(s)
        if d.pop("analysis", cls.analysis) != cls.analysis:
            raise InputError(f"from_json: not a {cls.analysis} result")
        d.pop("version", None)
        for key in cls.derived_keys():
            d.pop(key, None)
        return cls.from_dict(d)

    @classmethod
    def derived_keys(cls) -> tuple[str, ...]:
        return ()
