"""`evaluate()` (``zoolens.ood.evaluate``): how well each model, layer and method tells
in-distribution images from others.

Extract once, score many ways. Per model and split (the training images, the in-distribution
test images, each OOD set) one feature store is made, reused or resumed with
`zoolens.plan.extract`, in ``out/features/<model>/train``, ``.../id`` and
``.../ood/<name>``: the mean-pooled chosen layers and, for a classifier (a model whose forward
output is class logits: timm, torchvision and Hugging Face image classifiers, ``file:`` factories
returning ``classifier=True``), its ``penultimate`` features (the head's input) and its
``output`` (the logits). A later run with other methods extracts nothing again.

Conventions (OpenOOD's): every score is a confidence, higher = more in-distribution (ID); the
metrics treat OOD as the positive class. Methods, and where they are computed:

- ``knn`` (Sun et al. 2022), ``mahalanobis`` (Lee et al. 2018, OpenOOD "mds"), ``rmds`` (Ren et
  al. 2021), ``feature_norm`` and ``negative_aware_norm`` (Park et al. 2023): at every chosen
  layer and at ``penultimate``. Mahalanobis and RMDS use the classes of the training images
  when the train source has labels (class folders, a CSV, synthetic scenes); without labels
  Mahalanobis fits one Gaussian to all of them (with a note) and RMDS, which compares the class
  Gaussians with that one, is skipped.
- ``energy``, ``msp``, ``max_logit``: at ``output``, classifiers only.
- ``vim`` (Wang et al. 2022): at ``penultimate`` with the head's weight and bias, classifiers
  only. Its principal subspace dimension, unless `vim_dim` is given, follows the ViM authors'
  rule by the feature width d: 1000 for d >= 2048 (their BiT and ResNet-50), 512 for
  d >= 768 (their ViT, DeiT and Swin), and d // 2 below (OpenOOD's 256 for a 512-wide
  ResNet-18); never more than n_train - 1, since a subspace holding every training row leaves
  no residual to scale.

A method that does not apply to a model is skipped with one note; when nothing can be scored
at all, an `InputError` says why.

Metrics per model, layer, method and OOD set (`zoolens.analyses.ood.metrics`, OpenOOD's
definitions): AUROC, AUPR-In (ID positive, on conf), AUPR-Out (OOD positive, on -conf), FPR@95
(the share of ID flagged at the first threshold catching 95% of the OOD set).

The best layer per model and method is the one with the highest AUROC averaged over the OOD
sets (compared to 12 decimals), the earliest layer on ties. The best (model, layer, method)
overall gives, per image, the confidence of the ID test images and of every OOD set, and the
deployment threshold: the largest t such that at least `keep` (95%) of the ID test images have
confidence >= t. An image whose confidence is below t is flagged out of distribution;
`zoolens.analyses.ood.score(out, images)` scores new images with that choice. (The best is
picked on these OOD sets: it says what separated them, not what will separate OOD data nobody
has seen.)

``out/ood.json`` holds `OODResult.to_dict()`: ``results`` (one row per model, layer, method and
OOD set: ``model, layer, layer_index, method, setting, ood, auroc, aupr_in, aupr_out, fpr,
n_id, n_ood``), ``best_layers`` (per model and method: ``layer, layer_index, mean_auroc,
auroc`` {set: value}, ``fpr`` {set: value}), ``best`` (``model, layer, method, mean_auroc,
keep, threshold, id_kept``, ``flagged`` {set: share of it below the threshold},
``confidences`` {"id": [{"id", "confidence"}, ...], "ood": {set: [...]}}, ``examples``
{"most_in_distribution", "least_in_distribution": [{"ood", "id", "index", "confidence"}]}),
``settings``, ``skipped`` ({"train", "id": [...], "ood": {set: [...]}}), ``notes`` and
``figures`` (the files below, relative to ``out``): per model ``ood_auroc_<model>.png`` (mean
AUROC per layer and method), ``ood_curves.png`` (ROC curves and ID vs OOD confidence histograms
of each model's best layer and method) and ``ood_examples.png`` (the OOD images the best
choice finds most and least in-distribution).
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from ... import plan
from ...backends import Backend, resolve_backend
from ...errors import InputError
from ...sources import ImageSource, open_source
from ...store import Store, slug
from ...taps import OUTPUT, PENULTIMATE
from ...zoo.model import Model, resolve_layers
from ...zoo.registry import as_models
from ..result import AnalysisResult
from .metrics import metrics
from .scores import (energy, feature_norm, knn, mahalanobis, max_logit, msp, negative_aware_norm,
                     vim)

__all__ = ["evaluate", "OODResult", "METHODS", "FEATURE_METHODS", "LOGIT_METHODS", "check_methods",
           "default_vim_dim", "deployment_threshold", "split_source_name", "confidences"]

log = logging.getLogger("zoolens")

FEATURE_METHODS = ("knn", "mahalanobis", "rmds", "feature_norm", "negative_aware_norm")
LOGIT_METHODS = ("energy", "msp", "max_logit")
METHODS = FEATURE_METHODS + LOGIT_METHODS + ("vim",)
_EXAMPLES = 8  # OOD images shown at each end of the best choice's confidence range


# ---------------------------------------------------------------------------------------------
# result


@dataclass
class OODResult(AnalysisResult):
    """Every OOD score of every model, layer and method, with the settings that produced it.

    Attributes:
        results: one dict per model, layer, method and OOD set (see the module docstring).
        best: the best (model, layer, method) overall, its deployment threshold, the per-image
            confidences and the example images (module docstring); None when nothing was scored.
        settings: methods, k, keep, seed, the scored layers and ViM dimensions per model, the
            sources (train, id, and the OOD sets by name), sizes, specs, weights, store paths.
        skipped: ``{"train": [...], "id": [...], "ood": {set: [...]}}``, each
            ``{"index", "id", "reason"}``.
        notes: plain sentences (a method skipped for a model, k capped, ...).
        figures: the figure files written, relative to the result's folder.
    """

    analysis: ClassVar[str] = "ood"

    results: list[dict]
    best: dict | None = None
    settings: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=lambda: {"train": [], "id": [], "ood": {}})
    notes: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    def rows(self, method: str | None = None, model: str | None = None,
             ood: str | None = None) -> list[dict]:
        """The result rows, optionally of one method, model and/or OOD set."""
        return [r for r in self.results if (method is None or r["method"] == method)
                and (model is None or r["model"] == model) and (ood is None or r["ood"] == ood)]

    def best_per_model(self) -> dict[str, dict]:
        """Per model, its best (layer, method) by mean AUROC over the OOD sets (ties: the
        earlier layer, then the method order), in model order."""
        return _best_per_model(self.results, self.settings.get("models") or
                               list(dict.fromkeys(r["model"] for r in self.results)))

    def best_layers(self) -> list[dict]:
        """Per model and method, the layer with the highest AUROC averaged over the OOD sets
        (the earliest layer on ties), in model order, then method order."""
        best: dict[tuple[str, str], dict] = {}
        for c in _choices(self.results):
            key = (c["model"], c["method"])
            if key not in best or _better(c, best[key]):
                best[key] = c
        models = self.settings.get("models") or list(dict.fromkeys(r["model"]
                                                                    for r in self.results))
        order = {m: i for i, m in enumerate(models)}
        return sorted(best.values(), key=lambda c: (order.get(c["model"], len(order)),
                                                    _METHOD_ORDER.get(c["method"], 99)))

    def summary(self) -> str:
        """One line: the best choice, its mean AUROC and the deployment threshold."""
        if not self.best:
            return "no OOD scores"
        b = self.best
        n_sets = len(self.settings.get("ood", {})) or len({r["ood"] for r in self.results})
        return (f"best {b['model']} {b['layer']} {b['method']}: mean AUROC {b['mean_auroc']:.3f} "
                f"over {n_sets} OOD set(s); threshold {b['threshold']:.4g} keeps "
                f"{b['id_kept']:.0%} of the ID test images")

    def derived(self) -> dict:
        return {"best_layers": self.best_layers()}

    @classmethod
    def derived_keys(cls) -> tuple[str, ...]:
        return ("best_layers",)


_METHOD_ORDER = {m: i for i, m in enumerate(METHODS)}


def _choices(rows: list[dict]) -> list[dict]:
    """One entry per (model, layer, method): its AUROC and FPR per OOD set and the mean AUROC,
    in the order the rows come."""
    out: dict[tuple[str, str, str], dict] = {}
    for r in rows:
        c = out.setdefault((r["model"], r["layer"], r["method"]), {
            "model": r["model"], "method": r["method"], "layer": r["layer"],
            "layer_index": r.get("layer_index"), "setting": r.get("setting", ""),
            "auroc": {}, "fpr": {}})
        c["auroc"][r["ood"]] = r["auroc"]
        c["fpr"][r["ood"]] = r["fpr"]
    for c in out.values():
        c["mean_auroc"] = float(np.mean(list(c["auroc"].values())))
    return list(out.values())


def _rank(value: float) -> float:
    """A mean AUROC as ranked: to 12 decimals, so that sums rounded differently (a perfect
    curve's area can come out as 0.9999999999999999) tie as they should."""
    return round(float(value), 12)


def _better(a: dict, b: dict) -> bool:
    """a beats b: a higher mean AUROC, else an earlier layer (then the method order)."""
    if _rank(a["mean_auroc"]) != _rank(b["mean_auroc"]):
        return _rank(a["mean_auroc"]) > _rank(b["mean_auroc"])
    return ((a["layer_index"] or 0), _METHOD_ORDER.get(a["method"], 99)) < \
        ((b["layer_index"] or 0), _METHOD_ORDER.get(b["method"], 99))


def _best_per_model(rows: list[dict], models: list[str]) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for c in _choices(rows):
        if c["model"] not in best or _better(c, best[c["model"]]):
            best[c["model"]] = c
    return {m: best[m] for m in models if m in best}


# ---------------------------------------------------------------------------------------------
# small public helpers


def check_methods(methods: str | Sequence[str], name: str = "methods") -> list[str]:
    """`methods` as a list of known method names (comma-separated text or a sequence; ``all``:
    every one), or an InputError naming `name` (the argument or flag) and the methods that
    exist."""
    given = methods.split(",") if isinstance(methods, str) else list(methods)
    chosen = [str(m).strip().lower() for m in given if str(m).strip()]
    if chosen == ["all"]:
        return list(METHODS)
    bad = [m for m in chosen if m not in METHODS]
    if bad or not chosen:
        what = f"unknown {', '.join(map(repr, bad))}" if bad else "none given"
        raise InputError(f"{name} {','.join(map(str, given))!r}: {what}; use any of "
                         f"{', '.join(METHODS)} (comma-separated)")
    return list(dict.fromkeys(chosen))


def default_vim_dim(width: int, n_train: int | None = None) -> int:
    """ViM's principal subspace dimension for features of `width` d (the ViM authors' rule):
    1000 for d >= 2048, 512 for d >= 768, d // 2 otherwise; at most n_train - 1 and d - 1."""
    dim = 1000 if width >= 2048 else 512 if width >= 768 else width // 2
    if n_train is not None:
        dim = min(dim, n_train - 1)
    return max(1, min(dim, width - 1))


def deployment_threshold(conf_id, keep: float = 0.95) -> float:
    """The largest t such that at least `keep` of the in-distribution confidences are >= t.

    Deployed, an image with confidence < t is flagged out of distribution: by construction at
    most 1 - `keep` of images like the ID test images are flagged. With n confidences sorted in
    decreasing order, t is the ceil(keep * n)-th of them (ties keep all their copies)."""
    c = np.sort(np.asarray(conf_id, dtype=np.float64).ravel())[::-1]
    if not len(c):
        raise InputError("deployment_threshold: no in-distribution confidences")
    if not 0.0 < keep <= 1.0:
        raise InputError(f"keep: expected a share in (0, 1], got {keep!r}")
    # the 1e-9 absorbs float error in keep * n (0.95 * 20 must give 19, not 19.000000000000004)
    m = min(len(c), max(1, math.ceil(keep * len(c) - 1e-9)))
    return float(c[m - 1])


_NAMED = re.compile(r"([A-Za-z0-9_.+-]+)=(.+)", re.S)


def split_source_name(text: str) -> tuple[str | None, str]:
    """``NAME=SOURCE`` -> (NAME, SOURCE); a bare source -> (None, source).

    The name is the text before the first '=' when it holds only letters, digits and ``_ . + -``
    (so the '=' of ``synthetic:scenes?n=64`` or of a folder ``runs/lr=0.1`` never starts a name),
    and the whole text is not itself an existing file or folder."""
    if not isinstance(text, str) or Path(text).expanduser().exists():
        return None, text
    m = _NAMED.fullmatch(text)
    return (m.group(1), m.group(2)) if m else (None, text)


def _default_name(src: ImageSource, text, i: int) -> str:
    """An OOD set's name when none is given: its folder's (CSV's, URL's) name, else the source
    text (`synthetic:scenes?...`) or its description."""
    return (src.short_name() or (str(text) if isinstance(text, (str, Path)) else "")
            or src.description or f"ood_{i}")


def _ood_sources(ood) -> dict[str, ImageSource]:
    """One source, a list of them (one OOD set each) or {name: source} -> {name: source}."""
    if isinstance(ood, dict):
        items = [(str(k), v) for k, v in ood.items()]
    elif isinstance(ood, (list, tuple)):
        items = [(None, v) for v in ood]
    else:
        items = [(None, ood)]
    if not items:
        raise InputError("ood: no OOD set given; name at least one (a folder, a CSV, "
                         "synthetic:scenes?..., or NAME=SOURCE)")
    named: dict[str, ImageSource] = {}
    for i, (name, src) in enumerate(items):
        if name is None and isinstance(src, str):
            name, src = split_source_name(src)
        source = _source(src, f"ood {name!r}" if name is not None else "ood")
        name = name if name is not None else _default_name(source, src, i)
        if not name.strip():
            raise InputError(f"ood set {i + 1}: its name is empty; write NAME=SOURCE")
        if name in named:
            raise InputError(f"ood: two sets are named {name!r}; name them apart with "
                             "NAME=SOURCE (e.g. --ood photos=./photos)")
        named[name] = source
    slugs = [slug(n) for n in named]
    if len(set(slugs)) != len(slugs):
        raise InputError(f"ood sets {list(named)}: two share a folder name; rename one")
    return named


def _source(src, what: str) -> ImageSource:
    source = open_source(src)
    if len(source) == 0:
        raise InputError(f"{what} {str(src)!r}: holds no images")
    return source


# ---------------------------------------------------------------------------------------------
# scores on stored features


def _head(model: Model) -> tuple[np.ndarray, np.ndarray]:
    """A classifier's head as (W (C, d), b (C,)) float64; b = 0 where the head has no bias."""
    linear = dict(model.module.named_modules())[model.head]
    w = linear.weight.detach().double().cpu().numpy()
    b = (linear.bias.detach().double().cpu().numpy() if linear.bias is not None
         else np.zeros(w.shape[0]))
    return w, b


def confidences(method: str, tests: Sequence[np.ndarray], *, train: np.ndarray | None = None,
                labels=None, k: int = 50, head: tuple[np.ndarray, np.ndarray] | None = None,
                dim: int | None = None, device=None) -> list[np.ndarray]:
    """The confidences (higher = more in-distribution) `method` gives each of `tests`.

    Args:
        method: one of `METHODS`.
        tests: arrays (n_i, d) of features (logits for ``energy``, ``msp``, ``max_logit``; the
            head's input for ``vim``), scored together in one call of the score function (so
            statistics of `train` are computed once).
        train: (n_train, d) in-distribution training features (``knn``, ``mahalanobis``,
            ``rmds``, ``vim``).
        labels: (n_train,) their classes for Mahalanobis / RMDS; None: one Gaussian.
        k: the k-NN's k (capped at n_train with a warning).
        head: (W, b) of the classifier's head, for ViM.
        dim: ViM's principal subspace dimension.
        device: where the k-NN similarity products run.

    Returns:
        One (n_i,) float64 array per test array.
    """
    x = np.concatenate(list(tests), axis=0) if len(tests) > 1 else np.asarray(tests[0])
    if method == "knn":
        conf = knn(train, x, k, device=device)
    elif method in ("mahalanobis", "rmds"):
        ys = np.zeros(len(train), dtype=np.int64) if labels is None else labels
        conf = mahalanobis(train, ys, x, relative=method == "rmds")
    elif method == "feature_norm":
        conf = feature_norm(x)
    elif method == "negative_aware_norm":
        conf = negative_aware_norm(x)
    elif method in LOGIT_METHODS:
        conf = {"energy": energy, "msp": msp, "max_logit": max_logit}[method](x)
    elif method == "vim":
        conf = vim(train, x, head[0], head[1], dim)
    else:
        raise InputError(f"method {method!r}: use one of {', '.join(METHODS)}")
    return np.split(conf, np.cumsum([len(t) for t in tests])[:-1])


def _read(store: Store, model: str, layer: str) -> np.ndarray:
    """(n_valid, C) float32 rows of a stored (mean-pooled) layer."""
    return np.asarray(store.features(model, layer, "mean", valid_only=True), dtype=np.float32)


def _labels(store: Store) -> np.ndarray | None:
    """The training labels of the valid rows, or None when the source had none."""
    if store.labels is None:
        return None
    return np.asarray(store.labels, dtype=object)[store.valid]


class _Scorer:
    """One model's stores (train, id, every OOD set) and what its methods need."""

    def __init__(self, model: Model, stores: dict[str, Store], ood_names: list[str], *, k: int,
                 vim_dim: int | None, device, notes: list[str]):
        self.model, self.stores, self.ood_names = model, stores, ood_names
        self.k, self.device, self.notes = k, device, notes
        self.labels = _labels(stores["train"])
        self.n_classes = 0 if self.labels is None else len(set(self.labels.tolist()))
        self.n_train = int(stores["train"].valid.sum())
        self.head = _head(model) if model.head else None
        self._layer: tuple[str, dict[str, np.ndarray]] | None = None  # the last layer read
        self._kept: dict[tuple[str, str], dict[str, np.ndarray]] = {}  # see `keep_only`
        self.vim_dim = None
        if self.head is not None:
            width = self.head[0].shape[1]
            self.vim_dim = (default_vim_dim(width, self.n_train) if vim_dim is None
                            else int(vim_dim))

    def splits(self) -> list[str]:
        return ["id"] + [f"ood/{n}" for n in self.ood_names]

    def setting(self, method: str) -> str:
        if method == "knn":
            return f"k={min(self.k, self.n_train)}"
        if method in ("mahalanobis", "rmds"):
            return f"{self.n_classes} classes" if self.n_classes > 1 else "one Gaussian"
        if method == "vim":
            return f"dim={self.vim_dim}"
        return ""

    def _rows(self, layer: str, split: str) -> np.ndarray:
        """A split's rows at `layer`, read once for all the methods scored there."""
        if self._layer is None or self._layer[0] != layer:
            self._layer = (layer, {})  # the previous layer's rows are let go
        cache = self._layer[1]
        if split not in cache:
            cache[split] = _read(self.stores[split], self.model.name, layer)
        return cache[split]

    def keep_only(self, method: str, layer: str) -> None:
        """Remember this choice's confidences (the summary and the figures ask for the best
        one's again) and forget the others (memory: one choice per model, not all)."""
        key = (method, layer)
        self._kept = {key: self._kept[key]} if key in self._kept else {}

    def scores(self, method: str, layer: str) -> dict[str, np.ndarray]:
        """{split: confidences} of `method` at `layer` for the ID test set and every OOD set."""
        key = (method, layer)
        if key not in self._kept:
            self._kept[key] = self._score(method, layer)
        return self._kept[key]

    def _score(self, method: str, layer: str) -> dict[str, np.ndarray]:
        name = self.model.name
        tests = [self._rows(layer, s) for s in self.splits()]
        train = (self._rows(layer, "train")
                 if method in ("knn", "mahalanobis", "rmds", "vim") else None)
        labels = self.labels if self.n_classes > 1 else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # k is capped here, not in knn: the cap is noted once per model, not per layer
            conf = confidences(method, tests, train=train, labels=labels,
                               k=min(self.k, self.n_train),
                               head=self.head, dim=self.vim_dim, device=self.device)
        for w in caught:
            note = f"{method}: {name} {layer}: {w.message}"
            if note not in self.notes:
                self.notes.append(note)
        return dict(zip(self.splits(), conf))


def _applies(method: str, layer: str, feature_layers: list[str], model: Model) -> bool:
    if method in FEATURE_METHODS:
        return layer in feature_layers
    if method in LOGIT_METHODS:
        return model.is_classifier and layer == OUTPUT
    return method == "vim" and model.head is not None and layer == PENULTIMATE


def _skip_notes(model: Model, methods: list[str], labelled: int, notes: list[str]) -> list[str]:
    """Drop the methods that cannot apply to `model`, with one note each; the ones left."""
    keep = list(methods)
    logit = [m for m in methods if m in LOGIT_METHODS]
    if logit and not model.is_classifier:
        notes.append(f"{', '.join(logit)}: skipped {model.name}: it has no classification head "
                     "(logit scores need class logits: a timm, torchvision or HF image "
                     "classifier, or a file: factory returning classifier=True)")
        keep = [m for m in keep if m not in logit]
    if "vim" in methods and model.head is None:
        why = ("it has no classification head" if not model.is_classifier else
               "its head (the Linear module returning the logits) was not found")
        notes.append(f"vim: skipped {model.name}: {why} (ViM needs the head's weight and bias)")
        keep.remove("vim")
    if "rmds" in methods and labelled < 2:
        notes.append(f"rmds: skipped {model.name}: the training images have "
                     f"{'no labels' if labelled == 0 else 'one class'}; RMDS compares class "
                     "Gaussians with one Gaussian of all of them, identical with one class")
        keep.remove("rmds")
    return keep


# ---------------------------------------------------------------------------------------------
# the analysis


def evaluate(models, train, id, ood, *, layers="blocks", methods: str | Sequence[str] = "all",
        k: int = 50, vim_dim: int | None = None, keep: float = 0.95,
        out: str | Path | None = None, pretrained: bool = True, seed: int = 0,
        batch_size: int = 32, device=None, num_workers: int | None = None,
        dtype: str = "float16", overwrite: bool = False, plot: bool = True,
        progress: bool = True, backend: str | Backend | None = None) -> OODResult:
    """Score how out-of-distribution images are, for every model, layer and method.

    Args:
        models: specs (``timm:resnet50``, ``NAME=SPEC``) or loaded `Model`s, one or several.
        train: the in-distribution training images (a folder, class folders, a CSV of
            ``path,label``, ``synthetic:scenes?...``): what "in distribution" means.
        id: in-distribution test images (not in `train`), whose scores the OOD sets are
            compared with.
        ood: out-of-distribution images: one source, a list of them (one set each) or a dict
            {name: source}; a source text may be named ``NAME=SOURCE`` (default name: the
            folder's name, else the source text).
        layers: a layer selector for every model (``blocks``, ``blocks[-4:]``, names, globs)
            or a dict {model name or spec: selector}; ``penultimate`` and ``output`` are added
            for classifiers.
        methods: ``all`` (the default) or any of `METHODS` (comma-separated text or a
            sequence): ``knn``, ``mahalanobis``, ``rmds``, ``feature_norm``,
            ``negative_aware_norm`` (features), ``energy``, ``msp``, ``max_logit`` (logits),
            ``vim``.
        k: the k-NN's k (the k-th nearest training row; capped at the training size).
        vim_dim: ViM's principal subspace dimension (default: the rule in the module notes).
        keep: the share of ID test images the deployment threshold keeps (0.95).
        out: folder for ``ood.json``, the figures and the feature stores (``out/features``).
        pretrained, seed, batch_size, device, num_workers, dtype, backend: extraction
            settings (as `zoolens.extract`); `device` also runs the k-NN search (here, also
            when the models run on a Ray cluster).
        overwrite: extract again where a store with other settings exists.
        plot: write the figures.
        progress: show progress bars.

    Returns:
        An `OODResult`, also written to ``out/ood.json``. An image whose confidence under
        ``result.best`` is below ``result.best["threshold"]`` is flagged out of distribution.
    """
    if out is None:
        raise InputError("ood needs out=DIR, the folder for ood.json and the feature stores")
    methods = check_methods(methods)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k: expected a positive integer, got {k!r}")
    if vim_dim is not None and (isinstance(vim_dim, bool) or not isinstance(vim_dim, int)
                                or vim_dim < 1):
        raise InputError(f"vim_dim: expected a positive integer, got {vim_dim!r}")
    if not 0.0 < keep <= 1.0:
        raise InputError(f"keep: expected a share of the ID test images in (0, 1], got {keep!r}")
    out = Path(out)
    sources = {"train": _source(train, "train"), "id": _source(id, "id")}
    ood_sources = _ood_sources(ood)

    runner = resolve_backend(backend, num_workers=num_workers)
    models = as_models(models, pretrained=pretrained, device=runner.load_device(device),
                       seed=seed)
    score_device = device if runner.name == "local" else None  # scores run here
    slugs = [slug(m.name) for m in models]
    if len(set(slugs)) != len(slugs):
        raise InputError(f"models {[m.name for m in models]}: two share a name (or a folder "
                         "name); give each a distinct name")
    chosen = resolve_layers(models, layers)

    result = OODResult(results=[], skipped={"train": [], "id": [],
                                            "ood": {n: [] for n in ood_sources}})
    scorers: dict[str, _Scorer] = {}
    info: dict[str, dict] = {"layers": {}, "stores": {}, "vim_dim": {}, "labelled": {}}
    all_sources = {**sources, **{f"ood/{n}": s for n, s in ood_sources.items()}}
    for model in models:
        feature_layers = list(chosen[model.name])
        if model.head is not None and PENULTIMATE not in feature_layers:
            feature_layers.append(PENULTIMATE)
        scored = feature_layers + ([OUTPUT] if model.is_classifier
                                   and OUTPUT not in feature_layers else [])
        # every layer is stored whatever the methods, so a run with other methods finds the
        # same stores and extracts nothing
        pools = {layer: ["mean"] for layer in scored}
        stores = plan.extract_splits(model, all_sources, pools,
                                     out / "features" / slug(model.name), dtype=dtype,
                                     batch_size=batch_size, device=device, backend=runner,
                                     overwrite=overwrite, progress=progress)
        for split, store in stores.items():
            _add_skips(result.skipped, split, store.skipped)
        for split, store in stores.items():
            if not store.valid.any():
                raise InputError(f"{split}: no usable image for {model.name} (all skipped; see "
                                 f"the store's skip list in {store.path})")
        if stores["train"].valid.sum() < 2:
            raise InputError(f"train: only {int(stores['train'].valid.sum())} usable image(s) "
                             f"for {model.name}; give at least 2")
        scorer = _Scorer(model, stores, list(ood_sources), k=int(k), vim_dim=vim_dim,
                         device=score_device, notes=result.notes)
        scorers[model.name] = scorer
        info["layers"][model.name] = scored
        info["stores"][model.name] = {s: str(st.path.relative_to(out)) for s, st in stores.items()}
        info["vim_dim"][model.name] = scorer.vim_dim
        info["labelled"][model.name] = scorer.n_classes
        if scorer.n_classes < 2 and {"mahalanobis"} & set(methods):
            result.notes.append(
                f"mahalanobis: {model.name}: the training images have "
                f"{'no labels' if scorer.n_classes == 0 else 'one class'}: one Gaussian of "
                "all of them is used")
        if "knn" in methods and k > scorer.n_train:
            result.notes.append(f"knn: {model.name}: k={k} exceeds the {scorer.n_train} "
                                f"training images; k={scorer.n_train} used")
        usable = _skip_notes(model, methods, scorer.n_classes, result.notes)
        result.results += _score_model(scorer, scored, feature_layers, usable)
    if not result.results:
        raise InputError("ood: nothing could be scored: " + "; ".join(result.notes))

    result.settings = _settings(models, methods, k, keep, seed, pretrained, dtype, info, sources,
                                ood_sources)
    result.best = _best(result, scorers, keep)
    out.mkdir(parents=True, exist_ok=True)
    if plot:
        from .figures import write_figures

        result.figures = write_figures(result, scorers, ood_sources, out)
    (out / "ood.json").write_text(result.to_json(indent=1))
    return result


def _settings(models, methods, k, keep, seed, pretrained, dtype, info, sources,
              ood_sources) -> dict:
    """What `ood.json` records of how its numbers were computed."""
    return {
        "methods": list(methods), "k": int(k), "vim_dim": info["vim_dim"],
        "keep": float(keep), "seed": int(seed), "pretrained": bool(pretrained), "dtype": dtype,
        "models": [m.name for m in models], "specs": {m.name: m.spec for m in models},
        "weights": {m.name: m.record() for m in models},
        "classifiers": {m.name: bool(m.is_classifier) for m in models},
        "heads": {m.name: m.head for m in models},
        "layers": info["layers"], "train_classes": info["labelled"],
        "train": sources["train"].description, "id": sources["id"].description,
        "ood": {n: s.description for n, s in ood_sources.items()},
        "n_train": len(sources["train"]), "n_id": len(sources["id"]),
        "n_ood": {n: len(s) for n, s in ood_sources.items()},
        "stores": info["stores"],
        "convention": "confidence: higher = more in-distribution; OOD is the positive class "
                      "of AUROC, AUPR-Out and FPR@95 (OpenOOD); AUPR-In takes ID as positive",
    }


def _add_skips(skipped: dict, split: str, records: list[dict]) -> None:
    """A split's skipped images, each listed once however many models skipped it."""
    target = skipped["ood"][split[4:]] if split.startswith("ood/") else skipped[split]
    known = {s["id"] for s in target}
    target += [s for s in records if s["id"] not in known]


def _score_model(scorer: _Scorer, scored: list[str], feature_layers: list[str],
                 methods: list[str]) -> list[dict]:
    """One row per layer, applicable method and OOD set."""
    model = scorer.model
    rows = []
    for index, layer in enumerate(scored):
        for method in [m for m in methods if _applies(m, layer, feature_layers, model)]:
            try:
                conf = scorer.scores(method, layer)
            except InputError as exc:  # e.g. ViM with no residual: one note, not a failure
                scorer.notes.append(f"{method}: skipped {model.name} {layer}: {exc}")
                continue
            for name in scorer.ood_names:
                m = metrics(conf["id"], conf[f"ood/{name}"])
                rows.append({"model": model.name, "layer": layer, "layer_index": index,
                             "method": method, "setting": scorer.setting(method), "ood": name,
                             "auroc": m.auroc, "aupr_in": m.aupr_in, "aupr_out": m.aupr_out,
                             "fpr": m.fpr, "n_id": m.n_id, "n_ood": m.n_ood})
            if rows:
                best = _best_per_model(rows, [model.name])[model.name]
                scorer.keep_only(best["method"], best["layer"])
    return rows


def _best(result: OODResult, scorers: dict[str, _Scorer], keep: float) -> dict:
    """The best (model, layer, method) overall, its per-image confidences, the deployment
    threshold and the example images."""
    choice = None
    for c in _best_per_model(result.results, list(scorers)).values():  # in model order
        if choice is None or _rank(c["mean_auroc"]) > _rank(choice["mean_auroc"]):
            choice = c  # ties keep the earlier model
    scorer = scorers[choice["model"]]
    conf = scorer.scores(choice["method"], choice["layer"])
    t = deployment_threshold(conf["id"], keep)
    name = choice["model"]

    def per_image(split: str) -> list[dict]:
        ids = scorer.stores[split].valid_ids()
        return [{"id": i, "confidence": float(c)} for i, c in zip(ids, conf[split])]

    pooled = []  # (confidence, set, id, source index) of every OOD image
    for n in scorer.ood_names:
        store = scorer.stores[f"ood/{n}"]
        idx = np.flatnonzero(store.valid)
        pooled += [(float(c), n, store.ids[i], int(i)) for c, i in zip(conf[f"ood/{n}"], idx)]
    pooled.sort(key=lambda p: -p[0])
    n_most = min(_EXAMPLES, (len(pooled) + 1) // 2)
    n_least = min(_EXAMPLES, len(pooled) // 2)
    example = lambda p: {"ood": p[1], "id": p[2], "index": p[3], "confidence": p[0]}  # noqa: E731
    return {
        "model": name, "layer": choice["layer"], "layer_index": choice["layer_index"],
        "method": choice["method"], "setting": choice["setting"],
        "mean_auroc": choice["mean_auroc"], "auroc": choice["auroc"], "keep": float(keep),
        "threshold": t, "id_kept": float(np.mean(conf["id"] >= t)),
        "flagged": {n: float(np.mean(conf[f"ood/{n}"] < t)) for n in scorer.ood_names},
        "confidences": {"id": per_image("id"),
                        "ood": {n: per_image(f"ood/{n}") for n in scorer.ood_names}},
        "examples": {"most_in_distribution": [example(p) for p in pooled[:n_most]],
                     "least_in_distribution": [example(p) for p in
                                               pooled[len(pooled) - n_least:][::-1]]},
    }
