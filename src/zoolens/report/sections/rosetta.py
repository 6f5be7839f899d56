"""`zoolens rosetta`: run settings, best buddies per model pair, Rosetta sets, concept figures
and (from the demo) concept scores against ground truth."""

from __future__ import annotations

import json
import math
from typing import Any

from ..page import (Page, Result, as_dict, as_list, esc, generic_value, is_num, kv, layers_text,
                    models_layers_text, lines, num, records, short_list, size_text, skipped, strs,
                    table)
from .base import Facts, Section

__all__ = ["SECTION"]

_MAX_CONCEPT_FIGURES = 32  # concept figures are large (~0.4 MB each)


def _unit(unit: Any) -> str:
    """'<model>/<layer>:<channel>' -> '<layer>:<channel>' (layer names hold no '/')."""
    return str(unit).rsplit("/", 1)[-1]


def _facts(d: dict) -> Facts:
    s = as_dict(d.get("settings"))
    return Facts(models=strs(d.get("models")), images=d.get("images"), source=s.get("source"),
                 resolution=size_text(d.get("resolution")),
                 layers=models_layers_text(s.get("layers")),
                 headline=(f"{len(as_list(d.get('sets')))} sets, "
                           f"{len(as_list(d.get('concepts')))} concepts"))


def _settings(d: dict, models: list[str]) -> str:
    s = as_dict(d.get("settings"))
    units = as_dict(d.get("units"))
    dead = as_dict(d.get("dead_units"))
    mem = s.get("max_memory")
    out = kv([
        ("models", lines(models) if models else None), ("images", d.get("images")),
        ("source", s.get("source")),
        ("resolution", size_text(d.get("resolution"))),
        ("best buddies", s.get("mode") and (
            f"{s['mode']} (k={s.get('k')})" if s.get("mode") == "relaxed" else f"{s['mode']}")),
        ("anchor", s.get("anchor")), ("pairwise sets", s.get("pairwise")),
        ("min correlation", s.get("min_correlation")), ("resize", s.get("resize")),
        ("passes", s.get("passes")),
        ("memory budget", f"{mem / 2**30:.3g} GiB" if is_num(mem) else None),
    ], mono=("models", "anchor"))
    layers = as_dict(s.get("layers"))
    per_model = [{"model": m, "layers": layers_text(layers.get(m)), "units": units.get(m),
                  "dead units": len(as_list(dead.get(m))) if m in dead else None}
                 for m in (models or list(units))]
    if per_model:
        out += table(per_model, mono=("model",), what="models")
    return out


def _pairs(d: dict) -> str:
    pairs = []
    for p in records(d.get("pairs")):
        rs = sorted((float(b["correlation"]) for b in records(p.get("buddies"))
                     if is_num(b.get("correlation"))), reverse=True)
        m = strs(p.get("models")) + ["?", "?"]
        pairs.append({"model A": m[0], "model B": m[1], "best buddies": len(rs),
                      "top r": rs[0] if rs else None,
                      "median r": rs[len(rs) // 2] if rs else None})
    if not pairs:
        return ""
    return ("<h4>Best buddies per model pair</h4>"
            + table(pairs, mono=("model A", "model B"), what="pairs"))


def _sets(sets: list[dict], concepts: list[dict], models: list[str]) -> str:
    concept_of = {int(i): c.get("id") for c in concepts for i in as_list(c.get("sets"))
                  if is_num(i) and math.isfinite(i)}
    rows = []
    for i, st in enumerate(sets):
        row = {"#": i, "concept": concept_of.get(i), "mean r": st.get("mean_correlation")}
        units = as_list(st.get("units"))
        for j, m in enumerate(models or [f"model {j}" for j in range(len(units))]):
            row[m] = _unit(units[j]) if j < len(units) else None
        rows.append(row)
    cols = list(rows[0])
    return (f"<h4>Rosetta sets ({len(sets)})</h4><p class='muted'>One unit per model "
            "(<code>layer:channel</code>), mutual best buddies with the anchor's unit; "
            "mean r is the mean correlation of the set's pairs.</p>"
            + table(rows, cols, mono=cols[3:], what="sets"))


def _concepts(d: dict, concepts: list[dict], page: Page, r: Result) -> str:
    # keyed by the JSON text of the id: whatever the id is, it is hashable then
    scores = {json.dumps(x.get("concept")): x for x in records(d.get("concept_scores"))}
    cards = []
    more = ""
    if len(concepts) > _MAX_CONCEPT_FIGURES:
        more = (f"<p class='muted'>Showing the first {_MAX_CONCEPT_FIGURES} of "
                f"{len(concepts)} concepts; all are listed in {esc(r.label)}.</p>")
    for c in concepts[:_MAX_CONCEPT_FIGURES]:
        cid = c.get("id")
        n_sets = len(as_list(c.get("sets")))
        head = f"<h4>Concept {esc(cid)}</h4><p class='muted'>{n_sets} set(s)"
        sc = scores.get(json.dumps(cid))
        if sc is not None and sc.get("best_match") is not None:
            head += (f" · best match <b>{esc(sc['best_match'])}</b> "
                     f"(IoU {esc(num(sc.get('iou')))})")
        head += "</p>"
        if "figure" in c:
            body = page.image(c["figure"], r, f"concept {cid} heatmaps",
                              what=f"concept {cid} figure")
        else:
            body = page.note(f"concept {cid}: no figure (the run had no --out folder)",
                             r.anchor, r.label)
        top = strs(c.get("top_images"))
        cap = "".join(f"<br>{esc(k)}: {esc(short_list(v))}" for k, v in (
            ("sets", strs(c.get("sets"))), ("top images", top)) if v)
        cap = f"<figcaption>{cap[4:]}</figcaption>" if cap else ""
        cards.append(f'<figure class="card">{head}{body}{cap}</figure>')
    return (f"<h4>Concepts ({len(concepts)})</h4><p class='muted'>Rows: the images that "
            "excite the concept most; columns: the image, then each model's heatmap "
            "(the concept's standardized unit maps, averaged over its sets).</p>"
            f'{more}<div class="gallery concepts">{"".join(cards)}</div>')


def _scores(cs: Any) -> str:
    if isinstance(cs, list) and cs:
        rows = records(cs)
        cols = [c for c in ("concept", "best_match", "iou", "runner_up", "scores")
                if any(c in x for x in rows)]
        cols += [k for k in dict.fromkeys(k for x in rows for k in x) if k not in cols]
        return ("<h4>Concept scores against ground truth</h4><p class='muted'>Best "
                "ground-truth match per concept (dataset-level IoU of the thresholded "
                "heatmap); <i>scores</i> lists the best labels first.</p>"
                + table(rows, cols, what="concepts"))
    if cs is not None and not isinstance(cs, list):
        return "<h4>Concept scores</h4>" + generic_value(cs)
    return ""


def _render(d: dict, page: Page, r: Result) -> str:
    models = strs(d.get("models"))
    sets = records(d.get("sets"))
    concepts = records(d.get("concepts"))
    out = [_settings(d, models), _pairs(d)]
    if not sets:
        out.append(page.note(f"{r.label}: no Rosetta sets were found (no anchor unit has a best "
                             "buddy in every other model)", r.anchor, r.label))
    else:
        out.append(_sets(sets, concepts, models))
    if sets and not concepts:
        out.append(page.note(f"{r.label}: the sets were not clustered into concepts "
                             "(--concepts 0?), so there are no concept figures",
                             r.anchor, r.label))
    if concepts:
        out.append(_concepts(d, concepts, page, r))
    out.append(_scores(d.get("concept_scores")))
    return "".join(out) + skipped(d)


SECTION = Section(
    kind="rosetta", title="Rosetta neurons", facts=_facts, render=_render,
    hint="zoolens rosetta -m MODEL_A -m MODEL_B -i IMAGES -o DIR/rosetta", expected=True,
    known_keys=frozenset({"models", "images", "resolution", "units", "pairs", "sets",
                          "concepts", "dead_units", "skipped", "settings", "concept_scores"}))
