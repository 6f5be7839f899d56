"""Seeded, deterministic k-means: Lloyd iterations, k-means++ seeding, and the hierarchical k-means
with resampling steps of ssl-data-curation (Vo et al. 2024).

- `kmeans`: Lloyd's algorithm in blocks (memory O(block) besides the data and the centroids);
  squared Euclidean distance, or cosine (`spherical=True`: rows and centroids on the unit sphere).
  Assignment uses float32 matrix products; centroid sums are float64. A cluster left empty is
  moved to the point farthest from its centroid. Iteration stops early when no label changes.
- `hierarchical_kmeans`: level 1 clusters the data, level l clusters the centroids of level l-1.
  After a level's k-means, each resampling step takes `sample_size` points per cluster (the
  closest to its centroid, or a random draw), runs k-means on that union (warm-started from the
  current centroids, where the reference restarts from k-means++) and reassigns every point.
  Resampling evens out the centroids over the data's support, which the balanced sampler needs.

Every random choice comes from ``numpy.random.default_rng(seed)``, consumed in a fixed order, so a
repeated seed gives the same result on every run (on one machine: BLAS thread counts can change
float32 rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..._validation import as_features, inverse_norms
from ...errors import InputError
from ..label_sums import label_sums
from ._result import ResultMixin, _float_array, _int_array, array_field

__all__ = ["BLOCK_BYTES", "KMeansResult", "HierarchicalKMeans", "kmeans", "assign_clusters",
           "hierarchical_kmeans"]

# Bytes of float32 scores held per block, the default of every curate function: large enough
# for BLAS to run at full speed, small enough that a 1M-row search stays far below the size of
# its inputs.
BLOCK_BYTES = 64 * 2**20


@dataclass
class KMeansResult(ResultMixin):
    """A k-means clustering.

    Attributes
    ----------
    centroids : (k, d) float64; unit rows when `spherical`.
    labels : (n,) int64 cluster of every row.
    sizes : (k,) int64 rows per cluster (0 for a cluster that stayed empty).
    scores : (n,) float64 cosine to the own centroid (`spherical`) or squared Euclidean distance.
    inertia : sum of squared Euclidean distances to the own centroid (on unit rows if spherical).
    n_iter : centroid updates run.
    spherical, seed : settings used.
    """

    centroids: np.ndarray = array_field(_float_array)
    labels: np.ndarray = array_field(_int_array)
    sizes: np.ndarray = array_field(_int_array)
    scores: np.ndarray = array_field(_float_array)
    inertia: float = 0.0
    n_iter: int = 0
    spherical: bool = False
    seed: int | None = 0

    def members(self, cluster: int) -> np.ndarray:
        """Rows of `cluster`, closest to the centroid first (ties: lower row). For every cluster
        use `all_members` (one sort instead of a scan of all rows per cluster)."""
        idx = np.flatnonzero(self.labels == cluster)
        key = -self.scores[idx] if self.spherical else self.scores[idx]
        return idx[np.argsort(key, kind="stable")]

    def all_members(self) -> list[np.ndarray]:
        """Per cluster 0..k-1, its rows closest to the centroid first (ties: lower row), as
        `members` gives them, from one sort of all rows."""
        key = -self.scores if self.spherical else self.scores
        return label_groups(self.labels, len(self.centroids), key)


def _load_levels(v) -> list[KMeansResult]:
    return [KMeansResult.from_dict(level) for level in v]


@dataclass
class HierarchicalKMeans(ResultMixin):
    """Hierarchical k-means: ``levels[0]`` clusters the data, ``levels[l]`` clusters the centroids
    of ``levels[l - 1]`` (its labels map level-l clusters to level-(l+1) clusters).

    Attributes
    ----------
    levels : one `KMeansResult` per level, bottom (data) first.
    n_clusters, resampling_steps, sample_size : per level, as run.
    sampling : "closest" or "random" (resampling draw).
    """

    levels: list[KMeansResult] = field(default_factory=list, metadata={"load": _load_levels})
    n_clusters: list[int] = field(default_factory=list)
    resampling_steps: list[int] = field(default_factory=list)
    sample_size: list[int] = field(default_factory=list)
    sampling: str = "closest"
    seed: int | None = 0

    def data_labels(self, level: int) -> np.ndarray:
        """(n,) cluster of every data row at `level` (0 = the bottom level)."""
        lab = self.levels[0].labels
        for lv in self.levels[1:level + 1]:
            lab = lv.labels[lab]
        return lab

    def sizes(self, level: int) -> np.ndarray:
        """(k_level,) number of data rows under each cluster of `level`."""
        return np.bincount(self.data_labels(level), minlength=len(self.levels[level].centroids))


def label_groups(labels: np.ndarray, k: int, key: np.ndarray | None = None) -> list[np.ndarray]:
    """Per label 0..k-1, the rows with that label: by increasing `key` if given, ties (and
    without `key`, all) in increasing row order. One stable sort of all rows."""
    order = (np.argsort(labels, kind="stable") if key is None
             else np.lexsort((key, labels)))  # lexsort is stable: equal keys keep row order
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(k)]


# ----------------------------------------------------------------------------------------------
# blocks


def _rows_per_block(k: int, block_bytes: int) -> int:
    return int(max(1, block_bytes // (4 * max(k, 1))))


def _block(x: np.ndarray, inv: np.ndarray | None, s: int, e: int) -> np.ndarray:
    """Rows s:e as float32, scaled to unit norm when `inv` is given."""
    b = x[s:e]
    if inv is None:
        return b
    return (b * inv[s:e, None].astype(np.float32)).astype(np.float32, copy=False)


def _argmax_blocks(block, n: int, c32: np.ndarray, block_bytes: int, *,
                   shift: np.ndarray | None = None,
                   best: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Per row, the centroid with the largest float32 score ``block(s, e) @ c32.T - shift``
    (ties: lower centroid index), and with `best` that score; one (rows, k) float32 buffer of
    `block_bytes` is reused for every block of rows.

    block(s, e) gives rows s:e as float32; c32 is (k, d) float32.
    """
    k = len(c32)
    rows = _rows_per_block(k, block_bytes)
    buf = np.empty((min(rows, n), k), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    top = np.empty(n, dtype=np.float32) if best else None
    for s in range(0, n, rows):
        e = min(n, s + rows)
        sc = buf[:e - s]
        np.matmul(block(s, e), c32.T, out=sc)
        if shift is not None:
            sc -= shift
        lab = sc.argmax(1)
        labels[s:e] = lab
        if top is not None:
            top[s:e] = sc[np.arange(e - s), lab]
    return labels, top


def _assign(x, inv, centroids: np.ndarray, spherical: bool, block_bytes: int) -> np.ndarray:
    """(n,) nearest centroid of every row (float32 products; ties: lower centroid index)."""
    c32 = centroids.astype(np.float32)
    # argmin |x - c|^2 = argmax (x.c - |c|^2 / 2)
    half_sq = None if spherical else (0.5 * np.einsum("ij,ij->i", centroids, centroids)).astype(
        np.float32)
    return _argmax_blocks(lambda s, e: _block(x, inv, s, e), x.shape[0], c32, block_bytes,
                          shift=half_sq)[0]


def _exact_scores(x, inv, centroids, labels, spherical: bool, block_bytes: int) -> np.ndarray:
    """float64 cosine (spherical) or squared distance of every row to its own centroid."""
    n, d = x.shape
    out = np.empty(n, dtype=np.float64)
    rows = max(1, block_bytes // (16 * max(d, 1)))
    for s in range(0, n, rows):
        e = min(n, s + rows)
        b = x[s:e].astype(np.float64)
        c = centroids[labels[s:e]]
        if spherical:
            out[s:e] = np.einsum("ij,ij->i", b, c) * inv[s:e]
        else:
            diff = b - c
            out[s:e] = np.einsum("ij,ij->i", diff, diff)
    return out


def _sums(x, inv, labels, k: int, block_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 per-cluster sums (k, d) of the (unit, if `inv`) rows, and counts (k,)."""
    rows = max(1, block_bytes // (16 * max(x.shape[1], 1)))
    return label_sums(x, labels, k, rows, scale=inv), np.bincount(labels, minlength=k)


def _kmeanspp(x, inv, k: int, rng: np.random.Generator, init_size: int) -> np.ndarray:
    """Greedy k-means++ seeding on a seeded subsample: (k, d) float64 exact rows.

    k-means++ (Arthur & Vassilvitskii 2007) draws each new centre with probability proportional
    to the squared distance to the nearest centre so far; the greedy variant (as in
    scikit-learn) draws 2 + log(k) candidates and keeps the one that lowers the total squared
    distance most, which avoids most of plain k-means++'s unlucky draws. Distances come from
    float32 matrix products (the seeding is sequential in k and memory-bound).
    """
    n = x.shape[0]
    cand = np.sort(rng.choice(n, size=init_size, replace=False)) if init_size < n else None
    pts = (x if cand is None else x[cand]).astype(np.float64)
    if inv is not None:
        pts *= (inv if cand is None else inv[cand])[:, None]
    pts32 = pts.astype(np.float32)
    sq = np.einsum("ij,ij->i", pts, pts)
    m = len(pts)
    trials = 2 + int(np.log(k))

    def dist2(idx: np.ndarray) -> np.ndarray:  # (len(idx), m)
        dots = (pts32[idx] @ pts32.T).astype(np.float64)
        return np.maximum(sq[idx, None] - 2.0 * dots + sq[None, :], 0.0)

    chosen = [int(rng.integers(m))]
    d2 = dist2(np.array(chosen))[0]
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # every candidate sits on a centre already: any row will do
            nxt = int(rng.integers(m))
            chosen.append(nxt)
            continue
        picks = np.searchsorted(np.cumsum(d2), rng.random(trials) * total, side="right")
        picks = np.minimum(picks, m - 1)
        trial_d2 = np.minimum(d2[None, :], dist2(picks))
        best = int(np.argmin(trial_d2.sum(1)))  # ties: the first draw
        chosen.append(int(picks[best]))
        d2 = trial_d2[best]
    return pts[chosen].copy()


def _normalize_rows(c: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(c, axis=1, keepdims=True)
    return np.divide(c, norm, out=np.zeros_like(c), where=norm > 0)


# ----------------------------------------------------------------------------------------------
# public


def assign_clusters(x, centroids, *, spherical: bool = False,
                    block_bytes: int = BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row.

    Parameters
    ----------
    x : (n, d) array
    centroids : (k, d) array
    spherical : cosine similarity instead of Euclidean distance.

    Returns
    -------
    labels : (n,) int64 (ties: the lower centroid index)
    scores : (n,) float64 cosine to (spherical) or squared distance from the own centroid, of
        the rows rounded to float32.
    """
    x = as_features(x, "x", dtype=np.float32)
    c = as_features(centroids, "centroids")
    if c.shape[1] != x.shape[1]:
        raise InputError(f"centroids: have {c.shape[1]} features, x has {x.shape[1]}")
    inv = inverse_norms(x, "x") if spherical else None
    if spherical:
        c = _normalize_rows(c)
    labels = _assign(x, inv, c, spherical, block_bytes)
    return labels, _exact_scores(x, inv, c, labels, spherical, block_bytes)


def _check_k(n_clusters, n: int, name: str = "n_clusters") -> int:
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) \
            or n_clusters < 1:
        raise InputError(f"{name}: expected a positive integer, got {n_clusters!r}")
    if n_clusters > n:
        raise InputError(f"{name}: {n_clusters} clusters for {n} rows; use at most {n}")
    return int(n_clusters)


def _lloyd(x, inv, centroids: np.ndarray, *, spherical: bool, n_iter: int,
           block_bytes: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Lloyd iterations from `centroids`; returns (centroids, labels, updates run)."""
    k = len(centroids)
    labels = _assign(x, inv, centroids, spherical, block_bytes)
    it = 0
    for it in range(1, n_iter + 1):
        sums, counts = _sums(x, inv, labels, k, block_bytes)
        full = counts > 0
        centroids = centroids.copy()
        centroids[full] = sums[full] / counts[full, None]
        empty = np.flatnonzero(~full)
        if empty.size:
            # Move each empty cluster onto one of the points farthest from their centroids.
            sc = _exact_scores(x, inv, centroids, labels, spherical, block_bytes)
            far = np.lexsort((np.arange(len(sc)), sc if spherical else -sc))[:empty.size]
            xs = x[far].astype(np.float64)
            centroids[empty[:len(far)]] = xs * inv[far, None] if inv is not None else xs
        if spherical:
            centroids = _normalize_rows(centroids)
        new = _assign(x, inv, centroids, spherical, block_bytes)
        if np.array_equal(new, labels):
            break
        labels = new
    return centroids, labels, it


def kmeans(x, n_clusters: int, *, spherical: bool = False, n_iter: int = 20,
           init: str | np.ndarray = "k-means++", init_size: int | None = None,
           seed: int | None = 0, block_bytes: int = BLOCK_BYTES) -> KMeansResult:
    """Seeded k-means (Lloyd) of the rows of `x`.

    Parameters
    ----------
    x : (n, d) array (NumPy or torch); float32 internally, sums in float64.
    n_clusters : k, 1 <= k <= n.
    spherical : cluster directions (rows and centroids scaled to unit norm, cosine assignment).
    n_iter : at most this many centroid updates (stops once no label changes).
    init : "k-means++" (seeded, on `init_size` rows), "random" (k distinct rows), or a (k, d)
        array of starting centroids.
    init_size : rows k-means++ draws from; default min(n, max(4096, 8 k)). k-means++ costs
        O(init_size * k * d) and is sequential in k.
    seed : seed of ``numpy.random.default_rng``; the same seed gives the same clustering.
    block_bytes : memory for one block of float32 scores.

    Returns
    -------
    KMeansResult
    """
    x = as_features(x, "x", dtype=np.float32)
    n = x.shape[0]
    k = _check_k(n_clusters, n)
    if n_iter < 0:
        raise InputError(f"n_iter: expected >= 0, got {n_iter}")
    inv = inverse_norms(x, "x") if spherical else None
    rng = np.random.default_rng(seed)
    if isinstance(init, str):
        if init == "k-means++":
            size = min(n, init_size or max(4096, 8 * k))
            if size < k:
                raise InputError(f"init_size: {size} rows cannot seed {k} clusters")
            centroids = _kmeanspp(x, inv, k, rng, size)
        elif init == "random":
            idx = np.sort(rng.choice(n, size=k, replace=False))
            centroids = x[idx].astype(np.float64)
            if inv is not None:
                centroids *= inv[idx, None]
        else:
            raise InputError(f"init: expected 'k-means++', 'random' or an array, got {init!r}")
    else:
        centroids = as_features(init, "init")
        if centroids.shape != (k, x.shape[1]):
            raise InputError(f"init: expected shape {(k, x.shape[1])}, got {centroids.shape}")
        centroids = centroids.copy()
    if spherical:
        centroids = _normalize_rows(centroids)
    centroids, labels, it = _lloyd(x, inv, centroids, spherical=spherical, n_iter=n_iter,
                                   block_bytes=block_bytes)
    return _result(x, inv, centroids, labels, it, spherical, seed, block_bytes)


def _result(x, inv, centroids: np.ndarray, labels: np.ndarray, it: int, spherical: bool,
            seed: int | None, block_bytes: int) -> KMeansResult:
    """The `KMeansResult` of final `centroids` and `labels`: scores, sizes and inertia."""
    scores = _exact_scores(x, inv, centroids, labels, spherical, block_bytes)
    inertia = float(np.sum(2.0 - 2.0 * scores)) if spherical else float(scores.sum())
    return KMeansResult(centroids=centroids, labels=labels,
                        sizes=np.bincount(labels, minlength=len(centroids)).astype(np.int64),
                        scores=scores, inertia=inertia, n_iter=it, spherical=spherical,
                        seed=seed)


def _per_level(value, n_levels: int, name: str) -> list:
    if value is None or isinstance(value, (int, np.integer)):
        return [value] * n_levels
    value = list(value)
    if len(value) != n_levels:
        raise InputError(f"{name}: expected one value per level ({n_levels}), got {len(value)}")
    return value


def _resample(res: KMeansResult, size: int, sampling: str, rng: np.random.Generator) -> np.ndarray:
    """Rows drawn per cluster for a resampling step: the `size` closest, or a random draw."""
    picks = []
    for members in res.all_members():  # closest first
        if sampling == "closest":
            picks.append(members[:size])
        else:
            picks.append(np.sort(rng.choice(members, size=min(size, len(members)),
                                            replace=False)))
    return np.sort(np.concatenate(picks))


def hierarchical_kmeans(x, n_clusters: Sequence[int], *, spherical: bool = False,
                        n_iter: int = 20, resampling_steps: int | Sequence[int] = 10,
                        sample_size: int | Sequence[int | None] | None = None,
                        sampling: str = "closest", init: str = "k-means++",
                        seed: int | None = 0,
                        block_bytes: int = BLOCK_BYTES) -> HierarchicalKMeans:
    """Hierarchical k-means with resampling steps (ssl-data-curation).

    Parameters
    ----------
    x : (n, d) array
    n_clusters : clusters per level, bottom first, e.g. ``(1000, 100, 10)``; each at most the
        number of points of its level (n, then the previous level's k).
    spherical : cosine k-means at every level (the reference uses Euclidean distance).
    n_iter : Lloyd updates per k-means run.
    resampling_steps : per level (or one value for all): resampling steps after the k-means.
    sample_size : per level: points drawn per cluster in a resampling step; default half the
        mean cluster size of the level. A level with sample_size <= 1 is not resampled (as in the
        reference).
    sampling : "closest" (the points nearest each centroid, the reference's default) or "random".
    seed : one ``numpy.random.default_rng(seed)`` drives every level; same seed, same result.

    Returns
    -------
    HierarchicalKMeans
    """
    x = as_features(x, "x", dtype=np.float32)
    ks = [int(k) for k in n_clusters]
    if not ks:
        raise InputError("n_clusters: expected at least one level")
    if sampling not in ("closest", "random"):
        raise InputError(f"sampling: expected 'closest' or 'random', got {sampling!r}")
    steps = _per_level(resampling_steps, len(ks), "resampling_steps")
    sizes = _per_level(sample_size, len(ks), "sample_size")
    rng = np.random.default_rng(seed)
    levels: list[KMeansResult] = []
    used_sizes: list[int] = []
    data = x
    for lv, k in enumerate(ks):
        _check_k(k, len(data), f"n_clusters[{lv}]")
        level_seed = int(rng.integers(2**63))
        res = kmeans(data, k, spherical=spherical, n_iter=n_iter, init=init, seed=level_seed,
                     block_bytes=block_bytes)
        size = sizes[lv] if sizes[lv] is not None else max(1, len(data) // (2 * k))
        used_sizes.append(int(size))
        if size > 1 and int(steps[lv]) > 0:
            inv = inverse_norms(data, "x") if spherical else None  # once for all the steps
            for _ in range(int(steps[lv])):
                picked = _resample(res, int(size), sampling, rng)
                if len(picked) < k:  # empty clusters left too few points to re-fit k centroids
                    break
                warm = kmeans(data[picked], k, spherical=spherical, n_iter=n_iter,
                              init=res.centroids, block_bytes=block_bytes)
                # Every point reassigned to the warm centroids (no centroid update).
                cent = _normalize_rows(warm.centroids) if spherical else warm.centroids.copy()
                labels = _assign(data, inv, cent, spherical, block_bytes)
                res = _result(data, inv, cent, labels, 0, spherical, level_seed, block_bytes)
        levels.append(res)
        data = res.centroids.astype(np.float32)
    return HierarchicalKMeans(levels=levels, n_clusters=ks,
                              resampling_steps=[int(s) for s in steps],
                              sample_size=used_sizes, sampling=sampling, seed=seed)
