"""Linear probes of frozen features (the DINOv2 protocol, `dinov2/eval/linear.py`).

`LinearProbe` trains a whole grid of linear heads -- every feature choice (a dict of named
feature arrays, e.g. CLS, mean-pooled patches, last blocks concatenated; the caller builds them)
crossed with every learning rate -- in ONE pass over the cached features per epoch: each
minibatch of rows is drawn once and used by every head. Per feature the heads of all learning
rates are one (d, L * C) weight matrix, so a minibatch costs one matmul per feature choice.
Losses of different heads do not interact (their sum has separable gradients), as in DINOv2.

Training: softmax cross-entropy, SGD with momentum 0.9, cosine learning-rate decay to 0 over all
steps, weights initialised N(0, 0.01^2) and biases 0, weight decay on weights only. Learning
rates are DINOv2's 13 values scaled by ``batch_size / 256`` unless given.

Features: with ``standardize=True`` (default) each column is centred and scaled by the mean and
standard deviation of the training rows (the validation rows excluded), so one learning-rate grid
suits models whose features differ in scale; constant columns become 0 with a warning.

Model selection: a stratified, seeded ``val_fraction`` of the training rows is held out, every
head is scored on it, and the best head (first in grid order on ties) is kept unchanged for test
data -- no retraining on train + val, as in DINOv2. Test data is never seen by `fit`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..._validation import as_features, as_labels
from ...errors import InputError, NotFittedError
from .knn import top_k_accuracy  # the shared metric lives in knn.py
from ...zoo.registry import resolve_device

__all__ = ["LinearProbe", "LogisticProbe", "LinearProbeResult", "DINOV2_LEARNING_RATES",
           "top_k_accuracy"]

#: DINOv2's learning-rate grid for a batch size of 256 (`dinov2/eval/linear.py`).
DINOV2_LEARNING_RATES: tuple[float, ...] = (
    1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)

_DEFAULT_NAME = "features"
_EVAL_ROWS = 4096  # rows per block when scoring all heads at once


@dataclass
class LinearProbeResult:
    """What a `LinearProbe` fit found: the grid, the chosen head, and the settings used."""

    best: dict
    grid: list[dict]
    learning_rates: list[float]
    epochs: int
    batch_size: int
    weight_decay: float
    val_fraction: float
    seed: int
    standardize: bool
    n_train: int
    n_val: int
    num_classes: int
    n_steps: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, s: str) -> "LinearProbeResult":
        return cls(**json.loads(s))


def _stratified_split(codes: np.ndarray, fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, val rows), sorted. Each class gives about `fraction` of its rows to val
    (largest-remainder rounding so the total is round(fraction * n)) and keeps at least one."""
    rng = np.random.default_rng(seed)
    n_cls = int(codes.max()) + 1
    counts = np.bincount(codes, minlength=n_cls)
    ideal = fraction * counts
    take = np.minimum(np.floor(ideal).astype(np.int64), np.maximum(counts - 1, 0))
    target = min(int(round(fraction * len(codes))), int(np.maximum(counts - 1, 0).sum()))
    # Hand the remaining quota to the classes with the largest fractional parts (stable order).
    order = np.argsort(-(ideal - np.floor(ideal)), kind="stable")
    for c in order:
        if take.sum() >= target:
            break
        if take[c] < counts[c] - 1:
            take[c] += 1
    val = []
    for c in range(n_cls):
        rows = np.flatnonzero(codes == c)
        val.append(rng.permutation(rows)[: take[c]])
    val = np.sort(np.concatenate(val)) if val else np.empty(0, dtype=np.int64)
    mask = np.ones(len(codes), dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), val


class _Classifier:
    """`predict` and `score` from a subclass's `predict_scores` and `classes_`."""

    def predict(self, features) -> np.ndarray:
        """(m,) predicted labels (values of the training labels)."""
        scores = self.predict_scores(features)  # raises NotFittedError first
        return self.classes_[np.argmax(scores, axis=1)]

    def score(self, features, labels, top_k: int = 1) -> float:
        """Top-`top_k` accuracy; labels absent from training count as wrong."""
        s = self.predict_scores(features)
        return top_k_accuracy(s, as_labels(labels, "labels", n=s.shape[0]), top_k,
                              classes=self.classes_)


class LinearProbe(_Classifier):
    """A grid of linear heads (feature choice x learning rate) trained in one pass; the best
    head on a held-out validation split is kept.

    Args:
        learning_rates: base learning rates; default `DINOV2_LEARNING_RATES`. All are scaled by
            ``batch_size / 256``.
        epochs: passes over the training rows.
        batch_size: rows per SGD step.
        weight_decay: L2 penalty on the weights (not the biases).
        val_fraction: share of the training rows held out (stratified) to pick the head.
        seed: seeds the split, the initialisation and the shuffling.
        standardize: centre and scale each feature column by training-row statistics.
        device: torch device; CUDA when available, else CPU.

    Fitted attributes: `classes_`, `best_` ({"name", "feature", "lr", "val_top1"}),
    `grid_results_` (one such dict per head, grid order), `result_` (`LinearProbeResult`),
    `fit_indices_`, `val_indices_` (rows of the training data), `n_steps_`.
    """

    def __init__(self, learning_rates: Sequence[float] | None = None, epochs: int = 10,
                 batch_size: int = 256, weight_decay: float = 0.0, val_fraction: float = 0.2,
                 seed: int = 0, standardize: bool = True, device=None):
        self.learning_rates = learning_rates
        self.epochs = epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.val_fraction = val_fraction
        self.seed = seed
        self.standardize = standardize
        self.device = device

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in (
            "learning_rates", "epochs", "batch_size", "weight_decay", "val_fraction", "seed",
            "standardize", "device")}

    def set_params(self, **params) -> "LinearProbe":
        for name, value in params.items():
            if name not in self.get_params():
                raise InputError(f"unknown parameter {name!r}; have {sorted(self.get_params())}")
            setattr(self, name, value)
        return self

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _as_feature_dict(features, n: int | None = None) -> dict[str, np.ndarray]:
        if isinstance(features, Mapping):
            if not features:
                raise InputError("features: expected at least one named feature array")
            out = {str(k): as_features(v, f"features[{k!r}]", dtype=np.float32)
                   for k, v in features.items()}
        else:
            out = {_DEFAULT_NAME: as_features(features, "features", dtype=np.float32)}
        for name, x in out.items():
            if n is not None and x.shape[0] != n:
                raise InputError(f"features[{name!r}]: has {x.shape[0]} rows, expected {n}")
            n = x.shape[0]
        return out

    def _minibatches(self, n: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Row indices of one epoch's minibatches: the only place features are iterated.
        Every head consumes each batch, so this runs once per epoch whatever the grid size."""
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, self.batch_size):
            yield perm[start:start + self.batch_size]

    def _lrs(self) -> list[float]:
        base = DINOV2_LEARNING_RATES if self.learning_rates is None else self.learning_rates
        lrs = [float(v) for v in base]
        if not lrs or any(not (v > 0 and math.isfinite(v)) for v in lrs):
            raise InputError(f"learning_rates: expected positive numbers, got {base}")
        return [v * self.batch_size / 256 for v in lrs]

    def _validate_params(self) -> None:
        if not (isinstance(self.epochs, (int, np.integer)) and self.epochs >= 1):
            raise InputError(f"epochs: expected a positive integer, got {self.epochs!r}")
        if not (isinstance(self.batch_size, (int, np.integer)) and self.batch_size >= 1):
            raise InputError(f"batch_size: expected a positive integer, got {self.batch_size!r}")
        if not 0 < self.val_fraction < 1:
            raise InputError(f"val_fraction: expected a number in (0, 1), got {self.val_fraction}")
        if not self.weight_decay >= 0:
            raise InputError(f"weight_decay: expected >= 0, got {self.weight_decay}")

    # ------------------------------------------------------------------ fit

    def fit(self, features, labels) -> "LinearProbe":
        """Train the grid and pick the head on the validation split.

        Args:
            features: ``{name: (n, d_name)}`` feature choices of the same n rows, or one
                (n, d) array (named "features").
            labels: (n,) labels, any sortable values.

        Returns:
            self.
        """
        self._validate_params()
        feats = self._as_feature_dict(features)
        n = next(iter(feats.values())).shape[0]
        y = as_labels(labels, "labels", n=n)
        try:
            classes, codes = np.unique(y, return_inverse=True)
        except TypeError as err:
            raise InputError(f"labels: values cannot be sorted ({err})") from None
        codes = codes.reshape(-1).astype(np.int64)
        fit_rows, val_rows = _stratified_split(codes, self.val_fraction, self.seed)
        if len(val_rows) == 0:
            raise InputError(f"labels: {n} samples are too few to hold out a validation split "
                             f"of {self.val_fraction}; every class needs at least 2 samples")
        lrs = self._lrs()
        dev = resolve_device(self.device)
        n_cls = len(classes)
        n_lr = len(lrs)
        gen = torch.Generator().manual_seed(int(self.seed))

        # Standardise with training-row statistics only (float64 sums), cache on device.
        stats, cached = {}, {}
        for name, x in feats.items():
            mean, scale = self._column_stats(x, name, fit_rows)
            stats[name] = (mean, scale)
            z = (x - mean.astype(np.float32)) / scale.astype(np.float32)  # float32 temporaries
            cached[name] = torch.from_numpy(z).to(dev)

        # One (d, L * C) weight matrix per feature choice: all learning rates in one matmul.
        weights, biases, w_buf, b_buf = {}, {}, {}, {}
        for name, x in cached.items():
            w = torch.randn((x.shape[1], n_lr * n_cls), generator=gen, dtype=torch.float32) * 0.01
            weights[name] = w.to(dev)
            biases[name] = torch.zeros(n_lr * n_cls, dtype=torch.float32, device=dev)
            w_buf[name] = torch.zeros_like(weights[name])
            b_buf[name] = torch.zeros_like(biases[name])
        lr_cols = torch.tensor(lrs, dtype=torch.float32, device=dev).repeat_interleave(n_cls)

        y_fit = torch.from_numpy(codes[fit_rows]).to(dev)
        fit_idx = torch.from_numpy(fit_rows).to(dev)
        steps_per_epoch = math.ceil(len(fit_rows) / self.batch_size)
        total = steps_per_epoch * self.epochs
        step = 0
        for _ in range(self.epochs):
            for batch in self._minibatches(len(fit_rows), gen):
                batch = batch.to(dev)
                rows, yb = fit_idx[batch], y_fit[batch]
                # Cosine decay to 0 over all steps (DINOv2: CosineAnnealingLR, eta_min=0).
                lr_now = lr_cols * (0.5 * (1.0 + math.cos(math.pi * step / total)))
                for name, x_all in cached.items():
                    x = x_all[rows]
                    self._sgd_step(x, yb, weights[name], biases[name], w_buf[name], b_buf[name],
                                   lr_now, n_lr, n_cls)
                step += 1

        # Score every head on the validation rows and keep the best.
        y_val = codes[val_rows]
        grid, best_i, best_acc = [], -1, -1.0
        for name, x_all in cached.items():
            correct = np.zeros(n_lr, dtype=np.int64)
            for start in range(0, len(val_rows), _EVAL_ROWS):
                part = val_rows[start:start + _EVAL_ROWS]
                x = x_all[torch.from_numpy(part).to(dev)]
                logits = torch.addmm(biases[name], x, weights[name]).view(len(part), n_lr, n_cls)
                pred = logits.argmax(2).cpu().numpy()  # first maximum: lowest class on ties
                correct += (pred == y_val[start:start + len(part), None]).sum(0)
            for j, lr in enumerate(lrs):
                acc = float(correct[j] / len(val_rows))
                grid.append({"name": _head_name(name, lr), "feature": name, "lr": lr,
                             "val_top1": acc})
                if acc > best_acc:
                    best_i, best_acc = len(grid) - 1, acc
        best = dict(grid[best_i])
        j = lrs.index(best["lr"])
        sl = slice(j * n_cls, (j + 1) * n_cls)
        self._w = weights[best["feature"]][:, sl].clone()
        self._b = biases[best["feature"]][sl].clone()
        self._mean, self._scale = stats[best["feature"]]
        self._device = dev
        self._n_features = {name: x.shape[1] for name, x in feats.items()}
        self.classes_ = classes
        self.best_ = best
        self.grid_results_ = grid
        self.fit_indices_ = fit_rows
        self.val_indices_ = val_rows
        self.n_steps_ = step
        self.result_ = LinearProbeResult(
            best=best, grid=grid, learning_rates=lrs, epochs=int(self.epochs),
            batch_size=int(self.batch_size), weight_decay=float(self.weight_decay),
            val_fraction=float(self.val_fraction), seed=int(self.seed),
            standardize=bool(self.standardize), n_train=len(fit_rows), n_val=len(val_rows),
            num_classes=n_cls, n_steps=step)
        return self

    def _column_stats(self, x: np.ndarray, name: str,
                      rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, scale) of the columns of x[rows] (all rows if None), float64, accumulated over
        row blocks so no float64 copy of x is made; constant columns get scale 1."""
        d = x.shape[1]
        if not self.standardize:
            return np.zeros(d, dtype=np.float64), np.ones(d, dtype=np.float64)
        rows = np.arange(x.shape[0]) if rows is None else rows
        blocks = [rows[i:i + _EVAL_ROWS] for i in range(0, len(rows), _EVAL_ROWS)]
        total = np.zeros(d, dtype=np.float64)
        for b in blocks:
            total += x[b].sum(0, dtype=np.float64)
        mean = total / len(rows)
        sq = np.zeros(d, dtype=np.float64)
        for b in blocks:  # two passes: centred squares do not cancel catastrophically
            sq += ((x[b] - mean) ** 2).sum(0)
        std = np.sqrt(sq / len(rows))
        const = std <= 1e-12 * np.maximum(np.abs(mean), 1.0)
        if const.any():
            warnings.warn(f"features[{name!r}]: {int(const.sum())} constant column(s) carry no "
                          f"information; they are set to 0", stacklevel=3)
        return mean, np.where(const, 1.0, std)

    def _sgd_step(self, x, y, w, b, w_buf, b_buf, lr_cols, n_lr: int, n_cls: int) -> None:
        """One SGD-momentum step of all L heads of one feature choice on a minibatch.

        The gradient of the mean cross-entropy of head l depends on head l's columns only, so
        one (B, d) x (d, L * C) product and its transpose give every head's gradient.
        """
        bsz = x.shape[0]
        logits = torch.addmm(b, x, w).view(bsz, n_lr, n_cls)
        g = torch.softmax(logits, dim=2)
        g[torch.arange(bsz, device=x.device), :, y] -= 1.0  # d(CE)/d(logits) = p - onehot
        g = g.view(bsz, n_lr * n_cls) / bsz
        grad_w = x.T @ g
        if self.weight_decay:
            grad_w.add_(w, alpha=float(self.weight_decay))
        w_buf.mul_(0.9).add_(grad_w)
        b_buf.mul_(0.9).add_(g.sum(0))
        w.addcmul_(w_buf, lr_cols, value=-1.0)  # lr_cols broadcasts over rows: per-head lr
        b.addcmul_(b_buf, lr_cols, value=-1.0)

    # ------------------------------------------------------------------ predict

    def _check_fitted(self) -> None:
        if not hasattr(self, "best_"):
            raise NotFittedError("this LinearProbe is not fitted yet; call fit(features, labels)")

    def predict_scores(self, features) -> np.ndarray:
        """(m, C) float64 logits of the chosen head; column j is class `classes_[j]`.

        `features` is a dict holding the chosen feature (``best_["feature"]``) or, when fit saw
        a single feature choice, that array itself.
        """
        self._check_fitted()
        name = self.best_["feature"]
        if isinstance(features, Mapping):
            if name not in features:
                raise InputError(f"features: the chosen head uses {name!r}; got "
                                 f"{sorted(map(str, features))}")
            x = as_features(features[name], f"features[{name!r}]", dtype=np.float32,
                            min_samples=0)
        else:
            if len(self._n_features) != 1:
                raise InputError(f"features: fit saw {sorted(self._n_features)}; pass a dict "
                                 f"holding {name!r}")
            x = as_features(features, "features", dtype=np.float32, min_samples=0)
        if x.shape[1] != self._n_features[name]:
            raise InputError(f"features[{name!r}]: has {x.shape[1]} columns, fit saw "
                             f"{self._n_features[name]}")
        out = np.empty((x.shape[0], len(self.classes_)), dtype=np.float64)
        for start in range(0, x.shape[0], _EVAL_ROWS):
            part = ((x[start:start + _EVAL_ROWS] - self._mean) / self._scale).astype(np.float32)
            t = torch.from_numpy(part).to(self._device)
            out[start:start + len(part)] = (t @ self._w + self._b).double().cpu().numpy()
        return out



class LogisticProbe(_Classifier):
    """CLIP_benchmark-style alternative: L2-regularised multinomial logistic regression
    (scikit-learn, L-BFGS) on standardised features, the weight decay picked on a stratified,
    seeded validation split of the training rows, then refit on all training rows with it
    (as CLIP_benchmark's weight-decay search does).

    The penalty is ``weight_decay / 2 * ||W||^2`` added to the mean cross-entropy, i.e.
    scikit-learn's ``C = 1 / (weight_decay * n_rows)``.

    Fitted attributes: `classes_`, `best_` ({"weight_decay", "val_top1"}), `grid_results_`,
    `val_indices_`, `model_` (the refit scikit-learn estimator).
    """

    def __init__(self, weight_decays: Sequence[float] | None = None, val_fraction: float = 0.2,
                 seed: int = 0, max_iter: int = 1000, standardize: bool = True):
        self.weight_decays = weight_decays
        self.val_fraction = val_fraction
        self.seed = seed
        self.max_iter = max_iter
        self.standardize = standardize

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in (
            "weight_decays", "val_fraction", "seed", "max_iter", "standardize")}

    def _model(self, weight_decay: float, n_rows: int):
        from sklearn.linear_model import LogisticRegression  # heavy import, only when used
        return LogisticRegression(C=1.0 / (weight_decay * n_rows), max_iter=self.max_iter,
                                  tol=1e-6)

    def _scale(self, x: np.ndarray) -> np.ndarray:
        return (x - self._mean) / self._std

    def fit(self, features, labels) -> "LogisticProbe":
        """Fit on (n, d) `features` with (n,) `labels`; returns self."""
        x = as_features(features, "features")
        y = as_labels(labels, "labels", n=x.shape[0])
        if not 0 < self.val_fraction < 1:
            raise InputError(f"val_fraction: expected a number in (0, 1), got {self.val_fraction}")
        wds = (np.logspace(-6, -1, 11) if self.weight_decays is None
               else [float(v) for v in self.weight_decays])
        if not len(wds) or any(not (v > 0 and math.isfinite(v)) for v in wds):
            raise InputError(f"weight_decays: expected positive numbers, got {self.weight_decays}")
        try:
            classes, codes = np.unique(y, return_inverse=True)
        except TypeError as err:
            raise InputError(f"labels: values cannot be sorted ({err})") from None
        codes = codes.reshape(-1)
        if len(classes) < 2:
            raise InputError(f"labels: need at least 2 classes, got {len(classes)}")
        fit_rows, val_rows = _stratified_split(codes, self.val_fraction, self.seed)
        if len(val_rows) == 0:
            raise InputError(f"labels: {len(y)} samples are too few to hold out a validation "
                             f"split of {self.val_fraction}")
        # Statistics from the fitting rows only for the search; from all rows for the refit.
        self._mean, self._std = LinearProbe(standardize=self.standardize)._column_stats(
            x, "features", fit_rows)
        grid = []
        for wd in wds:
            model = self._model(wd, len(fit_rows)).fit(self._scale(x[fit_rows]), codes[fit_rows])
            acc = float(np.mean(model.predict(self._scale(x[val_rows])) == codes[val_rows]))
            grid.append({"weight_decay": float(wd), "val_top1": acc})
        best = max(grid, key=lambda g: g["val_top1"])  # first on ties: the smallest decay
        self._mean, self._std = LinearProbe(standardize=self.standardize)._column_stats(
            x, "features")
        self.model_ = self._model(best["weight_decay"], len(x)).fit(self._scale(x), codes)
        self.classes_, self.best_, self.grid_results_ = classes, dict(best), grid
        self.val_indices_ = val_rows
        return self

    def predict_scores(self, features) -> np.ndarray:
        """(m, C) float64 logits; column j is class `classes_[j]`."""
        if not hasattr(self, "model_"):
            raise NotFittedError("this LogisticProbe is not fitted yet; call fit(features, labels)")
        x = as_features(features, "features", min_samples=0)
        if x.shape[1] != len(self._mean):
            raise InputError(f"features: has {x.shape[1]} columns, fit saw {len(self._mean)}")
        s = self.model_.decision_function(self._scale(x))
        return np.stack([-s, s], 1) / 2 if s.ndim == 1 else s  # binary: one column -> two



def _head_name(feature: str, lr: float) -> str:
    """DINOv2-style head name from its settings, e.g. ``cls_lr_0_001`` or ``cls_lr_2e-05``."""
    return f"{feature}_lr_{lr:.4g}".replace(".", "_")
