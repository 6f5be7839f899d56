"""`zoolens extract`: the feature store's summary (models, layers, how many images)."""

from __future__ import annotations

from ..page import Page, Result, as_dict, kv, models_layers_text, notes_list, skipped, strs, table
from .base import Facts, Section

__all__ = ["SECTION"]


def _facts(d: dict) -> Facts:
    models = as_dict(d.get("models"))
    return Facts(models=list(models), images=d.get("images"),
                 layers=models_layers_text(models),
                 headline=f"{d.get('extracted', '?')} of {d.get('images', '?')} images extracted")


def _render(d: dict, page: Page, r: Result) -> str:
    out = [kv([("store", d.get("store")), ("images", d.get("images")),
               ("extracted", d.get("extracted")), ("complete", d.get("complete")),
               ("last run", d.get("last_run"))], mono=("store",))]
    if d.get("complete") is False:
        out.append(page.note(f"{r.label}: the extraction is incomplete (interrupted); rerun the "
                             "same command to resume", r.anchor, r.label))
    models = as_dict(d.get("models"))
    if models:
        out.append(table([{"model": m, "layers": len(strs(v)), "names": strs(v)}
                          for m, v in models.items()], mono=("model",), what="models"))
    return "".join(out) + notes_list(d) + skipped(d)


SECTION = Section(
    kind="extract", title="Feature extraction", facts=_facts, render=_render,
    hint="zoolens extract -m MODEL -i IMAGES -o DIR/features",
    known_keys=frozenset({"store", "models", "images", "extracted", "skipped", "notes",
                          "complete", "last_run"}))
