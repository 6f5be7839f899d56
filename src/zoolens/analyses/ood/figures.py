"""The figures of `evaluate()`: matplotlib `Figure` objects (no pyplot state), saved as PNGs.

- `auroc_heatmap`: one model's mean AUROC (over the OOD sets) per layer and method;
- `curves_figure`: per model, the ROC curves and ID vs OOD confidence histograms of its best
  layer and method;
- `examples_figure`: thumbnails of the OOD images the best choice finds most and least
  in-distribution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ...store import slug
from .metrics import roc_curve

__all__ = ["auroc_heatmap", "curves_figure", "examples_figure", "write_figures"]

_THUMB = 96  # thumbnail side in pixels


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path.name


def auroc_heatmap(result, model: str):
    """Layers (rows, forward order) x methods (columns) of `model`: AUROC averaged over the OOD
    sets, 0.5 = chance; blank where a method does not apply to a layer."""
    from .evaluation import METHODS, _choices

    choices = _choices(result.rows(model=model))
    layers = sorted({(c["layer_index"], c["layer"]) for c in choices})
    methods = [m for m in METHODS if any(c["method"] == m for c in choices)]
    grid = np.full((len(layers), len(methods)), np.nan)
    row = {layer: i for i, (_, layer) in enumerate(layers)}
    for c in choices:
        grid[row[c["layer"]], methods.index(c["method"])] = c["mean_auroc"]
    fig = _figure(2.2 + 0.85 * len(methods), 1.3 + 0.32 * len(layers))
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["RdYlGn"].with_extremes(bad="#eeeeee")  # grey: does not apply
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), [name for _, name in layers], fontsize=7)
    if grid.size <= 400:  # numbers in the cells while they stay readable
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6.5)
    n_sets = len({r["ood"] for r in result.rows(model=model)})
    ax.set_title(f"{model}: AUROC (mean over {n_sets} OOD set{'s' * (n_sets > 1)})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
    fig.tight_layout()
    return fig


def curves_figure(curves: Sequence[dict]):
    """One row per entry {"title", "id": (n,) confidences, "ood": {set: (m,)}, "auroc": {set:
    value}, "threshold", "keep"}: ROC curves (OOD positive) on the left, confidence histograms
    on the right."""
    fig = _figure(10, 3.2 * len(curves))
    axes = fig.subplots(len(curves), 2, squeeze=False)
    for (roc, hist), c in zip(axes, curves):
        roc.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        everything = [np.asarray(c["id"])] + [np.asarray(v) for v in c["ood"].values()]
        edges = np.histogram_bin_edges(np.concatenate(everything), bins=30)
        hist.hist(c["id"], bins=edges, density=True, color="0.6", alpha=0.7,
                  label="in-distribution (test)")
        for name, conf in c["ood"].items():
            fpr, tpr = roc_curve(c["id"], conf)
            line, = roc.plot(fpr, tpr, lw=1.5, label=f"{name} (AUROC {c['auroc'][name]:.3f})")
            hist.hist(conf, bins=edges, density=True, histtype="step", lw=1.5,
                      color=line.get_color(), label=name)
        if c.get("threshold") is not None:
            hist.axvline(c["threshold"], color="k", ls="--", lw=1,
                         label=f"threshold (keeps {c.get('keep', 0.95):.0%} of ID)")
        roc.set_xlabel("ID flagged as OOD (FPR)", fontsize=8)
        roc.set_ylabel("OOD flagged (TPR)", fontsize=8)
        roc.set_title(c["title"], fontsize=9)
        roc.legend(fontsize=7, loc="lower right")
        hist.set_xlabel("confidence (higher = more in-distribution)", fontsize=8)
        hist.set_ylabel("density", fontsize=8)
        hist.legend(fontsize=7)
        for ax in (roc, hist):
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def examples_figure(rows: Sequence[tuple[str, Sequence[tuple]]]):
    """Rows of thumbnails: each (title, [(PIL image, caption), ...])."""
    n_cols = max((len(items) for _, items in rows), default=1) or 1
    fig = _figure(1.45 * n_cols, 1.9 * len(rows) + 0.2)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, (title, items) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if c < len(items):
                image, caption = items[c]
                thumb = image.copy()
                thumb.thumbnail((_THUMB, _THUMB))
                ax.imshow(np.asarray(thumb))
                ax.set_title(caption, fontsize=6.5)
        axes[r, 0].text(-0.1, 0.5, title, transform=axes[r, 0].transAxes, rotation=90,
                        ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def write_figures(result, scorers: dict, ood_sources: dict, out: Path) -> dict:
    """Write every figure of `result` into `out`; the file names, relative to `out`."""
    from .evaluation import deployment_threshold

    out = Path(out)
    figures: dict = {"auroc": {}}
    for model in result.settings["models"]:
        if result.rows(model=model):
            figures["auroc"][model] = _save(auroc_heatmap(result, model),
                                            out / f"ood_auroc_{slug(model)}.png")
    curves = []
    keep = result.settings.get("keep", 0.95)
    for model, c in result.best_per_model().items():
        conf = scorers[model].scores(c["method"], c["layer"])
        curves.append({"title": f"{model}: {c['layer']} {c['method']}", "id": conf["id"],
                       "ood": {n: conf[f"ood/{n}"] for n in scorers[model].ood_names},
                       "auroc": c["auroc"],
                       "threshold": deployment_threshold(conf["id"], keep), "keep": keep})
    if curves:
        figures["curves"] = _save(curves_figure(curves), out / "ood_curves.png")
    best = result.best or {}
    rows = []
    for key, title in (("most_in_distribution", "most in-distribution"),
                       ("least_in_distribution", "least in-distribution")):
        items = []
        for e in best.get("examples", {}).get(key, []):
            try:
                image = ood_sources[e["ood"]].decode(e["index"]).image
            except Exception:  # noqa: BLE001 - a file changed since: leave it out of the figure
                continue
            if image is not None:
                items.append((image.convert("RGB"), f"{_short(e['ood'])}\n{e['confidence']:.3g}"))
        if items:
            rows.append((title, items))
    if rows:
        figures["examples"] = _save(examples_figure(rows), out / "ood_examples.png")
    return figures


def _short(text: str, limit: int = 18) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"
