"""`zoolens ood`: the best choice and its deployment threshold, the best layer per model and
method, the AUROC heatmaps, ROC curves, histograms and example images, and every row."""

from __future__ import annotations

from ..page import (ROWS_MAX, Page, Raw, Result, as_dict, esc, is_num, kv, layers_text,
                    models_layers_text, lines, notes_list, num, records, skipped, strs, table,
                    weights_text)
from .base import Facts, Section

__all__ = ["SECTION"]

_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr")


def _sets(d: dict) -> list[str]:
    s = as_dict(d.get("settings"))
    return list(as_dict(s.get("ood"))) or list(dict.fromkeys(
        str(r.get("ood")) for r in records(d.get("results"))))


def _facts(d: dict) -> Facts:
    s = as_dict(d.get("settings"))
    sets = _sets(d)
    n_ood = as_dict(s.get("n_ood"))
    f = Facts(
        models=strs(s.get("models")) or list(dict.fromkeys(
            str(x.get("model")) for x in records(d.get("results")))),
        images=s.get("n_train") and (f"{s.get('n_train')} train / {s.get('n_id')} ID test / "
                                     f"{sum(v for v in n_ood.values() if is_num(v))} OOD"),
        source=s.get("train") and f"train {s.get('train')}; id {s.get('id')}; OOD sets: "
                                  f"{', '.join(sets)}",
        weights=weights_text(s.get("pretrained")),
        layers=models_layers_text(s.get("layers")))
    b = as_dict(d.get("best"))
    if is_num(b.get("mean_auroc")):
        f.headline = (f"best mean AUROC {num(b['mean_auroc'])} ({b.get('model')} "
                      f"{b.get('layer')} {b.get('method')}, {len(sets)} OOD set"
                      f"{'s' * (len(sets) != 1)})")
    return f


def _best(d: dict, sets: list[str]) -> str:
    b = as_dict(d.get("best"))
    if not b:
        return ""
    conf = as_dict(b.get("confidences"))
    n_images = len(records(conf.get("id"))) + sum(
        len(records(v)) for v in as_dict(conf.get("ood")).values())
    flagged = as_dict(b.get("flagged"))
    keep = b.get("keep", 0.95)
    rows = [{"OOD set": s, "AUROC": as_dict(b.get("auroc")).get(s),
             "flagged below the threshold": flagged.get(s)} for s in sets]
    return ("<h4>Best choice, for deployment</h4>" + kv([
        ("model", b.get("model")), ("layer", b.get("layer")), ("method", b.get("method")),
        ("setting", b.get("setting")), ("mean AUROC", b.get("mean_auroc")),
        ("threshold", b.get("threshold")),
        ("ID test images kept", b.get("id_kept")),
    ], mono=("model", "layer"))
        + f"<p class='muted'>An image whose confidence is below the threshold is flagged out "
        f"of distribution; the threshold is the largest that keeps at least "
        f"{esc(f'{keep:.0%}' if is_num(keep) else keep)} of the in-distribution test images. "
        f"The confidences of all {n_images} scored images "
        f"are in {esc('ood.json')} (best.confidences); "
        f"<code>zoolens.analyses.ood.score(DIR, images)</code> scores new ones.</p>"
        + table(rows, what="OOD sets"))


def _examples(d: dict) -> str:
    ex = as_dict(as_dict(d.get("best")).get("examples"))
    rows = [{"end": end.replace("_", " "), "OOD set": e.get("ood"), "image": e.get("id"),
             "confidence": e.get("confidence")}
            for end in ("most_in_distribution", "least_in_distribution")
            for e in records(ex.get(end))]
    if not rows:
        return ""
    return ("<details><summary>the example images, by name</summary>"
            + table(rows, mono=("image",), what="images") + "</details>")


def _figure(page: Page, r: Result, rel, alt: str, caption: str) -> str:
    return (f'<figure class="figure">{page.image(rel, r, alt)}'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _render(d: dict, page: Page, r: Result) -> str:
    s = as_dict(d.get("settings"))
    sets = _sets(d)
    n_ood = as_dict(s.get("n_ood"))
    ood_sets = as_dict(s.get("ood"))
    out = [kv([
        ("methods", strs(s.get("methods"))),
        ("models", lines(strs(s.get("models"))) if strs(s.get("models")) else None),
        ("train (in-distribution)", s.get("train") and f"{s.get('train')} ({s.get('n_train')} "
                                                       "images)"),
        ("ID test", s.get("id") and f"{s.get('id')} ({s.get('n_id')} images)"),
        ("OOD sets", Raw("<br>".join(f"{esc(n)}: {esc(ood_sets.get(n, ''))} "
                                     f"({esc(n_ood.get(n, '?'))} images)" for n in sets))),
        ("k (k-NN)", s.get("k")), ("ViM dimension", s.get("vim_dim")),
        ("train classes (Mahalanobis)", s.get("train_classes")), ("seed", s.get("seed")),
        ("weights", weights_text(s.get("pretrained"))), ("convention", s.get("convention")),
    ], mono=("models",))]
    layers = as_dict(s.get("layers"))
    if layers:
        out.append(table([{"model": m, "layers": layers_text(v)} for m, v in layers.items()],
                         mono=("model",), what="models"))
    out.append(_best(d, sets))
    board = records(d.get("best_layers"))  # OODResult.to_dict always writes it
    if board:
        rows = [{"model": b.get("model"), "method": b.get("method"), "best layer": b.get("layer"),
                 "mean AUROC": b.get("mean_auroc"),
                 **{f"AUROC {n}": as_dict(b.get("auroc")).get(n) for n in sets}} for b in board]
        out.append("<h4>Best layer per model and method</h4><p class='muted'>Highest AUROC "
                   "averaged over the OOD sets (OOD positive; 0.5 is chance), the earliest "
                   "layer on ties. Picked on these OOD sets: a report, not a guarantee on OOD "
                   "data not seen here.</p>" + table(rows, mono=("model", "best layer"),
                                                     what="entries"))
    else:
        out.append(page.note(f"{r.label}: no OOD results", r.anchor, r.label, missing=True))
    figures = as_dict(d.get("figures"))
    for model, rel in as_dict(figures.get("auroc")).items():
        out.append(_figure(page, r, rel, f"AUROC per layer and method, {model}",
                           f"{model}: AUROC (mean over the OOD sets) per layer and method."))
    if figures.get("curves"):
        keep = s.get("keep", 0.95)
        out.append(_figure(page, r, figures["curves"], "ROC curves and histograms",
                           "Each model's best layer and method: ROC curves (OOD positive) and "
                           "the confidences of the ID test images and each OOD set, with the "
                           "threshold keeping "
                           f"{f'{keep:.0%}' if is_num(keep) else keep} of the ID test images."))
    if figures.get("examples"):
        out.append(_figure(page, r, figures["examples"], "OOD examples",
                           "The OOD images the best choice finds most in-distribution (the "
                           "hardest to catch) and least in-distribution."))
    out.append(_examples(d))
    results = records(d.get("results"))
    if results:
        cols = [c for c in ("model", "layer", "method", "setting", "ood", *_METRICS, "n_id",
                            "n_ood") if any(c in x for x in results)]
        out.append(f"<details><summary>all {len(results)} result rows</summary>"
                   + table(results, cols, mono=("model", "layer"), shown=ROWS_MAX, what="rows")
                   + "</details>")
    sk = as_dict(d.get("skipped"))  # {"train": [...], "id": [...], "ood": {set: [...]}}
    flat = {k: v for k, v in sk.items() if k != "ood"}
    flat.update({f"ood {n}": v for n, v in as_dict(sk.get("ood")).items()})
    return "".join(out) + notes_list(d) + skipped({"skipped": flat})


SECTION = Section(
    kind="ood", title="Out-of-distribution detection", facts=_facts, render=_render,
    hint="zoolens ood -m MODEL --train TRAIN --id ID_TEST --ood OOD_SET -o DIR/ood",
    expected=True,
    known_keys=frozenset({"results", "best", "best_layers", "settings", "skipped", "notes",
                          "figures"}))
