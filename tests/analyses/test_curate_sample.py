"""k-means, hierarchical k-means and balanced sampling (zoolens.analyses.curate)."""

from __future__ import annotations

import numpy as np
import pytest

from zoolens.analyses.curate import (HierarchicalKMeans, KMeansResult, assign_clusters,
                                     balanced_sample, hierarchical_kmeans, kmeans, water_fill)
from zoolens.errors import InputError


def _blobs(n_per: int, centres: np.ndarray, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    lab = np.repeat(np.arange(len(centres)), n_per)
    x = centres[lab] + spread * rng.standard_normal((len(lab), centres.shape[1]))
    return x.astype(np.float32), lab


# ----------------------------------------------------------------------------------------------
# water-filling


def test_water_fill_hand_worked():
    # sizes 2, 10, 7, 5 and a budget of 20: x = 6 gives 2 + 6 + 6 + 5 = 19 <= 20 and x = 7
    # gives 21 > 20; the one point left goes to the largest cluster above 6 (size 10).
    assert water_fill([2, 10, 7, 5], 20).tolist() == [2, 7, 6, 5]
    # budget 17: x = 5 fits exactly (2 + 5 + 5 + 5), nothing left over.
    assert water_fill([2, 10, 7, 5], 17).tolist() == [2, 5, 5, 5]
    # budget 3 over four clusters: x = 0 (4 > 3 at x = 1), three leftovers, largest first.
    assert water_fill([2, 10, 7, 5], 3).tolist() == [0, 1, 1, 1]
    assert water_fill([2, 10, 7, 5], 24).tolist() == [2, 10, 7, 5]
    assert water_fill([2, 10, 7, 5], 100).tolist() == [2, 10, 7, 5]
    assert water_fill([2, 10, 7, 5], 0).tolist() == [0, 0, 0, 0]
    assert water_fill([0, 0, 3], 2).tolist() == [0, 0, 2]


def test_water_fill_ties_are_seeded_and_deterministic():
    # sizes 4, 4, 4, 1 and budget 8: x = 2 (7), one leftover among three equal clusters.
    plain = water_fill([4, 4, 4, 1], 8)
    assert plain.tolist() == [3, 2, 2, 1]  # no rng: the lower index
    draws = [tuple(water_fill([4, 4, 4, 1], 8, rng=np.random.default_rng(s)))
             for s in range(12)]
    assert all(sum(d) == 8 and sorted(d) == [1, 2, 2, 3] and d[3] == 1 for d in draws)
    assert len(set(draws)) > 1  # the seed decides which of the three gets it
    again = [tuple(water_fill([4, 4, 4, 1], 8, rng=np.random.default_rng(s)))
             for s in range(12)]
    assert draws == again


@pytest.mark.parametrize("seed", range(5))
def test_water_fill_properties_on_random_sizes(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 50, 40)
    for budget in (0, 1, 17, 300, int(sizes.sum()) - 1):
        c = water_fill(sizes, budget)
        assert c.sum() == min(budget, sizes.sum()) and (c <= sizes).all()
        # Water-filling: every cluster not full holds x or x + 1, and x + 1 >= every full one's.
        open_ = c < sizes
        if open_.any():
            lo = c[open_].min()
            assert c[open_].max() - lo <= 1
            assert (c[~open_] <= lo + 1).all()


def test_water_fill_errors():
    with pytest.raises(InputError, match="sizes"):
        water_fill([1.5, 2], 1)
    with pytest.raises(InputError, match="budget"):
        water_fill([1, 2], -1)


# ----------------------------------------------------------------------------------------------
# k-means


def _lloyd_reference(x: np.ndarray, init: np.ndarray, n_iter: int, spherical: bool):
    """Textbook float64 Lloyd (or spherical k-means) from given centroids."""
    x = x.astype(np.float64)
    if spherical:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = init.astype(np.float64)
    if spherical:
        c = c / np.linalg.norm(c, axis=1, keepdims=True)
    for _ in range(n_iter + 1):
        if spherical:
            lab = np.argmax(x @ c.T, axis=1)
        else:
            lab = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        new = np.array([x[lab == j].mean(0) for j in range(len(c))])
        if spherical:
            new /= np.linalg.norm(new, axis=1, keepdims=True)
        if np.allclose(new, c):
            break
        c = new
    return c, lab


@pytest.mark.parametrize("spherical", [False, True])
def test_kmeans_equals_a_float64_lloyd_from_the_same_start(spherical):
    rng = np.random.default_rng(0)
    x, _ = _blobs(60, rng.standard_normal((5, 6)) * 3, 1.0, seed=1)
    init = x[[0, 70, 130, 190, 250]]
    got = kmeans(x, 5, init=init, n_iter=50, spherical=spherical)
    c, lab = _lloyd_reference(x, init, 50, spherical)
    np.testing.assert_array_equal(got.labels, lab)
    np.testing.assert_allclose(got.centroids, c, atol=1e-6)
    assert got.sizes.tolist() == np.bincount(lab, minlength=5).tolist()
    if spherical:
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        np.testing.assert_allclose(got.scores, np.einsum("ij,ij->i", u, c[lab]), atol=1e-6)
    else:
        np.testing.assert_allclose(got.inertia, ((x - c[lab]) ** 2).sum(), rtol=1e-6)


def test_kmeanspp_recovers_separated_blobs_and_repeats_for_a_seed():
    rng = np.random.default_rng(3)
    x, truth = _blobs(80, rng.standard_normal((6, 10)) * 10, 0.5, seed=3)
    a = kmeans(x, 6, seed=5)
    b = kmeans(x, 6, seed=5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    # one k-means cluster per blob
    pairs = set(zip(truth.tolist(), a.labels.tolist()))
    assert len(pairs) == 6 and len({p[1] for p in pairs}) == 6
    back = KMeansResult.from_json(a.to_json())
    np.testing.assert_array_equal(back.labels, a.labels)


def test_empty_cluster_is_moved_to_a_far_point():
    x = np.array([[0.0, 0], [0.1, 0], [10, 0], [10.1, 0], [50, 0]], np.float32)
    init = np.array([[0.0, 0], [10, 0], [-100, -100]])  # the third starts far from everything
    res = kmeans(x, 3, init=init, n_iter=10)
    assert (res.sizes > 0).all()
    assert res.labels[4] != res.labels[0] and res.labels[4] != res.labels[2]


def test_assign_clusters_matches_argmin():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 5))
    c = rng.standard_normal((7, 5))
    lab, d2 = assign_clusters(x, c, block_bytes=1 << 10)
    ref = ((x[:, None] - c[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(lab, ref.argmin(1))
    np.testing.assert_allclose(d2, ref.min(1), rtol=1e-6)  # of the float32-rounded rows


def test_kmeans_errors():
    x = np.ones((5, 2))
    with pytest.raises(InputError, match="n_clusters"):
        kmeans(x, 6)
    with pytest.raises(InputError, match="init"):
        kmeans(x, 2, init="bogus")
    with pytest.raises(InputError, match="init"):
        kmeans(x, 2, init=np.ones((3, 2)))


# ----------------------------------------------------------------------------------------------
# hierarchical k-means and balanced sampling


def test_hierarchical_levels_cluster_the_previous_centroids():
    rng = np.random.default_rng(2)
    x, _ = _blobs(30, rng.standard_normal((20, 8)) * 4, 0.5, seed=2)
    h = hierarchical_kmeans(x, (20, 5, 2), resampling_steps=(2, 2, 0), seed=1)
    assert [len(lv.centroids) for lv in h.levels] == [20, 5, 2]
    assert [len(lv.labels) for lv in h.levels] == [600, 20, 5]
    assert h.sample_size == [15, 2, 1]  # half the mean cluster size by default
    # level 2 really is a k-means of level 1's centroids: each label is the nearest centroid
    for lv in (1, 2):
        prev = h.levels[lv - 1].centroids
        d = ((prev[:, None] - h.levels[lv].centroids[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(h.levels[lv].labels, d.argmin(1))
    assert h.sizes(2).sum() == 600
    np.testing.assert_array_equal(h.data_labels(1), h.levels[1].labels[h.levels[0].labels])
    assert HierarchicalKMeans.from_json(h.to_json()).to_json() == h.to_json()


def _hand_hierarchy() -> HierarchicalKMeans:
    """Two top clusters: A over bottom clusters of sizes 1 and 50, B over three of size 3."""
    sizes = [1, 50, 3, 3, 3]
    labels0 = np.repeat(np.arange(5), sizes)
    scores = np.linspace(0.0, 1.0, len(labels0))  # squared distances: lower = closer
    lv0 = KMeansResult(centroids=np.zeros((5, 2)), labels=labels0,
                       sizes=np.array(sizes), scores=scores)
    lv1 = KMeansResult(centroids=np.zeros((2, 2)), labels=np.array([0, 0, 1, 1, 1]),
                       sizes=np.array([2, 3]), scores=np.zeros(5))
    return HierarchicalKMeans(levels=[lv0, lv1], n_clusters=[5, 2])


def test_balanced_sample_hand_worked():
    h = _hand_hierarchy()
    # Top: sizes 51 and 9, budget 12 -> x = 6: [6, 6]. Inside A: sizes 1, 50 -> [1, 5].
    # Inside B: sizes 3, 3, 3 get 6 -> x = 2: [2, 2, 2].
    s = balanced_sample(h, 12, seed=0)
    assert s.top_counts.tolist() == [6, 6]
    per_bottom = np.bincount(h.levels[0].labels[s.indices], minlength=5)
    assert per_bottom.tolist() == [1, 5, 2, 2, 2]
    assert len(np.unique(s.indices)) == 12
    # budget 20: top x = 11 -> [11, 9]; A: [1, 10]; B: all.
    s = balanced_sample(h, 20, strategy="closest")
    assert np.bincount(h.levels[0].labels[s.indices], minlength=5).tolist() == [1, 10, 3, 3, 3]
    # "closest" takes the points nearest the centroid: the lowest scores of cluster 1.
    assert s.indices[1:11].tolist() == list(range(1, 11))


def test_balanced_sample_is_identical_for_a_repeated_seed():
    rng = np.random.default_rng(4)
    x, _ = _blobs(25, rng.standard_normal((12, 6)) * 3, 1.0, seed=4)
    runs = []
    for _ in range(2):
        h = hierarchical_kmeans(x, (12, 3), resampling_steps=2, sampling="random", seed=11)
        runs.append(balanced_sample(h, 70, seed=11).indices)
    np.testing.assert_array_equal(runs[0], runs[1])
    other = balanced_sample(hierarchical_kmeans(x, (12, 3), seed=12), 70, seed=12).indices
    assert not np.array_equal(runs[0], other)
    assert len(runs[0]) == 70 and len(np.unique(runs[0])) == 70


def test_balanced_sample_takes_everything_when_the_budget_is_too_large():
    h = _hand_hierarchy()
    with pytest.warns(UserWarning, match="exceeds"):
        s = balanced_sample(h, 100)
    assert s.indices.tolist() == list(range(60))
