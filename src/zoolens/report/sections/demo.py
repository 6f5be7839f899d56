"""`zoolens demo`'s run record (demo.json): the zoo, seeds and timings. It opens the run
settings; its concept, discovery and OOD scores are shown in the rosetta, discover and ood
sections."""

from __future__ import annotations

from ..page import Page, Result, as_dict, is_num, kv, num
from .base import Facts, Section

__all__ = ["SECTION"]


def _facts(d: dict) -> Facts:
    seconds = as_dict(d.get("seconds")).get("total")
    return Facts(models=list(as_dict(d.get("zoo"))),
                 headline=(f"{d.get('images', '?')} images"
                           + (f", {num(seconds)} s in all" if is_num(seconds) else "")))


def _render(d: dict, page: Page, r: Result) -> str:
    # the zoo itself is listed in the Models table, with what each model was used by
    return kv([("zoo", list(as_dict(d.get("zoo")))), ("images", d.get("images")),
               ("seeds", d.get("seeds")), ("seconds", d.get("seconds")),
               ("torch threads", d.get("torch_threads"))])


SECTION = Section(
    kind="demo", title="Demo run", facts=_facts, render=_render, record=True,
    known_keys=frozenset({"zoo", "images", "seeds", "seconds", "torch_threads",
                          "concept_scores", "discovery", "ood"}))
