"""`zoolens curate dedup|sample|retrieve|prototypes`: what a curation step kept, its groups or
clusters, and its contact sheet."""

from __future__ import annotations

from ..page import (Page, Result, as_dict, esc, kv, notes_list, records, skipped,
                    table, weights_text)
from .base import Facts, Section

__all__ = ["SECTION", "render_common"]

_STEP_TITLES = {"dedup": "Near-duplicates", "sample": "Balanced sample",
                "retrieve": "Retrieval", "prototypes": "Prototypes"}
# what the tables of a step are called on the page, and what their rows are
_TABLES = {"groups": ("Duplicate groups", "groups", "largest first; the kept image first"),
           "contaminated": ("Matches with the reference set", "images", ""),
           "clusters": ("Clusters", "clusters", ""),
           "queries": ("Queries and their nearest pool images", "queries", ""),
           "prototypes": ("Prototypes", "prototypes", "largest first; the medoid first")}
_SHEET_CAPTIONS = {
    "dedup": "The largest groups, one per row; the framed image is the one kept.",
    "sample": "The largest top-level clusters, one per row, with images drawn from each.",
    "retrieve": "Queries (framed) with the pool images retrieved for them.",
    "prototypes": "One prototype per row, largest first: its medoid (framed) and the members "
                  "nearest its centroid.",
    "datasets": "The clusters only one set populates, with its members nearest the centroid."}


def _facts(d: dict) -> Facts:
    s = as_dict(d.get("settings"))
    c = as_dict(d.get("counts"))
    sets = as_dict(s.get("sets"))
    first = as_dict(sets.get("images") or sets.get("pool"))
    return Facts(models=[str(s["model"])] if s.get("model") else [], images=c.get("used"),
                 source=first.get("source"),
                 layers=s.get("layer") and f"{s.get('layer')} ({s.get('pool')})",
                 weights=weights_text(as_dict(s.get("weights")).get("pretrained")),
                 headline=str(d.get("summary") or d.get("step") or ""))


def _params(s: dict) -> list[tuple[str, object]]:
    """The step's own settings: everything but the model, the sets and the search counters."""
    common = {"model", "spec", "weights", "layer", "pool", "sets", "search"}
    return [(k.replace("_", " "), v) for k, v in s.items() if k not in common and v is not None]


def render_common(d: dict, page: Page, r: Result, step: str) -> str:
    """Settings, counts, the sets, every table, the contact sheet and the files: what the
    curate steps and the dataset comparison show alike."""
    s = as_dict(d.get("settings"))
    out = [kv([("model", s.get("model")), ("layer", s.get("layer")), ("pooling", s.get("pool")),
               ("weights", weights_text(as_dict(s.get("weights")).get("pretrained"))),
               *_params(s)], mono=("model",))]
    counts = as_dict(d.get("counts"))
    if counts:
        out.append("<h4>Counts</h4>" + kv([(k.replace("_", " "), v)
                                           for k, v in counts.items()]))
    sets = as_dict(s.get("sets"))
    if sets:
        out.append(table([{"set": k, **as_dict(v)} for k, v in sets.items()],
                         ["set", "source", "images", "used", "skipped", "excluded", "store"],
                         mono=("source", "store"), what="image sets"))
    for name, rows in as_dict(d.get("tables")).items():
        rows = records(rows)
        title, what, note = _TABLES.get(name, (name, "rows", ""))
        total = counts.get(name) if isinstance(counts.get(name), int) else None
        more = (f" Showing {len(rows)} of {total}; the CSV files hold all."
                if total is not None and total > len(rows) else "")
        out.append(f"<h4>{esc(title)} ({len(rows)})</h4>"
                   + (f"<p class='muted'>{esc(note.capitalize())}.{esc(more)}</p>"
                      if note or more else "")
                   + (table(rows, shown=25, what=what) if rows else
                      "<p class='muted'>none</p>"))
    files = as_dict(d.get("files"))
    sheet = files.get("sheet")
    if sheet:
        out.append(f'<figure class="figure">{page.image(sheet, r, "contact sheet")}'
                   f"<figcaption>{esc(_SHEET_CAPTIONS.get(step, ''))}</figcaption></figure>")
    listed = [f for k, f in files.items() if k not in ("sheet", "json")]
    if listed:
        out.append(f"<p class='muted'>Files beside {esc(r.label)}: "
                   f"<span class='mono'>{esc(', '.join(map(str, listed)))}</span></p>")
    return "".join(out) + notes_list(d) + skipped(d)


def _render(d: dict, page: Page, r: Result) -> str:
    step = str(d.get("step") or "")
    head = f"<p><b>{esc(_STEP_TITLES.get(step, step))}</b>: {esc(d.get('summary', ''))}</p>"
    if step not in _STEP_TITLES:
        head += page.note(f"{r.label}: unknown curate step {step!r}", r.anchor, r.label)
    return head + render_common(d, page, r, step)


SECTION = Section(
    kind="curate", title="Data curation", facts=_facts, render=_render,
    hint="zoolens curate dedup -m MODEL -i IMAGES -o DIR/curate",
    known_keys=frozenset({"step", "summary", "counts", "settings", "tables", "files",
                          "skipped", "notes", "result"}))
