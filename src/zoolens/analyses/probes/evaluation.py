"""`probe()`: how good each model's frozen features are on a labelled task, at every layer.

Extract once, evaluate many ways. Features of the train and test images are written to one
feature store per model and split (`zoolens.plan.extract`), ``out/features/<model slug>/<split>/``,
holding every pooling the methods use, and every method reads them back; a later run with other
methods (or a subset of the layers) extracts nothing again. Stores are per model, so adding a
model to a run only extracts that model.

Methods, per model and tapped layer:

- ``knn``: the DINO k-NN rule (`evaluate_knn`): all k from one top-k search, k capped at the
  number of training images (``k_used``); one row per pooling and k.
- ``linear``: a DINOv2 grid of linear heads (`LinearProbe`) over feature choices ``cls``,
  ``mean`` (patch tokens / map), ``cls+mean`` (DINOv2's "avgpool" variant) and
  ``last{n}_cls|mean[+mean]`` (the pooled features of the last n tapped layers up to this one,
  concatenated: DINOv2's ``n_last_blocks``), each where available, crossed with 13 learning
  rates; the head is chosen on a stratified validation split held out of TRAIN (``val_fraction``)
  and applied unchanged to test. The test split never reaches `fit`.
- ``logme``: the LogME evidence (`logme`) of the training features, per pooling (``score``).
- ``zeroshot``: image-text models only: the model's final image embedding (its forward output,
  the engine's ``output`` tap) against class-name prompts (`zeroshot_classifier`); other models
  get a note saying why they were skipped.

Pooling: ``pool="mean"`` (mean of patch tokens or of the map), ``"cls"`` (the CLS token; mean
where a layer has none), ``"both"`` (one forward pass filling a mean store and, for layers with
a CLS token, a cls store).

Metrics: ``top1`` and ``top5`` in [0, 1]; test labels absent from the training labels count as
errors (k-NN, linear). ``top5`` is null when the classifier has 5 classes or fewer, where it
would be 1 by construction.

``out/probe.json`` holds `ProbeResult.to_dict()`: ``results`` (one row per model, layer,
method and setting; keys below), ``leaderboard`` (best layer per model and method), ``settings``,
``skipped`` ({"train": [...], "test": [...]} images that could not be used) and ``notes``.
Every row has ``model, layer, layer_index (None for the zero-shot embedding), method, setting``;
accuracy rows add ``top1, top5, n_train, n_test, num_classes``; k-NN rows ``pool, k, k_used,
temperature``; linear rows ``head, feature, lr, val_top1, n_fit, n_val, epochs, grid``;
zero-shot rows ``templates``; LogME rows ``pool, score, n_train, num_classes``.
``out/probe_curves.png`` plots top-1 per layer (the best setting of each layer), one line per
model x method.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ... import plan
from ...backends import Backend, resolve_backend
from ...errors import InputError
from ...sources import ImageSource, open_source
from ...store import Store, slug
from ...taps import OUTPUT
from ...zoo.model import Model, resolve_layers
from ...zoo.registry import as_models
from .knn import evaluate_knn, top_k_accuracy
from .linear import LinearProbe
from .logme import logme
from .zeroshot import (DEFAULT_TEMPLATES, is_image_text, read_templates, zeroshot_classifier,
                       zeroshot_scores)

__all__ = ["probe", "ProbeResult", "plot_curves", "METHODS", "PROBE_POOLS", "ACCURACY_METHODS"]

log = logging.getLogger("zoolens")

METHODS = ("knn", "linear", "zeroshot", "logme")
ACCURACY_METHODS = ("knn", "linear", "zeroshot")
PROBE_POOLS = ("mean", "cls", "both")
_TOP5_MIN_CLASSES = 6  # top-5 of 5 classes or fewer is 1 by construction
_MIN_LINEAR_STEPS = 200  # SGD steps the linear heads get at least, unless epochs are given


# ---------------------------------------------------------------------------------------------
# result


@dataclass
class ProbeResult:
    """Every probe of every model and layer, with the settings that produced it.

    Attributes:
        results: one dict per model, layer, method and setting (see the module docstring).
        settings: methods, k, temperature, pool, val_fraction, seed, templates, the probed
            layers per model, the sources, class list, and the feature store paths.
        skipped: ``{"train": [...], "test": [...]}``, each ``{"index", "id", "reason"}``.
        notes: plain sentences (a method skipped for a model, k capped, ...).
    """

    results: list[dict]
    settings: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=lambda: {"train": [], "test": []})
    notes: list[str] = field(default_factory=list)

    def rows(self, method: str | None = None, model: str | None = None) -> list[dict]:
        """The result rows, optionally of one method and/or model."""
        return [r for r in self.results if (method is None or r["method"] == method)
                and (model is None or r["model"] == model)]

    def leaderboard(self) -> list[dict]:
        """Best layer per model and method: highest top1 (LogME: highest score), the earliest
        layer on ties; sorted by method, then best first. Note the best layer and setting are
        picked on the test split here, as layer-wise curves do: a report, not model selection."""
        best: dict[tuple[str, str], dict] = {}
        for r in self.results:
            value = _value(r)
            if value is None:
                continue
            key = (r["model"], r["method"])
            if key not in best or value > _value(best[key]):
                best[key] = r
        order = {m: i for i, m in enumerate(METHODS)}
        board = [{"model": r["model"], "method": r["method"], "layer": r["layer"],
                  "layer_index": r.get("layer_index"), "setting": r["setting"],
                  "top1": r.get("top1"), "top5": r.get("top5"), "score": r.get("score")}
                 for r in best.values()]
        board.sort(key=lambda b: (order.get(b["method"], len(order)), -_value(b)))
        return board

    def to_dict(self) -> dict:
        return {"analysis": "probe", "version": 1, **asdict(self),
                "leaderboard": self.leaderboard()}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, s: str | bytes | dict) -> "ProbeResult":
        d = json.loads(s) if isinstance(s, (str, bytes)) else dict(s)
        if d.pop("analysis", "probe") != "probe":
            raise InputError("from_json: not a probe result")
        d.pop("version", None)
        d.pop("leaderboard", None)  # derived from the rows
        return cls(**d)


def _value(row: dict) -> float | None:
    v = row.get("score") if row.get("method") == "logme" else row.get("top1")
    return None if v is None else float(v)


# ---------------------------------------------------------------------------------------------
# feature stores


class _Split:
    """The features of one model on one split, read back from its store (valid rows only)."""

    def __init__(self, model_name: str, store: Store):
        self.model_name, self.store = model_name, store
        self.valid = store.valid
        if store.labels is None:
            raise InputError(f"{store.path}: the store has no labels")
        self.labels = np.asarray(store.labels)[self.valid]
        self.skipped = list(store.skipped)

    def pools(self, layer: str) -> dict[str, str]:
        """{effective pooling ("mean", "cls" or "vector"): the stored pooling} of `layer`."""
        out = {}
        for requested, sub in self.store.pools(self.model_name, layer).items():
            eff = "vector" if sub["pool"] == "none" else sub["pool"]
            out.setdefault(eff, requested)
        return out

    def features(self, layer: str, pool: str) -> np.ndarray:
        """(n_valid, C) float32."""
        arr = self.store.features(self.model_name, layer, self.pools(layer)[pool])
        return np.asarray(arr[self.valid], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# the probe


def probe(models, train, test, *, layers="blocks", methods: Sequence[str] = ("knn", "linear"),
          out: str | Path | None = None, k: Sequence[int] | int = (10, 20, 100, 200),
          temperature: float = 0.07, pool: str = "both", val_fraction: float = 0.2,
          seed: int = 0, templates: Sequence[str] | str | Path | None = None,
          n_last_blocks: int = 4, linear_options: dict | None = None, pretrained: bool = True,
          batch_size: int = 32, device=None, num_workers: int | None = None,
          dtype: str = "float16", overwrite: bool = False, plot: bool = True,
          progress: bool = True, backend: str | Backend | None = None) -> ProbeResult:
    """Probe the frozen features of `models` at every tapped layer on a labelled task.

    Args:
        models: specs (``timm:vit_small_patch14_dinov2``, ``open_clip:ViT-B-32/openai``...) or
            loaded `Model`s, one or several.
        train, test: labelled image sources: a folder with one subfolder per class, a CSV of
            ``path,label``, or ``synthetic:scenes?n=..&seed=..``.
        layers: a layer selector for every model (``blocks``, ``blocks[-4:]``, names, globs) or
            a dict {model name or spec: selector}.
        methods: any of ``knn``, ``linear``, ``zeroshot``, ``logme``.
        out: folder for ``probe.json``, ``probe_curves.png`` and the feature stores
            (``out/features/<model>/<split>/<pool>``).
        k: the k of the k-NN rule (each capped at the number of training images).
        temperature: T of the k-NN vote ``exp(sim / T)``.
        pool: ``mean``, ``cls`` or ``both`` (see the module docstring).
        val_fraction: share of the TRAIN images held out to choose the linear head.
        seed: seeds the validation split, the linear heads and random weights.
        templates: zero-shot prompt templates (``{}`` = class name), or a text file of them
            (one per line); default `DEFAULT_TEMPLATES`. Class names are the labels with
            ``_`` read as spaces.
        n_last_blocks: how many tapped layers the ``last{n}`` linear features concatenate
            (0 or 1: none).
        linear_options: extra `LinearProbe` arguments (``epochs``, ``batch_size``,
            ``learning_rates``, ``weight_decay``). Without ``epochs``, enough epochs for at
            least 200 SGD steps (10 at least), so small sets are not left undertrained.
        pretrained, batch_size, device, num_workers, dtype: extraction settings (as `extract`);
            `device` also runs k-NN and the linear heads.
        overwrite: extract again even where a store with other settings exists.
        plot: write ``probe_curves.png``.
        progress: show progress bars.
        backend: where the models run for the extraction: "local", "ray" or a
            `zoolens.RayBackend` (`num_workers` then counts model workers). The stores are
            written here and the heads trained here (on this machine's GPU when it has one).

    Returns:
        A `ProbeResult`, also written to ``out/probe.json``.
    """
    if out is None:
        raise InputError("probe needs out=DIR, the folder for probe.json and the feature stores")
    methods = _check_methods(methods)
    if pool not in PROBE_POOLS:
        raise InputError(f"pool {pool!r}: use one of {', '.join(PROBE_POOLS)}")
    ks = [int(k)] if isinstance(k, (int, np.integer)) else [int(v) for v in k]
    if not ks or any(v < 1 for v in ks):
        raise InputError(f"k: expected positive integers, got {k!r}")
    templates = _templates(templates, check="zeroshot" in methods)
    out = Path(out)

    runner = resolve_backend(backend, num_workers=num_workers)
    models = as_models(models, pretrained=pretrained, device=runner.load_device(device),
                       seed=seed)
    # k-NN and the heads run here: on a cluster `device` names the workers' device
    head_device = device if runner.name == "local" else None
    slugs = [slug(m.name) for m in models]
    if len(set(slugs)) != len(slugs):
        raise InputError(f"models {[m.name for m in models]}: two share a name (or a folder "
                         "name); give each a distinct name")
    sources = {"train": _labelled(train, "train"), "test": _labelled(test, "test")}
    chosen = resolve_layers(models, layers)

    result = ProbeResult(results=[], notes=[])
    stores_info: dict[str, dict] = {}
    for model in models:
        names = chosen[model.name]
        # The image embedding (the forward output) is stored for every image-text model whatever
        # the methods, so a later run with method zeroshot finds the same store and extracts
        # nothing.
        embed = OUTPUT if is_image_text(model) else None
        pools = _layer_pools(model, names, embed, pool)
        stores = plan.extract_splits(model, sources, pools, out / "features" / slug(model.name),
                                     dtype=dtype, batch_size=batch_size, device=device,
                                     backend=runner, overwrite=overwrite, progress=progress)
        splits = {split: _Split(model.name, st) for split, st in stores.items()}
        stored = sorted({p for ps in pools.values() for p in ps})
        stores_info[model.name] = {split: {p: str(st.path) for p in stored}
                                   for split, st in stores.items()}
        for split in ("train", "test"):
            known = {s["id"] for s in result.skipped[split]}
            result.skipped[split] += [s for s in splits[split].skipped if s["id"] not in known]
        result.results += _probe_model(model, names, embed, splits["train"], splits["test"],
                                       methods=methods, ks=ks, temperature=temperature,
                                       val_fraction=val_fraction, seed=seed,
                                       templates=templates, n_last_blocks=n_last_blocks,
                                       linear_options=linear_options or {}, device=head_device,
                                       notes=result.notes)
    if not result.results:  # e.g. zero-shot alone on models without a text tower
        raise InputError("probe: nothing could be evaluated: " + "; ".join(result.notes))

    result.settings = {
        "methods": list(methods), "k": ks, "temperature": float(temperature), "pool": pool,
        "val_fraction": float(val_fraction), "seed": int(seed), "n_last_blocks": int(n_last_blocks),
        "linear_options": dict(linear_options or {}), "templates": list(templates),
        "pretrained": bool(pretrained), "dtype": dtype,
        "models": [m.name for m in models], "specs": {m.name: m.spec for m in models},
        "weights": {m.name: m.record() for m in models},
        "layers": {m.name: chosen[m.name] for m in models},
        "train": sources["train"].description, "test": sources["test"].description,
        "n_train": len(sources["train"]), "n_test": len(sources["test"]),
        "classes": sorted({str(c) for c in sources["train"].labels}),
        "stores": stores_info, "top5": f"null when the classifier has fewer than "
                                        f"{_TOP5_MIN_CLASSES} classes",
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(result.to_json(indent=1))
    if plot:
        plot_curves(result, out / "probe_curves.png")
    return result


def _templates(templates, *, check: bool) -> list[str]:
    """Zero-shot prompt templates: the defaults, a file of them (one per line), one, or a list;
    with `check`, each must hold '{}' where the class name goes."""
    if templates is None:
        templates = list(DEFAULT_TEMPLATES)
    elif isinstance(templates, (str, Path)) and "{}" not in str(templates):
        templates = read_templates(templates)
    elif isinstance(templates, str):
        templates = [templates]
    else:
        templates = [str(t) for t in templates]
    if check and (not templates or any("{}" not in t for t in templates)):
        raise InputError(f"templates {templates[:3]!r}: each needs '{{}}' where the class name "
                         "goes, e.g. 'a photo of a {}.'")
    return templates


def _check_methods(methods) -> list[str]:
    if isinstance(methods, str):
        methods = [m for m in methods.split(",")]
    methods = [m.strip().lower() for m in methods if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise InputError(f"methods {bad or methods!r}: use any of {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def _labelled(src, split: str) -> ImageSource:
    source = open_source(src)
    if source.labels is None:
        raise InputError(f"{split} {str(src)!r}: has no labels; use a folder with one subfolder "
                         "per class, a CSV of path,label, or synthetic:scenes?n=..")
    if len(source) == 0:
        raise InputError(f"{split} {str(src)!r}: holds no images")
    if split == "train" and len(set(source.labels)) < 2:
        raise InputError(f"train {str(src)!r}: needs at least 2 classes, has "
                         f"{sorted(set(map(str, source.labels)))}")
    return source


def _layer_pools(model: Model, names: list[str], embed: str | None,
                 pool: str) -> dict[str, list[str]]:
    """The store's layers and poolings: layer -> ["mean"], ["cls"] or, for pool "both",
    ["mean", "cls"] where a layer has a CLS token; the image embedding as it is."""
    with_cls = {i.name for i in model.layers(names)
                if i.layout == "tokens" and i.prefix_tokens > 0}
    pools = {n: ["mean", "cls"] if pool == "both" and n in with_cls
             else ["mean" if pool == "both" else pool] for n in names}
    if embed and embed not in pools:
        pools[embed] = ["mean"]  # a vector is stored as it is, whatever the pooling
    return pools


def _top5(scores: np.ndarray, labels, classes) -> float | None:
    if scores.shape[1] < _TOP5_MIN_CLASSES:
        return None
    return top_k_accuracy(scores, labels, 5, classes=classes)


def _probe_model(model: Model, names: list[str], embed: str | None, train: _Split, test: _Split,
                 *, methods, ks, temperature, val_fraction, seed, templates, n_last_blocks,
                 linear_options, device, notes: list[str]) -> list[dict]:
    rows: list[dict] = []
    ytr, yte = train.labels, test.labels
    n_classes = len(np.unique(ytr))
    if len(ytr) < 2:
        raise InputError(f"train: only {len(ytr)} usable image(s) for {model.name}")
    if len(yte) < 1:
        raise InputError(f"test: no usable image for {model.name} (all skipped; see the "
                         "store's skip list)")
    base = {"model": model.name, "n_train": int(len(ytr)), "n_test": int(len(yte))}
    capped = sorted({kk for kk in ks if kk > len(ytr)})
    if "knn" in methods and capped:
        notes.append(f"knn: {model.name}: k={capped} exceed the {len(ytr)} training images; "
                     f"k={len(ytr)} used (k_used)")

    for idx, layer in enumerate(names):
        pools = train.pools(layer)
        where = {**base, "layer": layer, "layer_index": idx}
        if "knn" in methods:
            for p in pools:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # k capping and zero rows: noted above
                    res = evaluate_knn(train.features(layer, p), ytr, test.features(layer, p),
                                       yte, k=ks, temperature=temperature, device=device)
                for kk in ks:
                    rows.append({**where, "method": "knn", "setting": f"{p} k={kk}", "pool": p,
                                 "k": kk, "k_used": min(kk, len(ytr)),
                                 "temperature": float(temperature), "top1": res.top1[kk],
                                 "top5": res.top5[kk] if res.num_classes >= _TOP5_MIN_CLASSES
                                 else None, "num_classes": res.num_classes})
        if "logme" in methods:
            for p in pools:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    score = logme(train.features(layer, p), ytr)
                for w in caught:
                    notes.append(f"logme: {model.name} {layer} ({p}): {w.message}")
                rows.append({**where, "method": "logme", "setting": p, "pool": p,
                             "score": score, "num_classes": n_classes})
        if "linear" in methods:
            try:
                rows.append(_linear_row(where, names, idx, train, test,
                                        val_fraction=val_fraction, seed=seed, n_last=n_last_blocks,
                                        options=linear_options, device=device, notes=notes))
            except InputError as exc:  # e.g. too few images to hold out a validation split
                note = f"linear: skipped {model.name}: {exc}"
                if note not in notes:
                    notes.append(note)

    if "zeroshot" in methods:
        if not is_image_text(model):
            notes.append(f"zeroshot: skipped {model.name}: it has no text tower (zero-shot needs "
                         "an image-text model: open_clip:..., or an hf: CLIP/SigLIP)")
        elif embed is not None:
            classes = np.unique(np.concatenate([ytr, yte]))
            classnames = [str(c).replace("_", " ").strip() for c in classes]
            try:
                classifier = zeroshot_classifier(model, classnames, templates)
            except (InputError, OSError, ImportError) as exc:
                notes.append(f"zeroshot: skipped {model.name}: {exc}")
            else:
                scores = zeroshot_scores(test.features(embed, "vector"), classifier)
                rows.append({**base, "layer": embed, "layer_index": None, "method": "zeroshot",
                             "setting": f"{len(templates)} templates", "templates": len(templates),
                             "top1": top_k_accuracy(scores, yte, 1, classes=classes),
                             "top5": _top5(scores, yte, classes),
                             "num_classes": int(len(classes))})
    return rows


def _linear_row(where: dict, names: list[str], idx: int, train: _Split, test: _Split, *,
                val_fraction, seed, n_last, options, device, notes) -> dict:
    """Fit the linear grid on TRAIN features of layer `names[idx]`; score the head chosen on
    the validation rows (held out of train) on test."""
    layer = names[idx]
    choices = _feature_choices(names, idx, train, n_last)
    feats = {name: _build(train, parts) for name, parts in choices.items()}
    options = dict(options)
    if "epochs" not in options:
        # LinearProbe's 10 epochs suit big sets; a small one would get only a few SGD steps.
        # Ask for at least _MIN_LINEAR_STEPS steps (the cosine schedule needs room to decay).
        n_fit = len(train.labels) * (1 - val_fraction)
        steps = max(1, math.ceil(n_fit / options.get("batch_size", 256)))
        options["epochs"] = max(10, math.ceil(_MIN_LINEAR_STEPS / steps))
    lp = LinearProbe(val_fraction=val_fraction, seed=seed, device=device, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lp.fit(feats, train.labels)
    for w in caught:
        notes.append(f"linear: {where['model']} {layer}: {w.message}")
    del feats
    best, res = lp.best_, lp.result_
    # Only now is test read, and only the chosen feature: the head was fixed on validation.
    scores = lp.predict_scores({best["feature"]: _build(test, choices[best["feature"]])})
    return {**where, "method": "linear", "setting": best["name"], "head": best["name"],
            "feature": best["feature"], "lr": best["lr"], "val_top1": best["val_top1"],
            "n_fit": res.n_train, "n_val": res.n_val, "epochs": res.epochs,
            "top1": top_k_accuracy(scores, test.labels, 1, classes=lp.classes_),
            "top5": _top5(scores, test.labels, lp.classes_), "num_classes": res.num_classes,
            "grid": lp.grid_results_}


def _build(split: _Split, parts: list[tuple[str, str]]) -> np.ndarray:
    """Concatenate the (layer, pool) features `parts` of one split: (n, sum of widths)."""
    arrays = [split.features(layer, p) for layer, p in parts]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)


def _feature_choices(names: list[str], idx: int, train: _Split,
                     n_last: int) -> dict[str, list[tuple[str, str]]]:
    """The linear grid's feature choices at layer `names[idx]`: {name: [(layer, pool), ...]}.

    cls, mean (or the vector itself), cls+mean (DINOv2's avgpool), and last{n}_cls|mean
    (+mean): the last n tapped layers up to this one, concatenated (DINOv2's n_last_blocks)."""
    layer = names[idx]
    pools = train.pools(layer)
    choices = {p: [(layer, p)] for p in ("cls", "mean", "vector") if p in pools}
    if "cls" in pools and "mean" in pools:
        choices["cls+mean"] = [(layer, "cls"), (layer, "mean")]
    if n_last > 1 and idx + 1 >= n_last:
        group = names[idx + 1 - n_last: idx + 1]
        group_pools = [train.pools(g) for g in group]
        p = "cls" if all("cls" in gp for gp in group_pools) else "mean"
        if all(p in gp or "vector" in gp for gp in group_pools):
            parts = [(g, p if p in gp else "vector") for g, gp in zip(group, group_pools)]
            choices[f"last{n_last}_{p}"] = parts
            if p == "cls" and "mean" in pools:
                choices[f"last{n_last}_cls+mean"] = parts + [(layer, "mean")]
    return choices


# ---------------------------------------------------------------------------------------------
# figure


def plot_curves(result: ProbeResult, path: str | Path) -> Path:
    """Top-1 per layer, one line per model x method (each layer's best setting); zero-shot as a
    dashed horizontal line; LogME per layer in a second panel when present. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    layer_lists = result.settings.get("layers", {})
    models = (result.settings.get("models")
              or list(dict.fromkeys(r["model"] for r in result.results)))
    has_logme = bool(result.rows("logme"))
    fig, axes = plt.subplots(1, 2 if has_logme else 1, figsize=(12 if has_logme else 7, 4.5),
                             squeeze=False)
    ax = axes[0, 0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"knn": "o-", "linear": "s-", "logme": "^-"}
    for mi, model in enumerate(models):
        color = colors[mi % len(colors)]
        n_layers = len(layer_lists.get(model, []))
        for method in ("knn", "linear"):
            xs, ys = _curve(result.rows(method, model), n_layers, "top1")
            if xs:
                ax.plot(xs, ys, styles[method], color=color, label=f"{model} {method}",
                        alpha=0.9 if method == "linear" else 0.7)
        for r in result.rows("zeroshot", model):
            ax.axhline(r["top1"], color=color, linestyle="--", label=f"{model} zeroshot")
        if has_logme:
            xs, ys = _curve(result.rows("logme", model), n_layers, "score")
            if xs:
                axes[0, 1].plot(xs, ys, styles["logme"], color=color, label=f"{model} logme")
    single = len(models) == 1 and models[0] in layer_lists
    for a in axes[0]:
        if single and layer_lists[models[0]]:
            names = layer_lists[models[0]]
            a.set_xticks(range(len(names)))
            a.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        else:
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_xlabel("layer" if single else "layer index (in each model's order)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    ax.set_ylabel("top-1 accuracy (test)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("frozen features per layer")
    if has_logme:
        axes[0, 1].set_ylabel("LogME (train)")
        axes[0, 1].set_title("LogME per layer")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _curve(rows: list[dict], n_layers: int, key: str) -> tuple[list[int], list[float]]:
    """(layer indices, best value per layer) of rows with a layer index."""
    best: dict[int, float] = {}
    for r in rows:
        i, v = r.get("layer_index"), r.get(key)
        if i is None or v is None:
            continue
        best[i] = max(best.get(i, -np.inf), float(v))
    xs = sorted(best)
    return xs, [best[i] for i in xs]
