"""`zoolens layerstats`: per layer, the units' scale, sparsity and dead units."""

from __future__ import annotations

from ..page import (Page, Result, as_dict, esc, kv, models_layers_text, notes_list, records,
                    skipped, table)
from .base import Facts, Section

__all__ = ["SECTION"]


def _facts(d: dict) -> Facts:
    per_model = as_dict(d.get("layers"))
    dead = sum(len(r.get("dead") or []) for rows in per_model.values() for r in records(rows))
    return Facts(models=list(per_model), images=d.get("images"),
                 source=as_dict(d.get("settings")).get("source"),
                 layers=models_layers_text(as_dict(d.get("settings")).get("layers")),
                 headline=f"{sum(len(records(v)) for v in per_model.values())} layers, "
                          f"{dead} dead units")


def _render(d: dict, page: Page, r: Result) -> str:
    out = [kv([("models", ", ".join(as_dict(d.get("layers")))), ("images", d.get("images"))])]
    for model, rows in as_dict(d.get("layers")).items():
        out.append(f"<h4 class='mono'>{esc(model)}</h4>")
        out.append(table([{"layer": x.get("layer"), "units": x.get("units"),
                           "mean": x.get("mean"), "std": x.get("std"),
                           "positive": x.get("positive"), "max": x.get("max"),
                           "dead units": len(x.get("dead") or [])} for x in records(rows)],
                         mono=("layer",), what="layers"))
    return "".join(out) + notes_list(d) + skipped(d)


SECTION = Section(
    kind="layerstats", title="Layer statistics", facts=_facts, render=_render,
    hint="zoolens layerstats -m MODEL -i IMAGES -o DIR/layerstats",
    known_keys=frozenset({"models", "images", "layers", "skipped", "settings"}))
