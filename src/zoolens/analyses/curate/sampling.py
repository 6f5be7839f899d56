"""Balanced sampling from a hierarchical k-means (DINOv2 / ssl-data-curation), by water-filling.

The budget is split top-down. At the top level every cluster gets ``min(size, x)`` points, with
``x`` the largest integer for which the total stays within the budget; the few points still
missing (fewer than the clusters larger than ``x``) go one each to the clusters larger than
``x``, the largest first, equal sizes in an order drawn from the seed. Each cluster's share is
then split over its child clusters the same way, down to the bottom level, where the points are
taken at random (seeded) or closest to the centroid first. The reference (ssl-data-curation)
hands the leftovers out with an unseeded ``np.random.choice``; here the same seed always gives the
same sample.
"""

from __future__ import annotations

import warnings
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..._validation import as_labels
from ...errors import InputError
from ._result import ResultMixin, _int_array, array_field
from .clustering import HierarchicalKMeans, label_groups

__all__ = ["water_fill", "BalancedSample", "balanced_sample"]


def _cap(sizes: np.ndarray, budget: int) -> int:
    """Largest integer x >= 0 with sum(min(sizes, x)) <= budget (sizes not all within budget)."""
    lo, hi = 0, int(sizes.max())  # f(lo) <= budget < f(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if int(np.minimum(sizes, mid).sum()) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def water_fill(sizes, budget: int, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """Split `budget` over clusters of the given sizes as evenly as their sizes allow.

    Parameters
    ----------
    sizes : (k,) non-negative integers (points available per cluster)
    budget : points to hand out; if it reaches ``sizes.sum()`` every cluster gets its size.
    rng : orders clusters of equal size when leftovers are handed out (default: lower index
        first).

    Returns
    -------
    counts : (k,) int64 with ``counts <= sizes`` and ``counts.sum() == min(budget, sizes.sum())``:
        ``min(size, x)`` per cluster for the largest integer x that fits, plus one for the
        ``budget - sum(min(size, x))`` largest clusters with size > x.
    """
    s = np.asarray(sizes)
    if s.ndim != 1 or (s.size and (not np.issubdtype(s.dtype, np.integer) or s.min() < 0)):
        raise InputError(f"sizes: expected a 1D array of non-negative integers, got {sizes!r}")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise InputError(f"budget: expected a non-negative integer, got {budget!r}")
    s = s.astype(np.int64)
    if int(s.sum()) <= budget:
        return s.copy()
    x = _cap(s, int(budget))
    counts = np.minimum(s, x)
    left = int(budget) - int(counts.sum())
    if left:
        eligible = np.flatnonzero(s > x)  # more than `left` of them, since f(x + 1) > budget
        tie = rng.permutation(len(eligible)) if rng is not None else np.arange(len(eligible))
        order = np.lexsort((tie, -s[eligible]))  # larger first, then the tie order
        counts[eligible[order[:left]]] += 1
    return counts


@dataclass
class BalancedSample(ResultMixin):
    """A balanced sample of data rows.

    Attributes
    ----------
    indices : (budget,) int64 sorted data rows.
    budget : points asked for; ``len(indices) == min(budget, n)``.
    top_counts : (k_top,) int64 points taken under each top-level cluster.
    strategy : "random" or "closest" (how points are taken in bottom clusters).
    seed : the seed used.
    """

    indices: np.ndarray = array_field(_int_array)
    budget: int = 0
    top_counts: np.ndarray = array_field(_int_array)
    strategy: str = "random"
    seed: int | None = 0


def balanced_sample(hierarchy: HierarchicalKMeans, budget: int, *, strategy: str = "random",
                    seed: int | None = 0) -> BalancedSample:
    """Draw `budget` data rows, balanced over the clusters of a hierarchical k-means.

    Parameters
    ----------
    hierarchy : from `hierarchical_kmeans`.
    budget : number of rows wanted (all n rows, with a warning, if it exceeds n).
    strategy : "random" (a seeded draw in each bottom cluster) or "closest" (the rows nearest
        the bottom cluster's centroid first, ssl-data-curation's "c").
    seed : seed of ``numpy.random.default_rng``; one generator serves the whole top-down pass in a
        fixed order, so the same seed gives the same sample.

    Returns
    -------
    BalancedSample
    """
    if strategy not in ("random", "closest"):
        raise InputError(f"strategy: expected 'random' or 'closest', got {strategy!r}")
    if not hierarchy.levels:
        raise InputError("hierarchy: has no levels")
    base = hierarchy.levels[0]
    n = len(as_labels(base.labels, "hierarchy.levels[0].labels"))
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise InputError(f"budget: expected a non-negative integer, got {budget!r}")
    if budget > n:
        warnings.warn(f"budget {budget} exceeds the {n} rows; taking all of them", stacklevel=2)
    rng = np.random.default_rng(seed)
    top = len(hierarchy.levels) - 1
    # children[l][c]: clusters of level l - 1 under cluster c of level l (l >= 1), in index order.
    children = {lv: label_groups(hierarchy.levels[lv].labels,
                                 len(hierarchy.levels[lv].centroids))
                for lv in range(1, top + 1)}
    # members[c]: the rows of bottom cluster c, nearest its centroid first ("closest"), else in
    # index order (the order the seeded draw picks from).
    members = (base.all_members() if strategy == "closest"
               else label_groups(base.labels, len(base.centroids)))
    sizes = {lv: hierarchy.sizes(lv) for lv in range(top + 1)}

    top_counts = water_fill(sizes[top], int(budget), rng=rng)
    picked: list[np.ndarray] = []
    stack = deque((top, c, int(t)) for c, t in enumerate(top_counts))
    # Depth-first in cluster order: a fixed order of random draws for a fixed seed.
    while stack:
        lv, c, target = stack.popleft()
        if target == 0:
            continue
        if lv == 0:
            if strategy == "closest":
                picked.append(members[c][:target])
            else:
                picked.append(rng.choice(members[c], size=target, replace=False))
            continue
        kids = children[lv][c]
        counts = water_fill(sizes[lv - 1][kids], target, rng=rng)
        stack.extendleft(reversed([(lv - 1, int(k), int(t)) for k, t in zip(kids, counts)]))
    indices = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
    return BalancedSample(indices=indices.astype(np.int64), budget=int(budget),
                          top_counts=top_counts, strategy=strategy, seed=seed)
