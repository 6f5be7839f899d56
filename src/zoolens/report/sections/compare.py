"""`zoolens compare`: the layer-by-layer similarity matrix of two models, as its figure and as
numbers."""

from __future__ import annotations

import math

from ..page import (Page, Result, as_dict, as_list, esc, is_num, kv, layers_text, num, skipped,
                    strs, table, weights_text)
from .base import Facts, Section

__all__ = ["SECTION"]

_FIGURE = "compare.png"  # `zoolens compare` draws the matrix here, beside compare.json
_ESTIMATORS = {"linear_cka": "linear CKA (exact, streaming)",
               "minibatch_unbiased_cka": "minibatch unbiased CKA", "mutual_knn": "mutual k-NN"}
_VIRIDIS = ((0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)),
            (0.75, (94, 201, 98)), (1.0, (253, 231, 37)))


def _colour(v: float) -> str:
    v = min(1.0, max(0.0, v)) if math.isfinite(v) else 0.0
    for (a, ca), (b, cb) in zip(_VIRIDIS, _VIRIDIS[1:]):
        if v <= b:
            t = (v - a) / (b - a)
            return "#%02x%02x%02x" % tuple(round(x + t * (y - x)) for x, y in zip(ca, cb))
    return "#fde725"


def _facts(d: dict) -> Facts:
    s = as_dict(d.get("settings"))
    vals = [v for row in as_list(d.get("matrix")) for v in as_list(row) if is_num(v)]
    metric = str(d.get("metric", "?"))
    return Facts(
        models=list(dict.fromkeys(str(d[k]) for k in ("model_a", "model_b") if d.get(k))),
        images=d.get("images"), source=s.get("source"), weights=weights_text(s.get("pretrained")),
        layers=f"{len(as_list(d.get('layers_a')))} x {len(as_list(d.get('layers_b')))}",
        headline=metric + (f", range {num(min(vals))}..{num(max(vals))}" if vals else ""))


def _matrix(d: dict) -> tuple[list[str], list[str], list[list[float]]] | str:
    la, lb = strs(d.get("layers_a")), strs(d.get("layers_b"))
    m = as_list(d.get("matrix"))
    if not la or not lb:
        return "no layer names"
    if len(m) != len(la) or any(not isinstance(row, list) or len(row) != len(lb) for row in m):
        return f"the matrix is not {len(la)} x {len(lb)}"
    if any(not is_num(v) for row in m for v in row):
        return "the matrix holds non-numbers"
    return la, lb, [[float(v) for v in row] for row in m]


def _heat_table(la: list[str], lb: list[str], m: list[list[float]]) -> str:
    head = "<th></th>" + "".join(f"<th class='mono'>{esc(b)}</th>" for b in lb)
    rows = []
    for a, row in zip(la, m):
        cells = "".join(
            f'<td style="background:{_colour(v)};color:{"#000" if v > 0.6 else "#fff"}">'
            f"{esc(num(v))}</td>" for v in row)
        rows.append(f"<tr><th class='mono'>{esc(a)}</th>{cells}</tr>")
    return (f'<div class="scroll"><table class="heat"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _numbers(la: list[str], lb: list[str], m: list[list[float]], drawn: bool) -> str:
    """Summary numbers, each row's most similar column, and the matrix as a coloured table
    (folded away when the figure shows it)."""
    vals = [v for row in m for v in row]
    stats = [("min", min(vals)), ("mean", sum(vals) / len(vals)), ("max", max(vals))]
    if la == lb:
        stats.append(("mean of the diagonal", sum(m[i][i] for i in range(len(la))) / len(la)))
    best = [{"layer A": a, "most similar layer B": lb[max(range(len(lb)), key=row.__getitem__)],
             "value": max(row)} for a, row in zip(la, m)]
    heat = _heat_table(la, lb, m)
    return (kv(stats) + "<h4>Most similar layer of B for each layer of A</h4>"
            + table(best, mono=("layer A", "most similar layer B"), what="layers")
            + (f"<details><summary>the matrix as numbers</summary>{heat}</details>" if drawn
               else heat))


def _render(d: dict, page: Page, r: Result) -> str:
    s = as_dict(d.get("settings"))
    out = [kv([
        ("metric", d.get("metric")),
        ("estimator", _ESTIMATORS.get(str(s.get("estimator")), s.get("estimator"))),
        ("model A (rows)", d.get("model_a")), ("model B (columns)", d.get("model_b")),
        ("layers A", layers_text(d.get("layers_a"))),
        ("layers B", layers_text(d.get("layers_b"))),
        ("images", d.get("images")), ("source", s.get("source")),
        ("features", s.get("features")), ("pooling", s.get("pooling")), ("k", s.get("k")),
        ("batch size", s.get("batch_size")), ("seed", s.get("seed") if s.get("features") == "flat"
                                              else None),
        ("minibatches", s.get("minibatches")), ("weights", weights_text(s.get("pretrained"))),
    ], mono=("model A (rows)", "model B (columns)"))]
    mat = _matrix(d)
    drawn = (r.folder / _FIGURE).exists()
    if drawn:
        out.append(f'<figure class="figure">{page.image(_FIGURE, r, "similarity heatmap")}'
                   "</figure>")
    else:
        out.append(page.note(f"{r.label}: no {_FIGURE} beside it; the matrix is drawn as a "
                             "table below", r.anchor, r.label))
    if isinstance(mat, str):
        out.append(page.note(f"{r.label}: the similarity matrix cannot be shown: {mat}",
                             r.anchor, r.label, missing=True))
    else:
        out.append(_numbers(*mat, drawn))
    return "".join(out) + skipped(d)


SECTION = Section(
    kind="compare", title="Layer similarity", facts=_facts, render=_render,
    hint="zoolens compare -m MODEL_A -m MODEL_B -i IMAGES -o DIR/compare", expected=True,
    known_keys=frozenset({"metric", "model_a", "model_b", "layers_a", "layers_b", "matrix",
                          "images", "skipped", "settings"}))
