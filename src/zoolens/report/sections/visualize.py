"""`zoolens visualize`: one picture per image (PCA of patch features, or attention per head)."""

from __future__ import annotations

from ..page import Page, Result, esc, kv, notes_list, records, size_text, skipped
from .base import Facts, Section

__all__ = ["SECTION"]


def _facts(d: dict) -> Facts:
    images = records(d.get("images"))
    return Facts(models=[str(d["model"])] if d.get("model") else [], images=len(images),
                 resolution=size_text(d.get("input_size")),
                 layers=d.get("layer") and f"{d.get('layer')} ({d.get('feature')})",
                 headline=f"{d.get('kind', '?')} of {len(images)} images")


def _render(d: dict, page: Page, r: Result) -> str:
    images = records(d.get("images"))
    kind = d.get("kind")
    out = [kv([
        ("kind", kind), ("model", d.get("model")), ("layer", d.get("layer")),
        ("feature", d.get("feature")), ("patch grid", size_text(d.get("grid"))),
        ("input size", size_text(d.get("input_size"))), ("threshold", d.get("threshold")),
        ("heads", d.get("heads")), ("images", len(images)),
    ], mono=("model",))]
    if not images:
        out.append(page.note(f"{r.label}: no pictures", r.anchor, r.label, missing=True))
    shown, more = page.sample(images, r, "images")
    explain = ("the image, then its patch features' first three principal components as RGB"
               if kind == "pca" else "the image, then the class token's attention per head")
    cards = []
    for i in shown:
        pic = page.image(i.get("file"), r, f"{kind} of {i.get('id')}", cls="px",
                         what=f"picture of {i.get('id')}")
        fg = i.get("foreground_patches")
        cap = f"<b class='mono'>{esc(i.get('id'))}</b>" + (
            f"<br>{esc(fg)} foreground patches" if fg is not None else "")
        cards.append(f'<figure class="card">{pic}<figcaption>{cap}</figcaption></figure>')
    if cards:
        out.append(f"<h4>Pictures</h4><p class='muted'>Each row: {explain}.</p>{more}"
                   f'<div class="gallery wide">{"".join(cards)}</div>')
    return "".join(out) + notes_list(d) + skipped(d)


SECTION = Section(
    kind="visualize", title="Visualization", facts=_facts, render=_render,
    hint="zoolens visualize -m MODEL -i IMAGES -o DIR/visualize",
    known_keys=frozenset({"model", "spec", "kind", "layer", "feature", "grid", "input_size",
                          "threshold", "heads", "notes", "arrays", "images", "skipped"}))
