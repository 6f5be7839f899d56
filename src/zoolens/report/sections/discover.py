"""`zoolens discover`: object masks per image, as overlays and mask thumbnails, with (from the
demo) scores against ground truth."""

from __future__ import annotations

from collections import Counter

from ..page import (Page, Result, as_dict, as_list, esc, is_num, kv, notes_list, num, records,
                    size_text, skipped, span_text)
from .base import Facts, Section

__all__ = ["SECTION"]


def _facts(d: dict) -> Facts:
    images = records(d.get("images"))
    n = sum(len(as_list(i.get("masks"))) for i in images)
    return Facts(models=[str(d["model"])] if d.get("model") else [], images=len(images),
                 resolution=size_text(d.get("input_size")),
                 layers=d.get("layer") and f"{d.get('layer')} ({d.get('feature')})",
                 headline=f"{n} masks in {len(images)} images")


def _card(i: dict, page: Page, r: Result, tail: str) -> str:
    """One image: its overlay, a thumbnail per mask, and what is known about them (`tail`:
    markup ending the caption)."""
    ms = records(i.get("masks"))
    overlay = page.image(i.get("overlay"), r, f"objects in {i.get('id')}", cls="px",
                         what=f"overlay of {i.get('id')}")
    thumbs = "".join(page.image(m.get("file"), r, f"mask {k}", cls="px",
                                what=f"mask {k} of {i.get('id')}")
                     for k, m in enumerate(ms))
    sc = [m.get("score") for m in ms if is_num(m.get("score"))]
    cap = (f"<b class='mono'>{esc(i.get('id'))}</b><br>{len(ms)} object(s)"
           + (f", scores {esc(', '.join(num(v) for v in sc))}" if sc else "")
           + (f"; stopped: {esc(i.get('stop_reason'))}" if i.get("stop_reason") else "")
           + tail)
    return (f'<figure class="card">{overlay}<div class="thumbs">{thumbs}</div>'
            f"<figcaption>{cap}</figcaption></figure>")


def _render(d: dict, page: Page, r: Result) -> str:
    images = records(d.get("images"))
    masks = [m for i in images for m in records(i.get("masks"))]
    stops = Counter(str(i.get("stop_reason")) for i in images if i.get("stop_reason"))
    out = [kv([
        ("model", d.get("model")), ("layer", d.get("layer")), ("feature", d.get("feature")),
        ("channels", span_text(d.get("channels"))),
        ("patch grid", size_text(d.get("grid"))), ("input size", size_text(d.get("input_size"))),
        ("tau", d.get("tau")), ("eps", d.get("eps")), ("objects per image (max)",
                                                       d.get("objects")),
        ("images", len(images)), ("masks", len(masks)),
        ("masks per image", len(masks) / len(images) if images else None),
        ("stop reasons", dict(stops) if stops else None),
    ], mono=("model",))]
    # scores against ground truth (the demo adds them): per image when they line up
    gt = as_dict(d.get("ground_truth"))
    per_image = as_list(gt.get("best_iou_per_image"))
    if len(per_image) != len(images):
        per_image = []
    gt_rows = [(k.replace("_", " "), v) for k, v in gt.items()
               if not (per_image and k == "best_iou_per_image")]
    if gt_rows:
        out.append("<h4>Against ground truth</h4><p class='muted'>Best IoU of any discovered "
                   "mask with any ground-truth object, per image.</p>" + kv(gt_rows))
    if d.get("complete") is False:
        out.append(page.note(f"{r.label}: partial run (interrupted); {len(images)} images were "
                             "written", r.anchor, r.label))
    if not images:
        out.append(page.note(f"{r.label}: no images with masks", r.anchor, r.label,
                             missing=True))
    shown, more = page.sample(images, r, "images")
    cards = [_card(i, page, r, f"<br>best IoU with an object: {esc(num(per_image[n]))}"
                   if per_image else "") for n, i in enumerate(shown)]
    if cards:
        out.append("<h4>Sample of images</h4><p class='muted'>Each image with its objects "
                   "tinted and outlined, then one mask per object.</p>"
                   f'{more}<div class="gallery">{"".join(cards)}</div>')
    return "".join(out) + notes_list(d) + skipped(d)


SECTION = Section(
    kind="discover", title="Object discovery", facts=_facts, render=_render,
    hint="zoolens discover -m MODEL -i IMAGES -o DIR/discover", expected=True,
    known_keys=frozenset({"model", "spec", "layer", "feature", "channels", "features", "grid",
                          "input_size", "tau", "eps", "objects", "notes", "images", "skipped",
                          "complete", "ground_truth"}))
