"""`zoolens datasets compare`: how two image sets differ (Fréchet distance, precision / recall /
density / coverage, the clusters only one set populates) and the contact sheet of those."""

from __future__ import annotations

from ..page import Page, Result, as_dict, esc, kv, strs, weights_text
from .base import Facts, Section
from .curate import render_common

__all__ = ["SECTION"]


def _facts(d: dict) -> Facts:
    s = as_dict(d.get("settings"))
    c = as_dict(d.get("counts"))
    sets = as_dict(s.get("sets"))
    names = strs(d.get("names")) or ["A", "B"]
    return Facts(models=[str(s["model"])] if s.get("model") else [],
                 images=c.get("used_a") is not None
                 and f"{c.get('used_a')} {names[0]} / {c.get('used_b')} {names[-1]}",
                 source="; ".join(f"{k}: {as_dict(v).get('source')}" for k, v in sets.items()),
                 layers=s.get("layer") and f"{s.get('layer')} ({s.get('pool')})",
                 weights=weights_text(as_dict(s.get("weights")).get("pretrained")),
                 headline=str(d.get("summary") or ""))


def _render(d: dict, page: Page, r: Result) -> str:
    c = as_dict(d.get("counts"))
    names = strs(d.get("names")) or ["A", "B"]
    head = ("<p class='muted'>Precision: share of " + esc(names[-1]) + " inside the k-NN balls "
            "of " + esc(names[0]) + "; recall: share of " + esc(names[0]) + " inside those of "
            + esc(names[-1]) + " (Kynkäänniemi et al. 2019); density and coverage: Naeem et al. "
            "2020.</p>")
    head += kv([("Fréchet distance", c.get("frechet")), ("precision", c.get("precision")),
                ("recall", c.get("recall")), ("density", c.get("density")),
                ("coverage", c.get("coverage")),
                (f"clusters only in {names[0]}", c.get("only_a")),
                (f"clusters only in {names[-1]}", c.get("only_b"))])
    return head + render_common(d, page, r, "datasets")


SECTION = Section(
    kind="datasets", title="Dataset comparison", facts=_facts, render=_render,
    hint="zoolens datasets compare -m MODEL --images-a A --images-b B -o DIR/datasets",
    known_keys=frozenset({"names", "summary", "counts", "settings", "tables", "files",
                          "skipped", "notes", "result"}))
