"""Exact near-duplicate search in bounded memory, duplicate groups, and which image each keeps.

`near_duplicate_pairs` finds EVERY pair of rows whose cosine similarity exceeds a threshold ``t``,
exactly, without an (n, n) matrix and without comparing most pairs. `deduplicate` groups the
pairs into connected components (transitive-safe, unlike SemDeDup's "drop j if some i < j is
close"), keeps one image per group, and optionally drops every group that touches a reference
set (evaluation-set decontamination, as DINOv2 did at cosine 0.45).

How the search stays exact while skipping most pairs
----------------------------------------------------
Write ``ang(u, v) = arccos(u . v)`` for unit vectors: the angle is a metric on the sphere, so for
any centre ``c`` the triangle inequality gives::

    ang(x, y) >= |ang(x, c) - ang(y, c)|                                        (1)

and ``cos(x, y) > t``  <=>  ``ang(x, y) < alpha := arccos(t)``.

1. Rows are clustered on the sphere (seeded spherical k-means on a subsample, then every row is
   assigned to its most similar centroid ``c_b``). Each row gets its angle to its own centroid,
   and each cluster its radius ``r_b`` = the largest such angle.
2. A pair (x, y) with y in cluster b can only exceed t if, by (1),
   ``ang(x, c_b) < alpha + r_b``. So for cluster b only the rows x passing that test
   (candidate rows, found with one pass of rows x centroids products) are compared with b's
   members. Each cross-cluster pair passes the test for both clusters, so it is searched only
   from the cluster with the larger index. Pairs inside a cluster are searched once (i < j).
3. Inside one comparison, rows and members are sorted by their angle to ``c_b``; a tile of rows
   is compared only with the members whose angle interval is within ``alpha`` of the tile's
   (again (1)), so thick clusters are cut further.
4. Within the surviving tiles, similarities are float32 matrix products over blocks sized from
   a byte budget; every entry above ``t - eps`` is recomputed in float64 and kept if it exceeds
   ``t``. The output therefore equals the float64 all-pairs reference.

Float32 rounding never loses a pair: ``eps = cosine_error_bound(d)`` bounds the gap between a
float32 cosine of the scaled rows and the exact cosine (``gamma_d (1 + 4u)^2 + 8u`` with
``u = 2^-24``, ``gamma_d = d u / (1 - d u)``: the dot-product error for unit vectors, plus the
rounding of the scaling and of the centroid to float32), and every angle used in a bound is an
interval ``[arccos(s + eps), arccos(s - eps)]`` around the computed cosine ``s``. A tile or a
candidate is skipped only when the lower bound of (1) over those intervals is at least
``alpha`` (plus 1e-9 rad for float64 arccos); so a pair with exact cosine above t is always
computed, and always rechecked.

Memory: the rows are read in place (float32; a float64 input is copied once to float32 and kept
for the float64 recheck), plus O(n) per-row numbers (labels, angles, order: ~40 bytes a row),
score blocks of `block_bytes`, and candidate lists of at most 4 * `block_bytes` (more
candidates than that are handled by further passes over groups of clusters).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..._validation import as_features
from ...errors import InputError
from ._neighbors import BLOCK_BYTES, inverse_norms
from ._result import ResultMixin, _float_array, _int_array, _int_arrays, array_field
from .kmeans import kmeans

__all__ = ["KEEP_RULES", "DuplicatePairs", "ReferenceMatches", "DedupResult",
           "near_duplicate_pairs", "reference_matches", "duplicate_groups", "deduplicate",
           "cosine_error_bound"]

KEEP_RULES = ("centroid", "first", "resolution")
_U = 2.0 ** -24          # float32 unit roundoff
_ANGLE_SLACK = 1e-9      # radians: float64 arccos / comparison rounding in the bounds
_OWN_TILE = 256          # rows per tile inside a cluster: small enough for the i < j triangle
_CROSS_TILE = 1024       # rows per tile of candidate rows against a cluster


def cosine_error_bound(d: int) -> float:
    """Bound on |float32 cosine of unit-scaled rows - exact cosine| for `d` features.

    The rows are scaled in float32 by a float32 inverse norm (two roundings per entry, or three
    for a float64 input), so each scaled row is within ``3u + O(u^2)`` of the exact unit vector;
    the float32 dot product of vectors of norm <= 1 + 4u adds at most ``gamma_d (1 + 4u)^2``.
    """
    g = d * _U / (1.0 - d * _U)
    return 1.01 * (g * (1.0 + 4.0 * _U) ** 2 + 8.0 * _U) + 1e-12


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class DuplicatePairs(ResultMixin):
    """Every pair of rows with cosine similarity above `threshold`.

    Attributes
    ----------
    pairs : (p, 2) int64 rows (i, j), i < j, sorted.
    similarities : (p,) float64 exact cosine of each pair.
    threshold : t (pairs have similarity > t).
    n : number of rows searched.
    stats : how much work the pruning saved: ``n_clusters``, ``entries_computed`` (similarities
        computed) against ``all_pairs`` = n (n - 1) / 2, ``candidate_rows`` (row-cluster tests
        passed), ``candidate_passes``, ``rechecked`` (entries recomputed in float64).
    seconds : wall time per phase (kept apart from `stats`, which repeats exactly).
    """

    pairs: np.ndarray = array_field(_int_array)
    similarities: np.ndarray = array_field(_float_array)
    threshold: float = 0.0
    n: int = 0
    stats: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


@dataclass
class ReferenceMatches(ResultMixin):
    """Rows with a reference row above `threshold`: their best reference row and similarity.

    Attributes
    ----------
    rows : (m,) int64 sorted rows of the searched set that match.
    reference : (m,) int64 most similar reference row of each (ties: the lower index).
    similarities : (m,) float64 their cosine similarity.
    threshold : t.
    """

    rows: np.ndarray = array_field(_int_array)
    reference: np.ndarray = array_field(_int_array)
    similarities: np.ndarray = array_field(_float_array)
    threshold: float = 0.0


@dataclass
class DedupResult(ResultMixin):
    """Duplicate groups of a set of images and the ids kept and removed.

    Attributes
    ----------
    n : number of images.
    threshold : cosine similarity above which two images are linked.
    keep : the rule that picked each group's survivor ("centroid", "first" or "resolution").
    max_neighbors : k of the k-NN graph (an image links only its k most similar), or None.
    groups : list of (size,) int64 sorted ids, one per group of two or more images (connected
        components of the links), largest first (ties: smallest first id).
    group_kept : (len(groups),) int64 the id each group keeps, -1 if the group was dropped.
    kept, removed : (.,) int64 sorted ids; together they are 0..n-1.
    pairs, similarities : the links used, (p, 2) int64 with i < j, and their cosines.
    reference_threshold : threshold against the reference set, or None.
    contaminated : (c,) int64 ids with a reference image above `reference_threshold`; every
        component holding one is removed whole.
    contaminated_reference, contaminated_similarity : their best reference id and cosine.
    stats, seconds : search statistics and wall time per phase (see `DuplicatePairs`).
    """

    n: int = 0
    threshold: float = 0.0
    keep: str = "centroid"
    max_neighbors: int | None = None
    groups: list = field(default_factory=list, metadata={"load": _int_arrays})
    group_kept: np.ndarray = array_field(_int_array, default_factory=lambda: np.zeros(0, np.int64))
    kept: np.ndarray = array_field(_int_array, default_factory=lambda: np.zeros(0, np.int64))
    removed: np.ndarray = array_field(_int_array, default_factory=lambda: np.zeros(0, np.int64))
    pairs: np.ndarray = array_field(_int_array, default_factory=lambda: np.zeros((0, 2), np.int64))
    similarities: np.ndarray = array_field(_float_array,
                                           default_factory=lambda: np.zeros(0, np.float64))
    reference_threshold: float | None = None
    contaminated: np.ndarray = array_field(_int_array,
                                           default_factory=lambda: np.zeros(0, np.int64))
    contaminated_reference: np.ndarray = array_field(
        _int_array, default_factory=lambda: np.zeros(0, np.int64))
    contaminated_similarity: np.ndarray = array_field(
        _float_array, default_factory=lambda: np.zeros(0, np.float64))
    stats: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# the clustered index


@dataclass
class _Rows:
    """A set of rows to search with: float32 values, inverse norms, and the exact values."""

    x: np.ndarray        # (n, d) float32, read in place
    exact: np.ndarray    # (n, d) the caller's values (float32 or float64) for the recheck
    inv: np.ndarray      # (n,) float64 1 / norm
    inv32: np.ndarray    # (n,) float32

    def unit(self, idx: np.ndarray) -> np.ndarray:
        """float32 unit rows `idx` (one gather, one float32 scaling)."""
        return self.x[idx] * self.inv32[idx, None]

    def unit_range(self, s: int, e: int) -> np.ndarray:
        return self.x[s:e] * self.inv32[s:e, None]


def _as_rows(x, name: str) -> _Rows:
    exact = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    x32 = as_features(x, name, dtype=np.float32)
    if exact.dtype != np.float64:
        exact = x32
    inv = inverse_norms(exact, name)
    return _Rows(x=x32, exact=exact, inv=inv, inv32=inv.astype(np.float32))


@dataclass
class _Index:
    rows: _Rows
    centroids: np.ndarray   # (k, d) float32 unit (to float32 rounding)
    labels: np.ndarray      # (n,) int64
    order: np.ndarray       # (n,) rows grouped by cluster, each by increasing `lo`
    starts: np.ndarray      # (k + 1,) cluster b is order[starts[b]:starts[b + 1]]
    lo: np.ndarray          # (n,) float64 lower bound of the angle to the own centroid
    hi: np.ndarray          # (n,) float64 upper bound
    radius: np.ndarray      # (k,) float64 max `hi` per cluster (-inf if empty)
    eps: float
    block_bytes: int


def _angles(s: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Angle interval [lo, hi] holding the exact angle for computed cosines `s` (error <= eps)."""
    s = s.astype(np.float64)
    return np.arccos(np.minimum(1.0, s + eps)), np.arccos(np.maximum(-1.0, s - eps))


def _auto_clusters(n: int) -> int:
    return int(max(1, min(n, round(math.sqrt(n)))))


def _build_index(rows: _Rows, n_clusters: int | None, seed: int | None, n_iter: int,
                 block_bytes: int) -> tuple[_Index, dict]:
    n, d = rows.x.shape
    k = _auto_clusters(n) if n_clusters is None else int(n_clusters)
    if not 1 <= k <= n:
        raise InputError(f"n_clusters: expected 1 <= n_clusters <= {n}, got {n_clusters}")
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    # The clustering only decides how well we prune, never what we find: a subsample is enough.
    m = min(n, max(32 * k, 10_000))
    sub = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
    km = kmeans(rows.unit(sub), k, spherical=True, n_iter=n_iter,
                seed=int(rng.integers(2**63)), block_bytes=block_bytes)
    centroids = km.centroids.astype(np.float32)
    t1 = time.perf_counter()
    eps = cosine_error_bound(d)
    labels = np.empty(n, dtype=np.int64)
    own = np.empty(n, dtype=np.float32)
    per = max(1, block_bytes // (4 * k))
    buf = np.empty((min(per, n), k), dtype=np.float32)
    for s in range(0, n, per):
        e = min(n, s + per)
        sc = buf[:e - s]
        np.matmul(rows.unit_range(s, e), centroids.T, out=sc)
        lab = sc.argmax(1)
        labels[s:e] = lab
        own[s:e] = sc[np.arange(e - s), lab]
    lo, hi = _angles(own, eps)
    del own
    order = np.lexsort((lo, labels))
    starts = np.searchsorted(labels[order], np.arange(k + 1))
    radius = np.full(k, -np.inf)
    full = np.flatnonzero(starts[1:] > starts[:-1])
    radius[full] = np.maximum.reduceat(hi[order], starts[full])
    index = _Index(rows=rows, centroids=centroids, labels=labels, order=order, starts=starts,
                   lo=lo, hi=hi, radius=radius, eps=eps, block_bytes=block_bytes)
    return index, {"n_clusters": k, "largest_cluster": int(np.diff(starts).max()),
                   "seconds_kmeans": t1 - t0, "seconds_assign": time.perf_counter() - t1}


def _float32_below(v: float) -> np.float32:
    """The largest float32 <= v (so `s > result` keeps every s > v)."""
    f = np.float32(v)
    return f if float(f) <= v else np.nextafter(f, np.float32(-np.inf))


def _thresholds(index: _Index, alpha: float) -> np.ndarray:
    """Per cluster, a float32 cosine to its centroid at or below which a row cannot reach any
    member within `alpha`: ang(x, c_b) >= alpha + r_b, by (1) (+inf for an empty cluster)."""
    tau = np.full(len(index.radius), np.inf, dtype=np.float32)
    for b, r in enumerate(index.radius):
        if np.isneginf(r):
            continue  # empty cluster: nothing to reach
        reach = alpha + r + _ANGLE_SLACK
        # lo(x) = arccos(min(1, s + eps)) < reach  <=>  s > cos(reach) - eps  (reach < pi)
        tau[b] = -np.inf if reach >= np.pi else _float32_below(math.cos(reach) - index.eps)
    return tau


# ----------------------------------------------------------------------------------------------
# the search


class _Collector:
    """Accumulates candidate entries (row, column, float32 cosine) and counts the work."""

    def __init__(self) -> None:
        self.i: list[np.ndarray] = []
        self.j: list[np.ndarray] = []
        self.s: list[np.ndarray] = []
        self.entries = 0

    def add(self, i: np.ndarray, j: np.ndarray, s: np.ndarray) -> None:
        if len(i):
            self.i.append(i)
            self.j.append(j)
            self.s.append(s)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.i:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self.i).astype(np.int64), np.concatenate(self.j).astype(np.int64)


def _compare(index: _Index, src: _Rows, r_ids: np.ndarray, r_lo: np.ndarray, r_hi: np.ndarray,
             b: int, *, alpha: float, t32: np.float32, own: bool, out: _Collector) -> None:
    """Entries above `t32` between rows `r_ids` of `src` (sorted by `r_lo`) and cluster b.

    `own`: the rows are b's members themselves, in b's order; only column > row is kept.
    Rows and members are gathered and scaled per tile unless the cluster fits `block_bytes`.
    """
    cols = index.order[index.starts[b]:index.starts[b + 1]]
    c_lo = index.lo[cols]
    c_pm = np.maximum.accumulate(index.hi[cols])  # monotone, so "hi > v" starts at a searchsorted
    d = src.x.shape[1]
    budget_rows = max(1, index.block_bytes // (4 * max(len(cols), 1)))
    tile = min(_OWN_TILE if own else _CROSS_TILE, budget_rows)
    cached = index.rows.unit(cols) if 4 * len(cols) * d <= index.block_bytes else None
    nr = len(r_ids)
    for i0 in range(0, nr, tile):
        i1 = min(nr, i0 + tile)
        # (1) over the tile: members with lo >= max(hi) + alpha or hi <= min(lo) - alpha are out.
        j1 = int(np.searchsorted(c_lo, r_hi[i0:i1].max() + alpha + _ANGLE_SLACK, side="left"))
        j0 = int(np.searchsorted(c_pm, r_lo[i0] - alpha - _ANGLE_SLACK, side="right"))
        if own:
            j0 = max(j0, i0 + 1)
        if j1 <= j0:
            continue
        y = cached[j0:j1] if cached is not None else index.rows.unit(cols[j0:j1])
        rows32 = cached[i0:i1] if (own and cached is not None) else src.unit(r_ids[i0:i1])
        sc = rows32 @ y.T
        out.entries += sc.size
        if sc.max() <= t32:
            continue
        ii, jj = np.nonzero(sc > t32)
        if own:
            keep = (jj + j0) > (ii + i0)
            ii, jj = ii[keep], jj[keep]
        out.add(r_ids[ii + i0], cols[jj + j0], sc[ii, jj])


def _scan(index: _Index, rows: _Rows, tau: np.ndarray, b0: int, b1: int,
          row_labels: np.ndarray | None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Candidate (row, cluster, float32 cosine to the centroid) for clusters b0..b1-1.

    With `row_labels` (the rows are the indexed set) only clusters above the row's own are
    kept: a cross-cluster pair is searched from its larger cluster only.
    """
    n = rows.x.shape[0]
    k = b1 - b0
    cent = index.centroids[b0:b1]
    tau = tau[b0:b1]
    per = max(1, index.block_bytes // (4 * k))
    buf = np.empty((min(per, n), k), dtype=np.float32)
    col = np.arange(b0, b1)
    for s in range(0, n, per):
        e = min(n, s + per)
        sc = buf[:e - s]
        np.matmul(rows.unit_range(s, e), cent.T, out=sc)
        mask = sc > tau
        if row_labels is not None:
            mask &= col[None, :] > row_labels[s:e, None]
        r, c = np.nonzero(mask)
        yield r + s, c + b0, sc[r, c]


def _cross(index: _Index, rows: _Rows, row_labels: np.ndarray | None, alpha: float,
           t32: np.float32, out: _Collector, stats: dict) -> None:
    """Entries above t32 between `rows` and members of clusters they can reach (steps 2-4)."""
    k = len(index.centroids)
    tau = _thresholds(index, alpha)
    cap = max(1, 4 * index.block_bytes // 12)  # candidate entries held at once (12 bytes each)

    def process(r: np.ndarray, c: np.ndarray, s: np.ndarray) -> None:
        if len(r) == 0:
            return
        order = np.lexsort((r, c))
        r, c, s = r[order], c[order], s[order]
        bounds = np.flatnonzero(np.r_[True, c[1:] != c[:-1], True])
        for a, z in zip(bounds[:-1], bounds[1:]):
            lo, hi = _angles(s[a:z], index.eps)
            srt = np.argsort(lo, kind="stable")
            _compare(index, rows, r[a:z][srt], lo[srt], hi[srt], int(c[a]), alpha=alpha,
                     t32=t32, own=False, out=out)

    counts = np.zeros(k, dtype=np.int64)
    held: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    total, overflow = 0, False
    for r, c, s in _scan(index, rows, tau, 0, k, row_labels):
        counts += np.bincount(c, minlength=k)
        if not overflow:
            held.append((r.astype(np.int64), c, s))
            total += len(r)
            if total > cap:
                overflow, held = True, []
    stats["candidate_rows"] = stats.get("candidate_rows", 0) + int(counts.sum())
    passes = 1
    if not overflow:
        if held:
            process(*(np.concatenate(a) for a in zip(*held)))
    else:
        # Too many candidates to hold: further passes, each over a run of clusters whose
        # candidates fit (a single cluster over the cap is processed chunk by chunk).
        b0 = 0
        while b0 < k:
            b1, acc = b0 + 1, counts[b0]
            while b1 < k and acc + counts[b1] <= cap:
                acc += counts[b1]
                b1 += 1
            passes += 1
            if acc > cap:  # one cluster alone: stream its candidates
                for r, c, s in _scan(index, rows, tau, b0, b1, row_labels):
                    process(r.astype(np.int64), c, s)
            else:
                got = list(_scan(index, rows, tau, b0, b1, row_labels))
                if got:
                    process(*(np.concatenate(a) for a in zip(*got)))
            b0 = b1
    stats["candidate_passes"] = stats.get("candidate_passes", 0) + passes


def _recheck(a: _Rows, b: _Rows, i: np.ndarray, j: np.ndarray, t: float,
             chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """float64 cosine of row pairs (a[i], b[j]); returns (mask of cosine > t, cosines)."""
    cos = np.empty(len(i), dtype=np.float64)
    for s in range(0, len(i), chunk):
        ai = a.exact[i[s:s + chunk]].astype(np.float64)
        bj = b.exact[j[s:s + chunk]].astype(np.float64)
        cos[s:s + chunk] = np.einsum("ij,ij->i", ai, bj) * a.inv[i[s:s + chunk]] \
            * b.inv[j[s:s + chunk]]
    return cos > t, cos


def _check_threshold(t, name: str = "threshold") -> float:
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a number in (-1, 1), got {t!r}") from None
    if not -1.0 < t < 1.0:
        raise InputError(f"{name}: expected a cosine similarity in (-1, 1), got {t}")
    return t


def _search(index: _Index, t: float, stats: dict) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) of the indexed rows with exact cosine > t, sorted, and their cosines."""
    rows = index.rows
    alpha = math.acos(t)
    t32 = _float32_below(t - index.eps)
    out = _Collector()
    t0 = time.perf_counter()
    for b in range(len(index.centroids)):
        members = index.order[index.starts[b]:index.starts[b + 1]]
        if len(members) > 1:
            _compare(index, rows, members, index.lo[members], index.hi[members], b,
                     alpha=alpha, t32=t32, own=True, out=out)
    t1 = time.perf_counter()
    _cross(index, rows, index.labels, alpha, t32, out, stats)
    t2 = time.perf_counter()
    i, j = out.arrays()
    keep, cos = _recheck(rows, rows, i, j, t)
    i, j, cos = i[keep], j[keep], cos[keep]
    lo_, hi_ = np.minimum(i, j), np.maximum(i, j)
    order = np.lexsort((hi_, lo_))
    stats.update(entries_computed=int(out.entries), rechecked=int(len(keep)),
                 seconds_within=t1 - t0, seconds_across=t2 - t1,
                 seconds_recheck=time.perf_counter() - t2)
    return np.stack([lo_[order], hi_[order]], axis=1), cos[order]


# ----------------------------------------------------------------------------------------------
# public


def _split_timings(stats: dict) -> tuple[dict, dict]:
    """(counts, {phase: seconds}): timings vary run to run, counts do not."""
    sec = {k[len("seconds_"):]: v for k, v in stats.items() if k.startswith("seconds_")}
    return {k: v for k, v in stats.items() if not k.startswith("seconds_")}, sec


def _prepare(x, n_clusters, seed, n_iter, block_bytes):
    rows = _as_rows(x, "x")
    if block_bytes < 1 << 16:
        raise InputError(f"block_bytes: expected at least 65536, got {block_bytes}")
    index, stats = _build_index(rows, n_clusters, seed, n_iter, block_bytes)
    n = rows.x.shape[0]
    stats["all_pairs"] = n * (n - 1) // 2
    return index, stats


def near_duplicate_pairs(x, threshold: float, *, n_clusters: int | None = None,
                         seed: int | None = 0, n_iter: int = 10,
                         block_bytes: int = BLOCK_BYTES) -> DuplicatePairs:
    """Every pair of rows of `x` with cosine similarity above `threshold`, exactly.

    Parameters
    ----------
    x : (n, d) array of embeddings (NumPy or torch; float32 is read in place).
    threshold : t in (-1, 1); pairs with cosine > t are returned.
    n_clusters : clusters used for pruning (default round(sqrt(n))). It changes the speed, never
        the answer.
    seed : seed of the pruning clustering (the answer does not depend on it).
    n_iter : k-means updates of the pruning clustering.
    block_bytes : memory for one block of float32 similarities.

    Returns
    -------
    DuplicatePairs
    """
    t = _check_threshold(threshold)
    index, stats = _prepare(x, n_clusters, seed, n_iter, block_bytes)
    pairs, sims = _search(index, t, stats)
    stats, seconds = _split_timings(stats)
    return DuplicatePairs(pairs=pairs, similarities=sims, threshold=t, n=len(index.labels),
                          stats=stats, seconds=seconds)


def _reference(index: _Index, reference, t: float, stats: dict) -> ReferenceMatches:
    ref = _as_rows(reference, "reference")
    if ref.x.shape[1] != index.rows.x.shape[1]:
        raise InputError(f"reference: has {ref.x.shape[1]} features, x has "
                         f"{index.rows.x.shape[1]}")
    alpha = math.acos(t)
    out = _Collector()
    _cross(index, ref, None, alpha, _float32_below(t - index.eps), out, stats)
    stats["entries_computed"] = stats.get("entries_computed", 0) + out.entries
    r, c = out.arrays()  # (reference row, indexed row)
    keep, cos = _recheck(ref, index.rows, r, c, t)
    r, c, cos = r[keep], c[keep], cos[keep]
    # Best reference per row: highest cosine, then the lower reference index.
    order = np.lexsort((r, -cos, c))
    r, c, cos = r[order], c[order], cos[order]
    first = np.flatnonzero(np.r_[True, c[1:] != c[:-1]]) if len(c) else np.zeros(0, np.int64)
    return ReferenceMatches(rows=c[first], reference=r[first], similarities=cos[first],
                            threshold=t)


def reference_matches(x, reference, threshold: float, *, n_clusters: int | None = None,
                      seed: int | None = 0, n_iter: int = 10,
                      block_bytes: int = BLOCK_BYTES) -> ReferenceMatches:
    """Rows of `x` with a row of `reference` above `threshold` (cosine), exactly.

    Parameters
    ----------
    x : (n, d) embeddings searched (clustered for pruning, as in `near_duplicate_pairs`).
    reference : (m, d) embeddings of the reference set (e.g. an evaluation set).
    threshold : t in (-1, 1).

    Returns
    -------
    ReferenceMatches
    """
    t = _check_threshold(threshold)
    index, stats = _prepare(x, n_clusters, seed, n_iter, block_bytes)
    return _reference(index, reference, t, stats)


def _knn_restrict(pairs: np.ndarray, sims: np.ndarray, k: int) -> np.ndarray:
    """Mask of the links kept in a k-NN graph: j among i's k most similar, or i among j's.

    Above the threshold, a row's k most similar rows overall are its k most similar linked
    rows (every linked row beats every unlinked one), so the k-NN graph thresholded at t is
    exactly this restriction of the threshold graph. Ties: the lower index ranks first.
    """
    p = len(pairs)
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    sim = np.concatenate([sims, sims])
    edge = np.concatenate([np.arange(p), np.arange(p)])
    order = np.lexsort((dst, -sim, src))
    s_sorted = src[order]
    first = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    rank = np.arange(2 * p) - np.repeat(first, np.diff(np.r_[first, 2 * p]))
    keep = np.zeros(p, dtype=bool)
    keep[edge[order][rank < k]] = True
    return keep


def duplicate_groups(n: int, pairs) -> list[np.ndarray]:
    """Connected components of the graph on n nodes with edges `pairs` (p, 2), size >= 2.

    Returns sorted id arrays, largest group first (ties: the smaller first id).
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        return []
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])),
                       shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    order = np.argsort(comp, kind="stable")  # ids ascending inside each component
    bounds = np.flatnonzero(np.r_[True, comp[order][1:] != comp[order][:-1], True])
    groups = [order[a:z] for a, z in zip(bounds[:-1], bounds[1:]) if z - a > 1]
    groups.sort(key=lambda g: (-len(g), int(g[0])))
    return groups


def _survivor(rule: str, group: np.ndarray, rows: _Rows, resolution: np.ndarray | None) -> int:
    if rule == "first":
        return int(group[0])
    if rule == "resolution":
        return int(group[np.argmax(resolution[group])])  # argmax: the first (lowest id) of ties
    u = rows.exact[group].astype(np.float64) * rows.inv[group, None]
    return int(group[np.argmax(u @ u.mean(0))])


def deduplicate(x, threshold: float, *, keep: str = "centroid", resolution=None,
                max_neighbors: int | None = None, reference=None,
                reference_threshold: float | None = None, n_clusters: int | None = None,
                seed: int | None = 0, n_iter: int = 10,
                block_bytes: int = BLOCK_BYTES) -> DedupResult:
    """Group near-duplicate images and keep one per group (DINOv2's deduplication, exact).

    Parameters
    ----------
    x : (n, d) embeddings, one row per image, in source order.
    threshold : images with cosine similarity > threshold are linked; groups are the connected
        components of the links.
    keep : which image a group keeps: "centroid" (most similar to the mean of the group's unit
        embeddings), "first" (lowest id, i.e. first in source order) or "resolution" (highest
        `resolution`; ties: the first).
    resolution : (n,) pixel counts or (n, 2) image sizes, for ``keep="resolution"``.
    max_neighbors : link an image only to its k most similar images (DINOv2: k = 64), i.e. the
        k-NN graph with edges above `threshold`, made undirected. None links every pair.
    reference : (m, d) embeddings of a reference set (e.g. evaluation images): every group (or
        single image) holding an image with a reference image above `reference_threshold` is
        removed whole.
    reference_threshold : default `threshold` (DINOv2 used 0.45 against its evaluation sets).
    n_clusters, seed, n_iter, block_bytes : the pruning search (see `near_duplicate_pairs`).

    Returns
    -------
    DedupResult
    """
    t = _check_threshold(threshold)
    if keep not in KEEP_RULES:
        raise InputError(f"keep: expected one of {KEEP_RULES}, got {keep!r}")
    if max_neighbors is not None and (isinstance(max_neighbors, bool) or
                                      not isinstance(max_neighbors, (int, np.integer))
                                      or max_neighbors < 1):
        raise InputError(f"max_neighbors: expected a positive integer or None, "
                         f"got {max_neighbors!r}")
    index, stats = _prepare(x, n_clusters, seed, n_iter, block_bytes)
    n = len(index.labels)
    res = None
    if keep == "resolution":
        if resolution is None:
            raise InputError("resolution: keep='resolution' needs the image sizes "
                             "(n,) pixel counts or (n, 2) widths and heights")
        res = np.asarray(resolution, dtype=np.float64)
        if res.ndim == 2 and res.shape[1] == 2:
            res = res[:, 0] * res[:, 1]
        if res.shape != (n,):
            raise InputError(f"resolution: expected shape ({n},) or ({n}, 2), "
                             f"got {np.shape(resolution)}")
    pairs, sims = _search(index, t, stats)
    if max_neighbors is not None and len(pairs):
        k_mask = _knn_restrict(pairs, sims, int(max_neighbors))
        pairs, sims = pairs[k_mask], sims[k_mask]
    groups = duplicate_groups(n, pairs)

    t_ref = None
    matches = ReferenceMatches(rows=np.zeros(0, np.int64), reference=np.zeros(0, np.int64),
                               similarities=np.zeros(0), threshold=0.0)
    if reference is not None:
        t_ref = _check_threshold(t if reference_threshold is None else reference_threshold,
                                 "reference_threshold")
        matches = _reference(index, reference, t_ref, stats)
    elif reference_threshold is not None:
        raise InputError("reference_threshold: given without a reference set")

    dirty = np.zeros(n, dtype=bool)
    dirty[matches.rows] = True
    removed = dirty.copy()  # a contaminated image goes, and so does its whole group
    group_kept = np.empty(len(groups), dtype=np.int64)
    for g, members in enumerate(groups):
        if dirty[members].any():
            removed[members] = True
            group_kept[g] = -1
        else:
            group_kept[g] = _survivor(keep, members, index.rows, res)
            removed[members] = True
            removed[group_kept[g]] = False
    return DedupResult(n=n, threshold=t, keep=keep,
                       max_neighbors=None if max_neighbors is None else int(max_neighbors),
                       groups=groups, group_kept=group_kept, kept=np.flatnonzero(~removed),
                       removed=np.flatnonzero(removed), pairs=pairs, similarities=sims,
                       reference_threshold=t_ref, contaminated=matches.rows,
                       contaminated_reference=matches.reference,
                       contaminated_similarity=matches.similarities,
                       **dict(zip(("stats", "seconds"), _split_timings(stats))))
