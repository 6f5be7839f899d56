"""`zoolens probe`: the leaderboard (best layer per model and method), the curves figure and
every result row."""

from __future__ import annotations

from ..page import (ROWS_MAX, Page, Result, as_dict, as_list, is_num, kv, layers_text,
                    models_layers_text, lines, notes_list, num, records, short_list, skipped, strs,
                    table, weights_text)
from .base import Facts, Section

__all__ = ["SECTION"]

_FIGURE = "probe_curves.png"  # `zoolens probe` draws the per-layer curves here, beside probe.json


def _leaderboard(d: dict) -> list[dict]:
    board = records(d.get("leaderboard"))
    if board:
        return board
    best: dict[tuple, dict] = {}  # rebuilt from the rows: best top1 (LogME: score)
    for row in records(d.get("results")):
        key = "score" if row.get("method") == "logme" else "top1"
        if not is_num(row.get(key)):
            continue
        k = (str(row.get("model")), str(row.get("method")))
        if k not in best or row[key] > best[k][key]:
            best[k] = row
    return list(best.values())


def _facts(d: dict) -> Facts:
    s = as_dict(d.get("settings"))
    f = Facts(
        models=strs(s.get("models")) or list(dict.fromkeys(
            str(x.get("model")) for x in records(d.get("results")))),
        images=s.get("n_train") and f"{s.get('n_train')} train / {s.get('n_test')} test",
        source=s.get("train") and f"train {s.get('train')}; test {s.get('test')}",
        weights=weights_text(s.get("pretrained")),
        layers=models_layers_text(s.get("layers")))
    best = [b for b in _leaderboard(d) if is_num(b.get("top1"))]
    if best:
        b = max(best, key=lambda b: b["top1"])
        f.headline = (f"best top-1 {num(b['top1'])} ({b.get('model')} {b.get('method')}, "
                      f"{b.get('layer')})")
    return f


def _render(d: dict, page: Page, r: Result) -> str:
    s = as_dict(d.get("settings"))
    classes = strs(s.get("classes"))
    out = [kv([
        ("methods", strs(s.get("methods"))),
        ("models", lines(strs(s.get("models"))) if strs(s.get("models")) else None),
        ("train", s.get("train") and f"{s.get('train')} ({s.get('n_train')} images)"),
        ("test", s.get("test") and f"{s.get('test')} ({s.get('n_test')} images)"),
        ("classes", classes and f"{len(classes)}: {short_list(classes)}"),
        ("k (k-NN)", as_list(s.get("k"))), ("temperature", s.get("temperature")),
        ("pool", s.get("pool")), ("validation share", s.get("val_fraction")),
        ("last n blocks", s.get("n_last_blocks")), ("seed", s.get("seed")),
        ("weights", weights_text(s.get("pretrained"))),
    ], mono=("models",))]
    layers = as_dict(s.get("layers"))
    if layers:
        out.append(table([{"model": m, "layers": layers_text(v)} for m, v in layers.items()],
                         mono=("model",), what="models"))
    board = _leaderboard(d)
    if board:
        rows = [{"model": b.get("model"), "method": b.get("method"), "best layer": b.get("layer"),
                 "setting": b.get("setting"), "top-1": b.get("top1"), "top-5": b.get("top5"),
                 "LogME": b.get("score")} for b in board]
        out.append("<h4>Leaderboard</h4><p class='muted'>Best layer per model and method "
                   "(chosen on the test split, as layer-wise curves are: a report, not model "
                   "selection). LogME: higher is better.</p>"
                   + table(rows, mono=("model",), what="entries"))
    else:
        out.append(page.note(f"{r.label}: no probe results", r.anchor, r.label, missing=True))
    if (r.folder / _FIGURE).exists():
        out.append(f'<figure class="figure">{page.image(_FIGURE, r, "probe curves")}'
                   "<figcaption>Top-1 per layer (each layer's best setting).</figcaption>"
                   "</figure>")
    elif board:
        out.append(page.note(f"{r.label}: no {_FIGURE} beside it", r.anchor, r.label))
    results = records(d.get("results"))
    if results:
        cols = [c for c in ("model", "layer", "method", "setting", "top1", "top5", "score",
                            "n_train", "n_test") if any(c in x for x in results)]
        out.append(f"<details><summary>all {len(results)} result rows</summary>"
                   + table(results, cols, mono=("model",), shown=ROWS_MAX, what="rows")
                   + "</details>")
    return "".join(out) + notes_list(d) + skipped(d)


SECTION = Section(
    kind="probe", title="Probes", facts=_facts, render=_render,
    hint="zoolens probe -m MODEL --train TRAIN --test TEST -o DIR/probe", expected=True,
    known_keys=frozenset({"results", "settings", "skipped", "notes", "leaderboard"}))
