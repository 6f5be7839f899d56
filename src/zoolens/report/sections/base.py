"""What the report page knows about one analysis: a `Section`, and the `Facts` its result
contributes to the run-settings and summary tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..page import Page, Result

__all__ = ["Section", "Facts"]


@dataclass
class Facts:
    """One result's row in the Runs table (models, images ... weights) and the Summary table
    (headline); a field left None is an empty cell."""

    models: list[str] = field(default_factory=list)
    images: Any = None
    source: Any = None
    resolution: str | None = None
    layers: str | None = None
    weights: str | None = None
    headline: str = ""


@dataclass(frozen=True)
class Section:
    """Everything the page needs about one analysis.

    Attributes:
        kind: the analysis; its results are ``<kind>.json`` or carry ``"analysis": kind``.
        title: the heading of its section on the page.
        facts: its result's settings and headline, from the JSON (a dict).
        render: ``render(data, page, result) -> html``, the body of the section for one result;
            keys of the JSON it does not list in `known_keys` are appended generically.
        hint: the command that makes the result, shown when it is expected but missing.
        expected: whether `zoolens demo` writes it (its absence is pointed out by default).
        known_keys: the JSON keys `render` shows (``analysis`` and ``version`` always are).
        record: a run record rather than an analysis (the demo's): shown at the top of the run
            settings, its models listed even where no analysis used them.
    """

    kind: str
    title: str
    facts: Callable[[dict], Facts]
    render: Callable[[dict, Page, Result], str]
    hint: str = ""
    expected: bool = False
    known_keys: frozenset[str] = frozenset()
    record: bool = False
