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
   assigned to its most similar centroid ``c_b``). Each row gets its angle to its own centroid;
   each cluster its radius ``r_b`` (the largest such angle) and an order of its members by
   increasing angle.
2. Pairs inside a cluster: a tile of members (in that order) is compared only with the members
   after it whose angle to the centroid is below the tile's largest plus ``alpha``, by (1) (a
   contiguous range of the order); each pair once (i < j).
3. Pairs across clusters: one pass of rows x centroids products finds, for every cluster b, the
   rows x of clusters below b with ``ang(x, c_b) < alpha + r_b``; by (1) no other row can have
   a partner in b (each cross pair passes the test for both of its clusters, so it is searched
   from the larger one only). Those candidate rows, sorted by their angle to ``c_b``, are
   compared tile by tile with the members whose angle lies within ``alpha`` of the tile's
   (again a contiguous range).
4. Similarities are float32 matrix products of those blocks (sized from a byte budget); every
   entry above ``t - eps`` is recomputed in float64 from the caller's rows and kept if it
   exceeds ``t``. The output therefore equals the float64 all-pairs reference.

Rounding never loses a pair. ``eps = cosine_error_bound(d)`` bounds the gap between a float32
cosine of unit-scaled rows and the exact cosine: the float32 dot-product error
``gamma_d |a||b|`` (``gamma_d = d u / (1 - d u)``, ``u = 2^-24``) plus the distance of each
scaled row, and of each float32 centroid, from the exact unit vector. Every angle in a bound is
the interval ``[arccos(s + eps), arccos(s - eps)]`` around a computed cosine ``s``, and a row
or member is skipped only when the lower bound of (1) over those intervals is at least
``alpha`` (plus 1e-9 rad for float64 ``arccos``). So a pair with exact cosine above t is always
computed, kept (its float32 cosine is above ``t - eps``) and decided in float64.

Memory: the caller's rows are read in place (a float64 input is also copied once to float32),
plus O(n) per-row numbers (labels, angles, order: ~50 bytes a row), score blocks of
`block_bytes`, and a candidate table of at most 4 * `block_bytes` (8 bytes a candidate row;
more candidates than that are handled by further scans over runs of clusters). Rows are
gathered and scaled tile by tile; nothing of size n x n or n x d is allocated.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..._validation import as_features, inverse_norms
from ...errors import InputError
from ._result import ResultMixin, _float_array, _int_array, _int_arrays, array_field
from .clustering import BLOCK_BYTES, _argmax_blocks, kmeans

__all__ = ["KEEP_RULES", "DuplicatePairs", "ReferenceMatches", "DedupResult",
           "near_duplicate_pairs", "reference_matches", "duplicate_groups", "deduplicate",
           "cosine_error_bound"]

KEEP_RULES = ("centroid", "first", "resolution")
_U = 2.0 ** -24          # float32 unit roundoff
_ANGLE_SLACK = 1e-9      # radians: float64 arccos / comparison rounding in the bounds
_TILE = 256              # rows per tile inside a cluster: small enough for the i < j triangle
_CROSS_TILE = 1024       # candidate rows per tile against a cluster


def cosine_error_bound(d: int) -> float:
    """Bound on |float32 cosine of unit-scaled rows - exact cosine| for `d` features.

    Each row is scaled in float32 by a float32 inverse norm (two roundings per entry, three for
    a float64 input), so it lies within ``e = 3u + O(u^2)`` of the exact unit vector
    (``u = 2^-24``); then ``|a . b - x . y| <= 2e + e^2`` and the float32 dot product adds at most
    ``gamma_d |a| |b|``, ``gamma_d = d u / (1 - d u)``. Centroids are float32 roundings of unit
    vectors, within ``u``, so the same bound covers a row . centroid product.
    """
    e = 3.0 * _U + 3.0 * _U ** 2
    g = d * _U / (1.0 - d * _U)
    return 1.01 * (g * (1.0 + e) ** 2 + 2.0 * e + e * e) + 1e-12


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
        passed), ``rechecked`` (entries recomputed in float64).
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
    labels: np.ndarray      # (n,) int64 cluster of every row
    order: np.ndarray       # (n,) sorted position -> row: by cluster, then increasing angle
    starts: np.ndarray      # (k + 1,) cluster b holds sorted positions starts[b]:starts[b + 1]
    lo: np.ndarray          # (n,) float64, sorted order: lower bound of the angle to the centroid
    hi: np.ndarray          # (n,) float64, sorted order: upper bound
    key_lo: np.ndarray      # (n,) 4 * cluster + lo: increasing over all sorted positions
    key_hi: np.ndarray      # (n,) 4 * cluster + running max of hi in the cluster: increasing
    radius: np.ndarray      # (k,) float64 max `hi` per cluster (-inf if empty)
    eps: float              # error bound of a float32 cosine of unit-scaled rows
    block_bytes: int

    slack: float            # radians added to every bound: arccos and key rounding

    def members(self, j0: int, j1: int) -> np.ndarray:
        """float32 unit rows of sorted positions j0:j1."""
        return self.rows.unit(self.order[j0:j1])


def _angles(s: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Angle interval [lo, hi] holding the exact angle for computed cosines `s` (error <= eps)."""
    s = s.astype(np.float64)
    return np.arccos(np.minimum(1.0, s + eps)), np.arccos(np.maximum(-1.0, s - eps))


def _auto_clusters(n: int) -> int:
    return int(max(1, min(n, round(math.sqrt(n)))))


def _pruning_centroids(sub: np.ndarray, k: int, alpha: float, rng: np.random.Generator,
                       n_iter: int, block_bytes: int, max_fraction: float = 0.1,
                       max_growth: int = 8) -> np.ndarray:
    """Spherical k-means centroids (float32) of a subsample, refined for pruning.

    A cluster that swallowed several natural clusters has a wide radius, so by (1) a large
    share of all rows can reach it and the search degrades towards all pairs. On the
    subsample, every cluster that a share above `max_fraction` of the rows could reach gets
    three more centroids (seeded draws of its members) and one global k-means update follows,
    until no such cluster is left, k has grown `max_growth`-fold, or a round no longer cuts the
    estimated work (sum over clusters of rows in reach x members) by a quarter (then it is
    undone: at low thresholds every cluster is in reach of most rows, whatever its size).
    The estimate only steers the speed: any centroids give the exact answer.
    """
    km = kmeans(sub, k, spherical=True, n_iter=n_iter, seed=int(rng.integers(2**63)),
                block_bytes=block_bytes)
    cent = km.centroids
    prev, prev_total = None, None
    for _ in range(8):
        c32 = cent.astype(np.float32)
        kk = len(c32)
        per = max(1, block_bytes // (4 * kk))
        lab, own = _argmax_blocks(lambda s, e: sub[s:e], len(sub), c32, block_bytes, best=True)
        radius = np.zeros(kk)
        np.maximum.at(radius, lab, np.arccos(np.clip(own.astype(np.float64), -1, 1)))
        tau = np.cos(np.minimum(alpha + radius, np.pi)).astype(np.float32)
        reach = np.zeros(kk, dtype=np.int64)
        for s in range(0, len(sub), per):
            reach += (sub[s:s + per] @ c32.T > tau).sum(0)
        sizes = np.bincount(lab, minlength=kk)
        total = float(reach @ sizes)  # pairs the search would compute, roughly
        if prev_total is not None and total > 0.75 * prev_total:
            cent = prev  # splitting stopped paying
            break
        prev, prev_total = cent, total
        wide = np.flatnonzero((reach > max_fraction * len(sub)) & (sizes >= 8))
        if not len(wide) or kk >= max_growth * k:
            break
        wide = wide[np.argsort(-reach[wide], kind="stable")][:(max_growth * k - kk) // 3]
        if not len(wide):
            break
        extra = [sub[rng.choice(np.flatnonzero(lab == b), 3, replace=False)] for b in wide]
        start = np.vstack([cent] + extra).astype(np.float64)
        cent = kmeans(sub, len(start), spherical=True, n_iter=1, init=start,
                      block_bytes=block_bytes).centroids
    return cent.astype(np.float32)


def _build_index(rows: _Rows, n_clusters: int | None, seed: int | None, n_iter: int,
                 block_bytes: int, threshold: float) -> tuple[_Index, dict]:
    n, d = rows.x.shape
    k = _auto_clusters(n) if n_clusters is None else int(n_clusters)
    if not 1 <= k <= n:
        raise InputError(f"n_clusters: expected 1 <= n_clusters <= {n}, got {n_clusters}")
    alpha = math.acos(threshold)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    # The clustering only decides how well we prune, never what we find: a subsample is enough.
    m = min(n, max(32 * k, 50_000))
    sub = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
    centroids = _pruning_centroids(rows.unit(sub), k, alpha, rng, n_iter, block_bytes)
    k_asked, k = k, len(centroids)
    t1 = time.perf_counter()
    eps32 = cosine_error_bound(d)
    labels, own = _argmax_blocks(rows.unit_range, n, centroids, block_bytes, best=True)
    lo, hi = _angles(own, eps32)
    del own
    order = np.lexsort((lo, labels))
    lo, hi = lo[order], hi[order]
    lab_s = labels[order].astype(np.float64)
    starts = np.searchsorted(lab_s, np.arange(k + 1))
    radius = np.full(k, -np.inf)
    full = np.flatnonzero(starts[1:] > starts[:-1])
    radius[full] = np.maximum.reduceat(hi, starts[full])
    # Angles are in [0, pi] < 4, so 4 * cluster + angle increases across clusters: one global
    # searchsorted finds a range inside any cluster (the running max keeps `hi` monotone).
    key_lo = 4.0 * lab_s + lo
    key_hi = np.maximum.accumulate(4.0 * lab_s + hi)
    del lab_s
    # The keys 4 * cluster + angle are rounded to ~ 4k * 2^-52: widen every bound by that too.
    slack = _ANGLE_SLACK + 16.0 * k * np.finfo(np.float64).eps
    index = _Index(rows=rows, centroids=centroids, labels=labels, order=order, starts=starts,
                   lo=lo, hi=hi, key_lo=key_lo, key_hi=key_hi, radius=radius, eps=eps32,
                   block_bytes=block_bytes, slack=slack)
    return index, {"n_clusters": k, "n_clusters_asked": k_asked,
                   "largest_cluster": int(np.diff(starts).max()),
                   "seconds_kmeans": t1 - t0, "seconds_assign": time.perf_counter() - t1}


def _float32_below(v: float) -> np.float32:
    """The largest float32 <= v (so `s > result` keeps every s > v)."""
    f = np.float32(v)
    return f if float(f) <= v else np.nextafter(f, np.float32(-np.inf))


def _thresholds(index: _Index, alpha: float, eps: float) -> np.ndarray:
    """Per cluster, a float32 cosine to its centroid at or below which a row (cosines computed
    with error <= eps) cannot reach any member within `alpha`: ang(x, c_b) >= alpha + r_b,
    by (1). +inf for an empty cluster."""
    tau = np.full(len(index.radius), np.inf, dtype=np.float32)
    for b, r in enumerate(index.radius):
        if np.isneginf(r):
            continue  # empty cluster: nothing to reach
        reach = alpha + r + index.slack
        # lo(x) = arccos(min(1, s + eps)) < reach  <=>  s > cos(reach) - eps  (reach < pi)
        tau[b] = -np.inf if reach >= np.pi else _float32_below(math.cos(reach) - eps)
    return tau


# ----------------------------------------------------------------------------------------------
# the search


class _Collector:
    """Accumulates candidate entries (row, row) above t - eps and counts the work."""

    def __init__(self) -> None:
        self.i: list[np.ndarray] = []
        self.j: list[np.ndarray] = []
        self.entries = 0

    def add(self, i: np.ndarray, j: np.ndarray) -> None:
        if len(i):
            self.i.append(np.asarray(i, dtype=np.int64))
            self.j.append(np.asarray(j, dtype=np.int64))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.i:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self.i), np.concatenate(self.j)


def _within(index: _Index, b: int, alpha: float, t_lo: np.float32, out: _Collector) -> None:
    """Pairs inside cluster b, each once (i < j in sorted order)."""
    s0, s1 = int(index.starts[b]), int(index.starts[b + 1])
    n_b = s1 - s0
    d = index.rows.x.shape[1]
    members = index.members(s0, s1) if 4 * n_b * d <= index.block_bytes else None
    hi = index.hi[s0:s1]
    for i0 in range(0, n_b - 1, _TILE):
        i1 = min(n_b, i0 + _TILE)
        # (1): members with lo >= max(hi) + alpha are out of reach. (The other side,
        # hi <= min(lo) - alpha, only holds for members before the tile: i < j excludes them.)
        j1 = int(np.searchsorted(index.key_lo, 4.0 * b + hi[i0:i1].max() + alpha + index.slack,
                                 side="left"))
        j0, j1 = s0 + i0 + 1, min(j1, s1)
        if j1 <= j0:
            continue
        if members is not None:
            rows32, cols = members[i0:i1], members[j0 - s0:j1 - s0]
        else:
            rows32, cols = index.members(s0 + i0, s0 + i1), index.members(j0, j1)
        sc = rows32 @ cols.T
        out.entries += sc.size
        if sc.max() <= t_lo:
            continue
        ii, jj = np.nonzero(sc > t_lo)
        keep = jj + j0 > ii + i0 + s0
        out.add(index.order[ii[keep] + i0 + s0], index.order[jj[keep] + j0])


def _scan(index: _Index, blocks, tau: np.ndarray, b0: int, b1: int, restrict: bool):
    """Candidate (row id, cluster, cosine to its centroid) for clusters b0..b1-1 (step 3).

    `blocks` yields (row ids, float32 unit rows, labels or None). With `restrict` (the rows are
    the indexed set) only clusters above the row's own are kept: a cross-cluster pair is
    searched from its smaller cluster only.
    """
    cent = index.centroids[b0:b1]
    tau = tau[b0:b1]
    for ids, rows32, labels in blocks():
        sc = rows32 @ cent.T
        r, c = np.nonzero(sc > tau)
        if restrict:
            keep = c + b0 > labels[r]
            r, c = r[keep], c[keep]
        order = np.argsort(c, kind="stable")  # by cluster, rows ascending within each
        r, c = r[order], c[order]
        yield ids[r], c + b0, sc[r, c]


def _across(index: _Index, blocks, gather, alpha: float, tau: np.ndarray, eps_scan: float,
            t_lo: np.float32, restrict: bool, out: _Collector) -> int:
    """Pairs between scanned rows and the members of clusters they can reach (step 3).

    A first scan counts the candidate rows of every cluster; then runs of clusters whose
    candidates fit the budget are scanned again and the candidates written into one table
    (int32 row id, float32 cosine: 8 bytes each) grouped by cluster. Each cluster then compares
    its candidates, sorted by angle to its centroid, tile by tile with the members in range.
    Returns the number of (row, cluster) reach tests passed.
    """
    k = len(index.centroids)
    cap = max(1, 4 * index.block_bytes // 8)  # candidate entries held at once
    counts = np.zeros(k, dtype=np.int64)
    for _, c, _ in _scan(index, blocks, tau, 0, k, restrict):
        counts += np.bincount(c, minlength=k)
    b0 = 0
    while b0 < k:
        b1, acc = b0 + 1, int(counts[b0])
        while b1 < k and acc + counts[b1] <= cap:
            acc += int(counts[b1])
            b1 += 1
        if acc == 0:
            b0 = b1
            continue
        if acc > cap:  # one cluster alone over the budget: compare its candidates as they come
            for r, _, sc in _scan(index, blocks, tau, b0, b1, restrict):
                if len(r):
                    _reach(index, b0, r, sc, gather, alpha, eps_scan, t_lo, out)
            b0 = b1
            continue
        offsets = np.zeros(b1 - b0 + 1, dtype=np.int64)
        np.cumsum(counts[b0:b1], out=offsets[1:])
        cand_r = np.empty(acc, dtype=np.int32 if len(index.order) < 2**31 else np.int64)
        cand_s = np.empty(acc, dtype=np.float32)
        ptr = offsets[:-1].copy()
        for r, c, sc in _scan(index, blocks, tau, b0, b1, restrict):
            if not len(r):
                continue
            c = c - b0  # ascending (see _scan): each cluster's rows are one run
            first = np.searchsorted(c, np.arange(b1 - b0))
            pos = ptr[c] + (np.arange(len(c)) - first[c])
            cand_r[pos], cand_s[pos] = r, sc
            ptr += np.bincount(c, minlength=b1 - b0)
        for b in range(b0, b1):
            lo_, hi_ = offsets[b - b0], offsets[b - b0 + 1]
            if hi_ > lo_:
                _reach(index, b, cand_r[lo_:hi_], cand_s[lo_:hi_], gather, alpha, eps_scan, t_lo,
                       out)
        del cand_r, cand_s
        b0 = b1
    return int(counts.sum())


def _reach(index: _Index, b: int, ids: np.ndarray, s_b: np.ndarray, gather, alpha: float,
           eps_scan: float, t_lo: np.float32, out: _Collector) -> None:
    """Compare candidate rows `ids` (cosine `s_b` to c_b) with the members of b in range."""
    srt = np.argsort(-s_b, kind="stable")  # increasing angle to c_b
    ids = ids[srt].astype(np.int64)
    lo_x, hi_x = _angles(s_b[srt], eps_scan)
    s0, s1 = int(index.starts[b]), int(index.starts[b + 1])
    d = index.rows.x.shape[1]
    members = index.members(s0, s1) if 4 * (s1 - s0) * d <= index.block_bytes else None
    tile = max(1, min(_CROSS_TILE, index.block_bytes // (4 * max(s1 - s0, 1))))
    for i0 in range(0, len(ids), tile):
        i1 = min(len(ids), i0 + tile)
        # (1): members with hi <= min(lo) - alpha or lo >= max(hi) + alpha are out of reach.
        j0 = int(np.searchsorted(index.key_hi, 4.0 * b + lo_x[i0] - alpha - index.slack,
                                 side="right"))
        j1 = int(np.searchsorted(index.key_lo, 4.0 * b + hi_x[i0:i1].max() + alpha
                                 + index.slack, side="left"))
        j0, j1 = max(j0, s0), min(j1, s1)
        if j1 <= j0:
            continue
        cols = members[j0 - s0:j1 - s0] if members is not None else index.members(j0, j1)
        tile_ids = np.sort(ids[i0:i1])  # gathered in memory order: the tile is a set
        sc = gather(tile_ids) @ cols.T
        out.entries += sc.size
        if sc.max() <= t_lo:
            continue
        ii, jj = np.nonzero(sc > t_lo)
        out.add(tile_ids[ii], index.order[j0 + jj])


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
    t_lo = _float32_below(t - index.eps)
    tau = _thresholds(index, alpha, index.eps)
    out = _Collector()
    n, d = rows.x.shape
    k = len(index.centroids)
    per = max(1, index.block_bytes // (4 * max(k, d)))

    def blocks():  # row ids, their float32 unit rows, their clusters
        for s in range(0, n, per):
            e = min(n, s + per)
            yield np.arange(s, e), rows.unit_range(s, e), index.labels[s:e]

    t0 = time.perf_counter()
    for a in range(k):
        if index.starts[a + 1] - index.starts[a] > 1:
            _within(index, a, alpha, t_lo, out)
    t1 = time.perf_counter()
    tested = _across(index, blocks, rows.unit, alpha, tau, index.eps, t_lo, True, out)
    t2 = time.perf_counter()
    i, j = out.arrays()
    keep, cos = _recheck(rows, rows, i, j, t)
    i, j, cos = i[keep], j[keep], cos[keep]
    lo_, hi_ = np.minimum(i, j), np.maximum(i, j)
    order = np.lexsort((hi_, lo_))
    stats.update(entries_computed=int(out.entries), candidate_rows=tested,
                 rechecked=int(len(keep)), seconds_within=t1 - t0, seconds_across=t2 - t1,
                 seconds_recheck=time.perf_counter() - t2)
    return np.stack([lo_[order], hi_[order]], axis=1), cos[order]


def _split_timings(stats: dict) -> tuple[dict, dict]:
    """(counts, {phase: seconds}): timings vary run to run, counts do not."""
    sec = {k[len("seconds_"):]: v for k, v in stats.items() if k.startswith("seconds_")}
    return {k: v for k, v in stats.items() if not k.startswith("seconds_")}, sec


def _prepare(x, n_clusters, seed, n_iter, block_bytes, threshold):
    rows = _as_rows(x, "x")
    if block_bytes < 1 << 16:
        raise InputError(f"block_bytes: expected at least 65536, got {block_bytes}")
    index, stats = _build_index(rows, n_clusters, seed, n_iter, block_bytes, threshold)
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
    n_clusters : clusters used for pruning (default round(sqrt(n))); clusters that too many
        rows could reach (wider than the natural clusters) are split, up to 4x as many. It
        changes the speed, never the answer.
    seed : seed of the pruning clustering (the answer does not depend on it).
    n_iter : k-means updates of the pruning clustering.
    block_bytes : memory for one block of float32 similarities.

    Returns
    -------
    DuplicatePairs
    """
    t = _check_threshold(threshold)
    index, stats = _prepare(x, n_clusters, seed, n_iter, block_bytes, t)
    pairs, sims = _search(index, t, stats)
    stats, seconds = _split_timings(stats)
    return DuplicatePairs(pairs=pairs, similarities=sims, threshold=t, n=len(index.labels),
                          stats=stats, seconds=seconds)


def _reference(index: _Index, reference, t: float, stats: dict) -> ReferenceMatches:
    ref = _as_rows(reference, "reference")
    m, d = ref.x.shape
    if d != index.rows.x.shape[1]:
        raise InputError(f"reference: has {d} features, x has {index.rows.x.shape[1]}")
    alpha = math.acos(t)
    eps32 = cosine_error_bound(d)
    tau = _thresholds(index, alpha, eps32)
    out = _Collector()
    per = max(1, index.block_bytes // (4 * max(len(index.centroids), d)))

    def blocks():
        for s in range(0, m, per):
            e = min(m, s + per)
            yield np.arange(s, e), ref.unit_range(s, e), None

    tested = _across(index, blocks, ref.unit, alpha, tau, eps32, _float32_below(t - eps32),
                     False, out)
    stats["reference_entries_computed"] = int(out.entries)
    stats["reference_candidate_rows"] = tested
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
    index, stats = _prepare(x, n_clusters, seed, n_iter, block_bytes, t)
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
    index, stats = _prepare(x, n_clusters, seed, n_iter, block_bytes, t)
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
