"""`compare()`: a layer x layer similarity matrix between two models (or a model and itself).

Three estimators, each a sink fed by one streaming pass (`zoolens.plan.run`) over the images:

- ``metric="cka", features="pooled"``: exact linear CKA (Kornblith et al. 2019) on mean-pooled
  features, from float64 running sums (`LayerCKA`). Memory is independent of the number of
  images: per layer a (d, d) Gram, and one (sum d_a) x (sum d_b) cross-product.
- ``metric="cka", features="flat"``: the minibatch unbiased-HSIC CKA (Nguyen et al. 2021,
  `LayerMinibatchCKA`) on whole flattened maps (C * h * w per image), too wide for a (d, d) Gram.
  Each minibatch holds at least `batch_size` images (and at least 4). The estimator assumes
  minibatches are random subsets: image sources list files in a fixed order (folder by folder,
  class by class), so the images are visited in a shuffled order, ``permutation(n)`` of
  ``numpy.random.default_rng(seed)``; ``seed=None`` keeps the source's order.
- ``metric="mknn"``: mutual k-NN alignment (Huh et al. 2024) on mean-pooled features. The
  neighbours of every image are needed, so the pooled features of all images are kept, in
  float32: O(n_images * sum of layer widths) memory, never activation maps.

When both sides are the same model (``model_b=None``, the same spec, or the same `Model`), it is
loaded once and run once per batch; both sides read the same features.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ... import plan
from ...backends import Backend, resolve_backend
from ...errors import InputError
from ...sinks import Batch, Need, Sink
from ...sources import open_source
from ...taps import pooled_shape
from ...zoo.model import Model
from ...zoo.registry import load, resolve_device
from ..result import AnalysisResult
from .cka import LayerCKA, LayerMinibatchCKA
from .mknn import mutual_knn_matrix

__all__ = ["CompareResult", "compare", "plot_matrix", "PooledCKASink", "FlatCKASink", "KNNSink",
           "METRICS", "FEATURES"]

METRICS = ("cka", "mknn")
FEATURES = ("pooled", "flat")
_MIN_MINIBATCH = 4  # the unbiased HSIC estimator needs n >= 4


# ----------------------------------------------------------------------------------------------
# result


@dataclass
class CompareResult(AnalysisResult):
    """A layer x layer similarity matrix between two models, with the settings that produced it.

    Attributes:
        metric: "cka" or "mknn".
        model_a, model_b: model names (specs); equal when a model is compared with itself.
        layers_a: the La layers of model A (matrix rows), in model order.
        layers_b: the Lb layers of model B (matrix columns).
        matrix: (La, Lb) nested lists of floats; ``matrix[i][j]`` compares ``layers_a[i]`` with
            ``layers_b[j]``.
        images: number of images the values were computed from.
        skipped: ``[{"index", "id", "reason"}]`` images that could not be used (bad files).
        settings: ``estimator`` (``linear_cka`` | ``minibatch_unbiased_cka`` | ``mutual_knn``),
            ``features``, ``pooling``, ``k`` (mknn, else None), ``batch_size``, ``source``,
            ``pretrained``, ``same_model``; for flat CKA also ``seed``, ``minibatches`` and
            ``unused`` (ids of trailing images too few to form a minibatch; normally empty).
    """

    analysis: ClassVar[str] = "compare"

    metric: str
    model_a: str
    model_b: str
    layers_a: list[str]
    layers_b: list[str]
    matrix: list[list[float]]
    images: int
    skipped: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.matrix = [[float(v) for v in row] for row in np.asarray(self.matrix, dtype=np.float64)
                       .reshape(len(self.layers_a), len(self.layers_b)).tolist()]

    @property
    def array(self) -> np.ndarray:
        """The matrix as a (La, Lb) float64 NumPy array."""
        return np.asarray(self.matrix, dtype=np.float64).reshape(len(self.layers_a),
                                                                 len(self.layers_b))




# ----------------------------------------------------------------------------------------------
# sinks: one per estimator, each fed batch by batch by the planner


class _Sides:
    """Reads, from a batch, the per-layer tensors of side A and side B."""

    def __init__(self, name_a: str, layers_a: list[str], name_b: str, layers_b: list[str],
                 how: str):
        self.name_a, self.layers_a = name_a, layers_a
        self.name_b, self.layers_b = name_b, layers_b
        self.how = how
        self.labels = ([f"{name_a}/{n}" for n in layers_a], [f"{name_b}/{n}" for n in layers_b])
        self.need = Need.of({name_a: layers_a}, how) | Need.of({name_b: layers_b}, how)

    def get(self, batch: Batch):
        return batch.maps(self.name_a, self.layers_a, self.how), \
            batch.maps(self.name_b, self.layers_b, self.how)


class _NamedLayerCKA(LayerCKA):
    """LayerCKA whose warnings and errors name layers as `<model>/<layer>`."""

    def __init__(self, dims_a, dims_b, labels, *, device=None):
        self._labels = labels
        super().__init__(dims_a, dims_b, device=device)

    def _label(self, side: int, i: int) -> str:
        return self._labels[side][i]


class _NamedLayerMinibatchCKA(LayerMinibatchCKA):
    """LayerMinibatchCKA whose warnings and errors name layers as `<model>/<layer>`."""

    def __init__(self, labels, *, device=None):
        self._labels = labels
        super().__init__(len(labels[0]), len(labels[1]), device=device)

    def _label(self, side: int, i: int) -> str:
        return self._labels[side][i]


class PooledCKASink(Sink):
    """Exact linear CKA of every layer pair from streaming float64 sums (`LayerCKA`)."""

    def __init__(self, sides: _Sides, dims_a, dims_b, device=None):
        self.sides, self.need = sides, sides.need
        self.add_state("acc", _NamedLayerCKA(dims_a, dims_b, sides.labels, device=device),
                       merge="merge")
        self.add_state("images", 0, merge="sum")

    def update(self, batch: Batch) -> None:
        if batch.indices:
            self.acc.update(*self.sides.get(batch))
            self.images += len(batch.indices)

    def result(self) -> tuple[np.ndarray, dict]:
        return self.acc.result(), {}


class FlatCKASink(Sink):
    """Minibatches of >= `size` images for the unbiased estimator (`LayerMinibatchCKA`).

    Rows are gathered until a minibatch is full; a batch thinned by bad files just waits for the
    next one. When fewer than 4 images are still to come, the current minibatch is held back and
    those last images join it, so a short tail is not lost.

    Which images form a minibatch depends on the whole stream (a skip shifts the rest), so a
    split run keeps this sink where it started (`on_driver`) and sends it the flattened maps."""

    on_driver = True

    def __init__(self, sides: _Sides, size: int, total: int, device=None):
        self.sides, self.need, self.size = sides, sides.need, size
        self.add_state("acc", _NamedLayerMinibatchCKA(sides.labels, device=device), merge="merge")
        self.add_state("remaining", total, merge=lambda a, b: a + b - total)
        self.add_state("pending", [], merge="cat")  # (feats_a, feats_b, ids) per batch
        self.add_state("unused", [], merge="cat")
        self.add_state("images", 0, merge="sum")

    @property
    def pending_n(self) -> int:
        return sum(len(ids) for _, _, ids in self.pending)

    def update(self, batch: Batch) -> None:
        self.remaining -= len(batch.indices) + len(batch.skipped)
        if batch.indices:
            fa, fb = self.sides.get(batch)
            self.pending.append(([f.flatten(1) for f in fa], [f.flatten(1) for f in fb],
                                 list(batch.ids)))
            self.images += len(batch.indices)
        if self.pending_n >= self.size and (self.remaining == 0 or
                                            self.remaining >= _MIN_MINIBATCH):
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        if self.pending_n < _MIN_MINIBATCH:
            self.unused += [i for _, _, ids in self.pending for i in ids]
        else:
            cat = lambda parts: [torch.cat(p) for p in zip(*parts)]  # noqa: E731
            self.acc.update(cat([p[0] for p in self.pending]), cat([p[1] for p in self.pending]))
        self.pending = []

    def result(self) -> tuple[np.ndarray, dict]:
        self._flush()
        if self.unused:
            warnings.warn(f"{len(self.unused)} image(s) at the end were too few to form a "
                          f"minibatch of {_MIN_MINIBATCH} and were left out: "
                          f"{', '.join(self.unused)}", RuntimeWarning, stacklevel=3)
        if self.acc.n_batches_ == 0:
            raise InputError(f"images: minibatch CKA needs at least {_MIN_MINIBATCH} usable "
                             f"images, got {len(self.unused)}")
        return self.acc.result(), {"minibatches": self.acc.n_batches_, "unused": self.unused}


class KNNSink(Sink):
    """Keeps every image's pooled features (float32, CPU) with its source index; a layer on both
    sides (a model against itself) is kept once. Mutual k-NN needs every image's neighbours."""

    def __init__(self, sides: _Sides, k: int, device=None):
        self.sides, self.need, self.k, self.device = sides, sides.need, k, device
        self.keys_a = [(sides.name_a, n) for n in sides.layers_a]
        self.keys_b = [(sides.name_b, n) for n in sides.layers_b]
        self.add_state("indices", [], merge="cat")
        self.add_state("rows", {key: [] for key in dict.fromkeys(self.keys_a + self.keys_b)},
                       merge="cat")

    @property
    def images(self) -> int:
        return len(self.indices)

    def update(self, batch: Batch) -> None:
        if not batch.indices:
            return
        self.indices += batch.indices
        for model, layer in self.rows:
            self.rows[(model, layer)].append(
                batch.features[model][layer][self.sides.how].detach().cpu().numpy())

    def result(self) -> tuple[np.ndarray, dict]:
        n = len(self.indices)
        _check_k(self.k, n, "usable images")
        order = np.argsort(self.indices, kind="stable")  # source order, however it was fed
        feats = {key: np.concatenate(parts)[order] for key, parts in self.rows.items()}
        return mutual_knn_matrix([feats[key] for key in self.keys_a],
                                 [feats[key] for key in self.keys_b], k=self.k,
                                 device=self.device), {}


# ----------------------------------------------------------------------------------------------
# helpers


def _check_k(k, n: int | None = None, what: str = "images") -> int:
    """k as an int, >= 1 and (when n is given) < n, or an InputError naming it."""
    try:
        ok = not isinstance(k, bool) and int(k) == k and k >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"k: must be a positive integer, got {k!r}")
    if n is not None and k >= n:
        raise InputError(f"k={k}: mutual k-NN needs k < the number of {what} ({n}); "
                         f"use a smaller k or more images")
    return int(k)


def _models(model_a, model_b, pretrained: bool, device, seed: int) -> tuple[Model, Model]:
    """Load both sides; the same spec or the same Model is loaded once."""
    if model_b is None:
        model_b = model_a
    same = model_a is model_b or (isinstance(model_a, str) and isinstance(model_b, str)
                                  and model_a == model_b)
    a = model_a if isinstance(model_a, Model) else load(model_a, pretrained=pretrained,
                                                        device=device, seed=seed)
    if same:
        return a, a
    b = model_b if isinstance(model_b, Model) else load(model_b, pretrained=pretrained,
                                                        device=device, seed=seed)
    if a.name == b.name:
        raise InputError(f"model_a and model_b are two different models both named {a.name!r}; "
                         "pass the same Model to compare a model with itself, or name them "
                         "(NAME=SPEC, or zoolens.load(spec, name=...)) to tell them apart")
    return a, b


def _acc_device(device: torch.device) -> torch.device:
    # float64 sums run where the features are, except on backends without float64 (MPS).
    return device if device.type == "cuda" else torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# the analysis


def compare(model_a, model_b=None, images=None, *, layers_a="blocks", layers_b=None,
            metric: str = "cka", k: int = 10, features: str = "pooled", batch_size: int = 32,
            seed: int | None = 0, device=None, num_workers: int | None = None,
            progress: bool = True, pretrained: bool = True, store=None,
            out: str | Path | None = None, backend: str | Backend | None = None) -> CompareResult:
    """Layer x layer similarity between two models on the same images.

    Args:
        model_a: a spec string or a loaded `Model` (matrix rows).
        model_b: another spec or `Model` (columns); None, the same spec or the same `Model`
            compares model A with itself (loaded and run once).
        images: anything `open_source` takes: a folder, a CSV, 'synthetic:scenes?n=64', a batch.
        layers_a: layer selector for model A (`blocks`, `all`, names, globs, `blocks[-4:]`).
        layers_b: selector for model B; None uses `layers_a`.
        metric: "cka" (linear CKA) or "mknn" (mutual k-NN alignment).
        k: neighbours for "mknn", 1 <= k < number of images.
        features: "pooled" (mean over positions / patch tokens; exact streaming CKA) or "flat"
            (whole maps flattened to C*h*w per image; minibatch unbiased CKA, cka only).
        batch_size: images per forward pass; for "flat" also the minibatch size (>= 4).
        seed: random weights of specs loaded here (None: 0), and the shuffled visiting order
            for "flat" (see the module docstring); None keeps the source's order. Pooled CKA
            and mknn do not depend on the order.
        device, num_workers, progress: as in `zoolens.engine.run`.
        pretrained: load pretrained weights for spec strings (False: random, offline).
        store: a feature store (`zoolens extract`) read instead of running the models when it
            holds these layers, mean-pooled (flat: as full maps), for these images.
        out: a folder for `compare.json` and the heatmap `compare.png`.
        backend: where the models run: "local", "ray" or a `zoolens.RayBackend` (the workers'
            sums are merged here; `num_workers` then counts model workers).

    Returns:
        CompareResult with the (La, Lb) matrix in ``matrix``.
    """
    _check_arguments(metric, features, batch_size, k, images)
    source = open_source(images)
    n_total = len(source)
    if metric == "mknn":
        _check_k(k, n_total)
    runner = resolve_backend(backend, num_workers=num_workers)
    here = runner.load_device(device)  # where the models load and the sums live
    a, b = _models(model_a, model_b, pretrained, here, seed or 0)
    same = a is b
    names_a = a.select(layers_a)
    names_b = b.select(layers_a if layers_b is None else layers_b)
    how = "none" if features == "flat" else "mean"
    info_a = {i.name: i for i in a.layers(names_a)}
    info_b = {i.name: i for i in b.layers(names_b)}
    # Raises, naming the layer, for token layers without a patch grid to flatten.
    dims_a = [math.prod(pooled_shape(info_a[n], how)) for n in names_a]
    dims_b = [math.prod(pooled_shape(info_b[n], how)) for n in names_b]
    acc_device = _acc_device(resolve_device(here) if here is not None else a.device)
    sides = _Sides(a.name, names_a, b.name, names_b, how)

    settings = {"features": features, "pooling": "mean" if how == "mean" else "none (flattened)",
                "k": int(k) if metric == "mknn" else None, "batch_size": int(batch_size),
                "source": source.description, "pretrained": bool(pretrained), "same_model": same,
                "specs": {a.name: a.spec, b.name: b.spec},
                "weights": {a.name: a.record(), b.name: b.record()}}
    sink, order = _estimator(metric, features, sides, dims_a, dims_b, batch_size=int(batch_size),
                             k=int(k), seed=seed, n_total=n_total, device=acc_device,
                             settings=settings)
    summary = plan.run([a] if same else [a, b], source, [sink], indices=order, store=store,
                       batch_size=int(batch_size), device=device, progress=progress,
                       desc="comparing", backend=runner)
    skipped = list(source.skipped_at_listing) + sorted(summary.skipped, key=lambda s: s["index"])
    if sink.images == 0:
        raise plan.no_usable_images(source, skipped)
    matrix, extra = sink.result()
    settings.update(extra)
    result = CompareResult(metric=metric, model_a=a.name, model_b=b.name, layers_a=names_a,
                           layers_b=names_b, matrix=np.asarray(matrix).tolist(),
                           images=sink.images - len(extra.get("unused", [])), skipped=skipped,
                           settings=settings)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(result.to_json(indent=1))
        plot_matrix(result, out / "compare.png")
    return result


def _check_arguments(metric: str, features: str, batch_size, k, images) -> None:
    """Everything checkable before a model loads, each error naming its argument."""
    if metric not in METRICS:
        raise InputError(f"metric {metric!r}: use one of {', '.join(METRICS)}")
    if features not in FEATURES:
        raise InputError(f"features {features!r}: use one of {', '.join(FEATURES)}")
    if metric == "mknn" and features != "pooled":
        raise InputError("features='flat' applies to metric='cka' only; mutual k-NN uses pooled "
                         "features")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise InputError(f"batch_size: must be a positive integer, got {batch_size!r}")
    if features == "flat" and batch_size < _MIN_MINIBATCH:
        raise InputError(f"batch_size {batch_size}: the minibatch unbiased CKA needs minibatches "
                         f"of at least {_MIN_MINIBATCH} images")
    if metric == "mknn":
        _check_k(k)  # type and sign now, before loading; against the image count later
    if images is None:
        raise InputError("images: name the images to compare the models on (a folder, a CSV, "
                         "synthetic:scenes?n=64)")


def _estimator(metric: str, features: str, sides: _Sides, dims_a, dims_b, *, batch_size: int,
               k: int, seed, n_total: int, device, settings: dict) -> tuple[Sink, list | None]:
    """The sink of the chosen estimator and the order to visit the images in (None: the
    source's); records the estimator in `settings`."""
    if metric == "mknn":
        settings["estimator"] = "mutual_knn"
        return KNNSink(sides, k, device), None
    if features == "pooled":
        settings["estimator"] = "linear_cka"
        return PooledCKASink(sides, dims_a, dims_b, device), None
    settings.update(estimator="minibatch_unbiased_cka", seed=seed)
    order = None if seed is None else np.random.default_rng(seed).permutation(n_total).tolist()
    return FlatCKASink(sides, batch_size, n_total, device), order


# ----------------------------------------------------------------------------------------------
# figure


def plot_matrix(result: CompareResult, path: str | Path, *, annotate: bool | None = None) -> Path:
    """Draw the matrix as a heatmap PNG: rows are model A's layers, columns model B's.

    Args:
        result: a CompareResult.
        path: where the PNG goes.
        annotate: write each value in its cell; by default only when there are at most 12 x 12
            cells (more would be unreadable).

    Returns:
        The path written.
    """
    # A Figure with no pyplot state renders through Agg and leaves the user's backend alone.
    from matplotlib.figure import Figure

    m = result.array
    la, lb = m.shape
    if annotate is None:
        annotate = la <= 12 and lb <= 12
    width = min(24.0, max(4.5, 0.55 * lb + 2.5))
    height = min(24.0, max(3.8, 0.45 * la + 1.8))
    fig = Figure(figsize=(width, height), dpi=110)
    ax = fig.add_subplot()
    # Unbiased estimates may fall slightly outside [0, 1]; the colour scale stays [0, 1].
    im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    fontsize = max(5.0, min(9.0, 200.0 / max(la, lb, 1)))
    ax.set_xticks(range(lb))
    ax.set_xticklabels(result.layers_b, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(la))
    ax.set_yticklabels(result.layers_a, fontsize=fontsize)
    ax.set_xlabel(f"{result.model_b} layers", fontsize=8)
    ax.set_ylabel(f"{result.model_a} layers", fontsize=8)
    label = {"cka": "linear CKA", "mknn": f"mutual {result.settings.get('k')}-NN"}[result.metric]
    if result.settings.get("estimator") == "minibatch_unbiased_cka":
        label = "minibatch unbiased CKA"
    ax.set_title(f"{label}, {result.images} images", fontsize=9)
    if annotate:
        for i in range(la):
            for j in range(lb):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=fontsize,
                        color="black" if m[i, j] > 0.6 else "white")
    fig.colorbar(im, ax=ax, label=label)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path
