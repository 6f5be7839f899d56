"""Weighted k-NN classification of frozen features (the DINO / DINOv2 protocol).

The rule (Caron et al. 2021, `dinov2/eval/knn.py`): L2-normalise every feature vector, rank the
training samples by cosine similarity to each query, keep the top k, give each neighbour the vote
``exp(sim / T)`` for its class, and predict the class with the largest summed vote.

Differences from the reference code, all on purpose (see DESIGN.md "Edge cases"):

- ``k`` larger than the training set is capped at ``n_train`` with a warning instead of crashing.
- Votes are ``exp((sim - max_sim) / T)``: shifting by the row maximum (the top-1 similarity)
  scales a query's votes by one positive constant, so the argmax and the class ranking are
  unchanged, while ``T`` down to 1e-3 cannot overflow float32. Votes are summed in float64.
- Ties are broken deterministically: neighbours of equal similarity by the lower training index
  (a stable ranking), equal class votes by the lower class index.
- Many k are served by ONE top-``max(k)`` search sliced per k (as `KnnModule` does).

The search is `zoolens.neighbors` (shared with the OOD k-NN score and the data tools): float32
similarity products over chunks of queries, written into one reused buffer, so memory is
O(chunk_size * n_train), and an exact top-k per row; see that module for the CPU/CUDA choices.
Votes stay in torch.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..._validation import as_features, as_labels
from ...errors import InputError, NotFittedError
from ...neighbors import _normalize, _stable_topk, similarity_blocks
from ...neighbors import default_chunk_size as _default_chunk
from ...zoo.registry import resolve_device

__all__ = [
    "knn_scores",
    "knn_classify",
    "evaluate_knn",
    "top_k_accuracy",
    "KNNProbe",
    "KNNResult",
]


# --------------------------------------------------------------------------------------------
# Shared metric
# --------------------------------------------------------------------------------------------

def top_k_accuracy(scores, labels, k: int = 1, *, classes=None) -> float:
    """Fraction of rows whose true class is among the `k` best-scored classes.

    Args:
        scores: (m, C) class scores (k-NN votes, logits); column j is class j, or `classes[j]`.
        labels: (m,) true labels: column indices in [0, C) when `classes` is None, else values
            looked up in `classes` (a label absent from `classes` counts as wrong).
        k: how many of the best classes count as a hit; capped at C.
        classes: optional (C,) label value of each column, e.g. `KNNProbe.classes_`.

    Returns:
        Accuracy in [0, 1]. Ties rank the lower column first, matching ``argmax``, so
        ``top_k_accuracy(s, y, 1) == mean(argmax(s, 1) == y)``.
    """
    s = as_features(scores, "scores")
    y = as_labels(labels, "labels", n=s.shape[0])
    if k < 1:
        raise InputError(f"k: expected a positive integer, got {k}")
    m, c = s.shape
    if classes is None:
        if not np.issubdtype(y.dtype, np.integer):
            raise InputError(f"labels: expected integer column indices when classes is None, "
                             f"got dtype {y.dtype}")
        if m and (y.min() < 0 or y.max() >= c):
            raise InputError(f"labels: column indices must lie in [0, {c}), "
                             f"got range [{y.min()}, {y.max()}]")
        cols, known = y.astype(np.int64), np.ones(m, dtype=bool)
    else:
        classes = np.asarray(classes)
        if classes.shape != (c,):
            raise InputError(f"classes: has shape {classes.shape} for {c} score columns")
        cols, known = _lookup(classes, y)
    if m == 0:
        return float("nan")
    safe = np.where(known, cols, 0)
    true = s[np.arange(m), safe][:, None]
    # Rank of the true class with ties going to the lower column, as argmax does.
    rank = (s > true).sum(1) + ((s == true) & (np.arange(c)[None, :] < safe[:, None])).sum(1)
    return float(np.mean((rank < min(k, c)) & known))


def _lookup(classes: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column of each label in sorted `classes`, and whether it was found."""
    if len(classes) == 0:
        return np.zeros(len(y), dtype=np.int64), np.zeros(len(y), dtype=bool)
    order = np.argsort(classes, kind="stable")
    sorted_classes = classes[order]
    try:
        pos = np.searchsorted(sorted_classes, y)
    except TypeError as err:
        raise InputError(f"labels: cannot be compared with the class values ({err})") from None
    pos = np.clip(pos, 0, len(classes) - 1)
    found = np.asarray(sorted_classes[pos] == y, dtype=bool).reshape(-1)
    if found.shape != (len(y),):  # elementwise comparison refused (incompatible types)
        found = np.zeros(len(y), dtype=bool)
    return order[pos], found


# --------------------------------------------------------------------------------------------
# Core
# --------------------------------------------------------------------------------------------

def _encode_labels(train_labels: np.ndarray,
                   num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(classes, codes): column value of each class and each train label's column index."""
    if num_classes is None:
        try:
            classes, codes = np.unique(train_labels, return_inverse=True)
        except TypeError as err:
            raise InputError(f"train_labels: values cannot be sorted ({err})") from None
        return classes, codes.reshape(-1).astype(np.int64)
    if not np.issubdtype(train_labels.dtype, np.integer):
        raise InputError(f"train_labels: num_classes={num_classes} needs integer labels, "
                         f"got dtype {train_labels.dtype}")
    if train_labels.size and (train_labels.min() < 0 or train_labels.max() >= num_classes):
        raise InputError(f"train_labels: values must lie in [0, {num_classes}) when "
                         f"num_classes={num_classes}, got range "
                         f"[{train_labels.min()}, {train_labels.max()}]")
    return np.arange(num_classes), train_labels.astype(np.int64)


def _resolve_ks(k, n_train: int, stacklevel: int = 4) -> tuple[list[int], dict[int, int]]:
    """Requested ks (in the given order) and each one's effective value, capped at n_train."""
    ks = [k] if isinstance(k, (int, np.integer)) else list(k)
    if not ks:
        raise InputError("k: expected at least one value")
    for kk in ks:
        if not isinstance(kk, (int, np.integer)) or isinstance(kk, bool) or kk < 1:
            raise InputError(f"k: expected positive integers, got {kk!r}")
    ks = [int(kk) for kk in ks]
    too_big = sorted({kk for kk in ks if kk > n_train})
    if too_big:
        warnings.warn(f"k={too_big} exceeds the {n_train} training samples; using k={n_train}",
                      stacklevel=stacklevel)
    return ks, {kk: min(kk, n_train) for kk in ks}


def _iter_votes(train_t: torch.Tensor, codes_t: torch.Tensor, num_classes: int, test: np.ndarray,
                eff_ks: Sequence[int], temperature: float, chunk_size: int,
                device: torch.device) -> Iterator[tuple[int, dict[int, torch.Tensor]]]:
    """Yield (start row, {effective k: (rows, C) float64 votes on device}) per query chunk."""
    ks = sorted(set(eff_ks))
    kmax = ks[-1]
    test_t = _normalize(test, "test", device)
    for start, sims in similarity_blocks(test_t, train_t, chunk_size):
        rows = sims.shape[0]
        idx = _stable_topk(sims, kmax, ks)
        top = torch.gather(sims, 1, idx).double()
        # Shift by the row maximum: exp never overflows; argmax and ranking are unchanged.
        weights = torch.exp((top - top[:, :1]) / temperature)
        neigh = codes_t[idx]
        votes = torch.zeros((rows, num_classes), dtype=torch.float64, device=device)
        out, done = {}, 0
        for k in ks:  # grow the vote from the previous k: one top-k, sliced per k
            votes.scatter_add_(1, neigh[:, done:k], weights[:, done:k])
            out[k], done = votes.clone(), k
        yield start, out


def _prepare(train, train_labels, test, k, temperature, num_classes, chunk_size, device):
    """Validate once and return everything `_iter_votes` needs."""
    train = as_features(train, "train", dtype=np.float32)
    labels = as_labels(train_labels, "train_labels", n=train.shape[0])
    test = as_features(test, "test", dtype=np.float32, min_samples=0)
    if test.shape[1] != train.shape[1]:
        raise InputError(f"test: has {test.shape[1]} features, train has {train.shape[1]}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise InputError(f"temperature: expected a positive number, got {temperature}")
    ks, eff = _resolve_ks(k, train.shape[0])
    classes, codes = _encode_labels(labels, num_classes)
    dev = resolve_device(device)
    chunk = _default_chunk(train.shape[0], dev) if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise InputError(f"chunk_size: expected a positive integer, got {chunk_size}")
    train_t = _normalize(train, "train", dev)
    codes_t = torch.from_numpy(codes).to(dev)
    return ks, eff, classes, train_t, codes_t, test, chunk, dev


def knn_scores(train, train_labels, test, k: int | Sequence[int] = 20, temperature: float = 0.07,
               *, num_classes: int | None = None, chunk_size: int | None = None,
               device=None) -> np.ndarray | dict[int, np.ndarray]:
    """Summed neighbour votes of the DINO k-NN rule, per class.

    Args:
        train: (n_train, d) training features (NumPy or torch); normalised here.
        train_labels: (n_train,) labels, any sortable values (ints, strings).
        test: (m, d) query features.
        k: one k, or several served from one top-``max(k)`` search. Each is capped at n_train.
        temperature: T in ``exp(sim / T)``.
        num_classes: if given, labels must be ints in [0, num_classes) and column j is class j
            (classes absent from train get zero columns); else the columns are
            ``np.unique(train_labels)``.
        chunk_size: queries per similarity block (memory ~ 4 * chunk_size * n_train bytes);
            default keeps a block near 256 MiB (1 GiB on CUDA), at most 4096 rows.
        device: torch device; CUDA when available, else CPU.

    Returns:
        (m, C) float64 votes for one k, or ``{k: (m, C)}`` keyed by the requested k. Each row
        is scaled by ``exp(-max_sim / T)`` (see the module notes), which changes no ranking.
    """
    ks, eff, classes, train_t, codes_t, test, chunk, dev = _prepare(
        train, train_labels, test, k, temperature, num_classes, chunk_size, device)
    m = test.shape[0]
    out = {kk: np.empty((m, len(classes)), dtype=np.float64) for kk in set(eff.values())}
    for start, votes in _iter_votes(train_t, codes_t, len(classes), test, list(eff.values()),
                                    temperature, chunk, dev):
        for kk, v in votes.items():
            out[kk][start:start + v.shape[0]] = v.cpu().numpy()
    res, used = {}, set()
    for kk in ks:  # two requested k capped to the same value get separate arrays
        res[kk] = out[eff[kk]].copy() if eff[kk] in used else out[eff[kk]]
        used.add(eff[kk])
    return res[ks[0]] if isinstance(k, (int, np.integer)) else res


def knn_classify(train, train_labels, test, k: int | Sequence[int] = 20,
                 temperature: float = 0.07, *, num_classes: int | None = None,
                 chunk_size: int | None = None, device=None) -> np.ndarray | dict[int, np.ndarray]:
    """Predicted labels by the DINO k-NN rule (arguments as in `knn_scores`).

    Returns:
        (m,) predicted labels with the values (and dtype) of `train_labels`, or
        ``{k: (m,)}`` for several k. Equal votes go to the lower class.
    """
    ks, eff, classes, train_t, codes_t, test, chunk, dev = _prepare(
        train, train_labels, test, k, temperature, num_classes, chunk_size, device)
    m = test.shape[0]
    pred = {kk: np.empty(m, dtype=np.int64) for kk in set(eff.values())}
    for start, votes in _iter_votes(train_t, codes_t, len(classes), test, list(eff.values()),
                                    temperature, chunk, dev):
        for kk, v in votes.items():
            # argmax returns the first maximum: ties go to the lower class index.
            pred[kk][start:start + v.shape[0]] = v.argmax(1).cpu().numpy()
    res = {kk: classes[pred[eff[kk]]] for kk in ks}
    return res[ks[0]] if isinstance(k, (int, np.integer)) else res


# --------------------------------------------------------------------------------------------
# Results and estimator
# --------------------------------------------------------------------------------------------

@dataclass
class KNNResult:
    """Top-1/top-5 accuracy of the DINO k-NN rule per k, with the settings used."""

    top1: dict[int, float]
    top5: dict[int, float]
    k: list[int]
    temperature: float
    n_train: int
    n_test: int
    num_classes: int
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        d["top1"] = {str(kk): v for kk, v in self.top1.items()}
        d["top5"] = {str(kk): v for kk, v in self.top5.items()}
        return json.dumps(d)

    @classmethod
    def from_json(cls, s: str) -> "KNNResult":
        d = json.loads(s)
        d["top1"] = {int(kk): v for kk, v in d["top1"].items()}
        d["top5"] = {int(kk): v for kk, v in d["top5"].items()}
        return cls(**d)


def evaluate_knn(train, train_labels, test, test_labels,
                 k: int | Sequence[int] = (10, 20, 100, 200), temperature: float = 0.07, *,
                 chunk_size: int | None = None, device=None) -> KNNResult:
    """Top-1 and top-5 accuracy of the DINO k-NN rule for each k (one search for all k).

    Test labels absent from the training labels count as errors.
    """
    ks = [k] if isinstance(k, (int, np.integer)) else list(k)
    scores = knn_scores(train, train_labels, test, ks, temperature, chunk_size=chunk_size,
                        device=device)
    classes = np.unique(as_labels(train_labels, "train_labels"))
    y = as_labels(test_labels, "test_labels", n=next(iter(scores.values())).shape[0])
    top1 = {kk: top_k_accuracy(s, y, 1, classes=classes) for kk, s in scores.items()}
    top5 = {kk: top_k_accuracy(s, y, 5, classes=classes) for kk, s in scores.items()}
    return KNNResult(top1=top1, top5=top5, k=[int(kk) for kk in ks], temperature=float(temperature),
                     n_train=len(as_labels(train_labels, "train_labels")), n_test=len(y),
                     num_classes=len(classes))


class KNNProbe:
    """Scikit-learn style wrapper of the DINO k-NN rule.

    `fit` normalises and keeps the training features (on `device`); `predict` and `score` run
    the chunked search. Learned state: `classes_` (C,), `n_features_in_`.
    """

    def __init__(self, k: int = 20, temperature: float = 0.07, *, chunk_size: int | None = None,
                 device=None):
        self.k = k
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.device = device

    def get_params(self, deep: bool = True) -> dict:
        return {"k": self.k, "temperature": self.temperature, "chunk_size": self.chunk_size,
                "device": self.device}

    def set_params(self, **params) -> "KNNProbe":
        for name, value in params.items():
            if name not in self.get_params():
                raise InputError(f"unknown parameter {name!r}; have {sorted(self.get_params())}")
            setattr(self, name, value)
        return self

    def fit(self, train, labels) -> "KNNProbe":
        """Store (n, d) training features and their (n,) labels; returns self."""
        x = as_features(train, "train", dtype=np.float32)
        y = as_labels(labels, "labels", n=x.shape[0])
        self.classes_, codes = _encode_labels(y, None)
        self.n_features_in_ = x.shape[1]
        dev = resolve_device(self.device)
        self._train_t = _normalize(x, "train", dev, stacklevel=3)
        self._codes_t = torch.from_numpy(codes).to(dev)
        self._device = dev
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise NotFittedError("this KNNProbe is not fitted yet; call fit(train, labels) first")

    def predict_scores(self, test) -> np.ndarray:
        """(m, C) float64 votes; column j is class `classes_[j]`."""
        self._check_fitted()
        x = as_features(test, "test", dtype=np.float32, min_samples=0)
        if x.shape[1] != self.n_features_in_:
            raise InputError(f"test: has {x.shape[1]} features, fit saw {self.n_features_in_}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise InputError(f"temperature: expected a positive number, got {self.temperature}")
        n = self._train_t.shape[0]
        (kk,), eff = _resolve_ks(self.k, n, stacklevel=3)
        chunk = _default_chunk(n, self._device) if self.chunk_size is None else int(self.chunk_size)
        out = np.empty((x.shape[0], len(self.classes_)), dtype=np.float64)
        for start, votes in _iter_votes(self._train_t, self._codes_t, len(self.classes_), x,
                                        [eff[kk]], self.temperature, chunk, self._device):
            v = votes[eff[kk]]
            out[start:start + v.shape[0]] = v.cpu().numpy()
        return out

    def predict(self, test) -> np.ndarray:
        """(m,) predicted labels (values of the training labels)."""
        scores = self.predict_scores(test)
        return self.classes_[np.argmax(scores, axis=1)]

    def score(self, test, labels, top_k: int = 1) -> float:
        """Top-`top_k` accuracy on (m, d) `test` with (m,) true `labels`."""
        s = self.predict_scores(test)
        return top_k_accuracy(s, as_labels(labels, "labels", n=s.shape[0]), top_k,
                              classes=self.classes_)
