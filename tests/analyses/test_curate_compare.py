"""Fréchet distance, PRDC, retrieval, prototypes, shared prototypes (zoolens.analyses.curate)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zoolens.analyses.curate import (DatasetComparison, compare_datasets, feature_moments,
                                     frechet_distance, frechet_distance_from_moments, kmeans,
                                     prdc, prototype_sheet, prototypes, retrieve_by_clusters,
                                     retrieve_nearest, shared_prototype_sheet, shared_prototypes)
from zoolens.errors import InputError

# ----------------------------------------------------------------------------------------------
# Fréchet distance


def _exact_moment_sample(mu: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n rows whose sample mean is exactly `mu` and sample covariance (n - 1) exactly `cov`."""
    z = np.random.default_rng(seed).standard_normal((n, len(mu)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z.T))).T  # sample covariance = I
    return z @ np.linalg.cholesky(cov).T + mu


def _rotation(d: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]


def test_frechet_closed_form_commuting_covariances():
    # S_a = Q diag(a) Q^T and S_b = Q diag(b) Q^T commute:
    # FD = |mu_a - mu_b|^2 + sum (sqrt a - sqrt b)^2
    d = 6
    q = _rotation(d, 0)
    a, b = np.array([1, 2, 3, 4, 5, 6.0]), np.array([0.5, 2, 9, 1, 0.1, 6.0])
    mu_a, mu_b = np.arange(d, dtype=float), np.arange(d, dtype=float)[::-1] * 0.5
    closed = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance_from_moments(mu_a, q @ np.diag(a) @ q.T, mu_b, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(closed, rel=1e-10)
    # From samples whose moments are exactly those (n - 1 normalisation).
    xa = _exact_moment_sample(mu_a, q @ np.diag(a) @ q.T, 500, seed=1)
    xb = _exact_moment_sample(mu_b, q @ np.diag(b) @ q.T, 300, seed=2)
    mean, cov = feature_moments(xa)
    np.testing.assert_allclose(mean, mu_a, atol=1e-10)
    np.testing.assert_allclose(cov, q @ np.diag(a) @ q.T, atol=1e-10)
    assert frechet_distance(xa, xb) == pytest.approx(closed, rel=1e-9)


def test_frechet_closed_form_non_commuting_2d():
    # For 2 x 2 SPD matrices: tr sqrt(S_a S_b) = sqrt(tr(S_a S_b) + 2 sqrt(det(S_a S_b))).
    s_a = np.array([[2.0, 0.9], [0.9, 1.0]])
    s_b = np.array([[0.5, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s_a @ s_b, s_b @ s_a)
    p = s_a @ s_b
    tr_sqrt = np.sqrt(np.trace(p) + 2 * np.sqrt(np.linalg.det(p)))
    mu_a, mu_b = np.array([1.0, -2.0]), np.array([0.0, 0.5])
    closed = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt
    assert frechet_distance_from_moments(mu_a, s_a, mu_b, s_b) == pytest.approx(closed, rel=1e-12)
    xa = _exact_moment_sample(mu_a, s_a, 200, seed=3)
    xb = _exact_moment_sample(mu_b, s_b, 200, seed=4)
    assert frechet_distance(xa, xb) == pytest.approx(closed, rel=1e-9)


def test_frechet_singular_covariance_and_large_offsets():
    # Rank-deficient covariances (more dims than samples) stay real and non-negative; a common
    # offset of 1e6 cancels no digits (moments are shifted sums).
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20, 50))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    y = x + 3.0
    assert frechet_distance(x, y) == pytest.approx(9.0 * 50, rel=1e-9)
    assert frechet_distance(x + 1e6, y + 1e6) == pytest.approx(9.0 * 50, rel=1e-7)


# ----------------------------------------------------------------------------------------------
# precision / recall / density / coverage


def _prdc_reference(real: np.ndarray, fake: np.ndarray, k: int, closed: bool = False) -> dict:
    """NumPy float64 PRDC, written from the papers' definitions with full distance matrices."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    r_real = np.sort(dist(real, real), axis=1)[:, k]  # column 0 is the point itself
    r_fake = np.sort(dist(fake, fake), axis=1)[:, k]
    d = dist(real, fake)
    inside = (d <= r_real[:, None]) if closed else (d < r_real[:, None])
    inside_fake = (d <= r_fake[None, :]) if closed else (d < r_fake[None, :])
    return dict(precision=inside.any(0).mean(), recall=inside_fake.any(1).mean(),
                density=inside.sum(0).mean() / k, coverage=inside.any(1).mean())


@pytest.mark.parametrize("k", [1, 5, 12])
def test_prdc_equals_numpy_reference(k):
    rng = np.random.default_rng(k)
    real = rng.standard_normal((300, 8))
    fake = 1.2 * rng.standard_normal((250, 8)) + 0.4
    got = prdc(real, fake, k)
    ref = _prdc_reference(real, fake, k)
    for name, value in ref.items():
        assert getattr(got, name) == pytest.approx(value, abs=1e-12), name
    assert 0 < got.precision < 1 and 0 < got.recall < 1  # not a degenerate case


def test_prdc_points_on_the_ball_boundary():
    """fake == real puts every k-th neighbour exactly on a ball's boundary: open and closed
    balls differ, and both match the reference (the float32 blocks must not decide these)."""
    rng = np.random.default_rng(0)
    real = rng.standard_normal((120, 5)) * 10 + 100  # a large offset stresses float32
    for closed in (False, True):
        got = prdc(real, real.copy(), 5, closed=closed, block_bytes=1 << 12)
        ref = _prdc_reference(real, real, 5, closed=closed)
        for name, value in ref.items():
            assert getattr(got, name) == pytest.approx(value, abs=1e-12), (name, closed)
    # Each real ball holds its centre and k - 1 neighbours inside, and the k-th on its edge.
    assert prdc(real, real, 5).density == pytest.approx(1.0)
    assert prdc(real, real, 5, closed=True).density == pytest.approx(1.0 + 1 / 5)


def test_prdc_cosine_metric_is_euclidean_on_unit_rows():
    rng = np.random.default_rng(3)
    real, fake = rng.standard_normal((150, 6)), rng.standard_normal((140, 6)) + 0.3
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    got = prdc(real, fake, 4, metric="cosine")
    ref = _prdc_reference(unit(real), unit(fake), 4)
    for name, value in ref.items():
        assert getattr(got, name) == pytest.approx(value, abs=1e-12)


def test_prdc_errors():
    with pytest.raises(InputError, match="real"):
        prdc(np.ones((5, 3)), np.ones((10, 3)), k=5)
    with pytest.raises(InputError, match="fake"):
        prdc(np.ones((10, 3)), np.ones((10, 4)), k=2)
    with pytest.raises(InputError, match="metric"):
        prdc(np.ones((10, 3)), np.ones((10, 3)), k=2, metric="l1")


# ----------------------------------------------------------------------------------------------
# retrieval and prototypes


def _blobs(sizes, d: int, seed: int, spread: float = 0.15):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), d))
    lab = np.repeat(np.arange(len(sizes)), sizes)
    return (centres[lab] + spread * rng.standard_normal((len(lab), d))).astype(np.float32), lab


def _unit(a):
    a = np.asarray(a, np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_retrieve_nearest_equals_brute_force():
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((500, 16)).astype(np.float32)
    queries = rng.standard_normal((40, 16)).astype(np.float32)
    got = retrieve_nearest(queries, pool, k=4, block_bytes=1 << 14)
    s = _unit(queries) @ _unit(pool).T
    ref = np.argsort(-s, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(got.neighbors, ref)
    np.testing.assert_allclose(got.similarities, np.take_along_axis(s, ref, 1), atol=1e-6)
    np.testing.assert_array_equal(got.selected, np.unique(ref))
    with pytest.raises(InputError, match="k"):
        retrieve_nearest(queries, pool, k=501)


def test_retrieve_by_clusters_takes_clusters_with_enough_queries():
    pool, lab = _blobs([60, 50, 40, 30], 12, seed=1)
    rng = np.random.default_rng(2)
    # 3 queries near blob 0, 1 near blob 2, none near the others.
    idx = np.r_[rng.choice(np.flatnonzero(lab == 0), 3), rng.choice(np.flatnonzero(lab == 2), 1)]
    queries = pool[idx] + 0.01 * rng.standard_normal((4, 12)).astype(np.float32)
    km = kmeans(pool, 4, spherical=True, seed=0)
    got = retrieve_by_clusters(queries, pool, clusters=km, min_queries=2)
    q_lab = np.argmax(_unit(queries) @ km.centroids.T, axis=1)
    assert got.query_clusters.tolist() == q_lab.tolist()
    assert got.clusters.tolist() == [km.labels[idx[0]]]
    assert got.queries_per_cluster.tolist() == [3]
    np.testing.assert_array_equal(got.selected, np.flatnonzero(lab == 0))
    both = retrieve_by_clusters(queries, pool, 4, min_queries=1, seed=0)
    np.testing.assert_array_equal(both.selected, np.flatnonzero((lab == 0) | (lab == 2)))


def test_prototypes_medoids_and_sizes():
    x, lab = _blobs([50, 30, 20, 10], 8, seed=3)
    p = prototypes(x, 4, n_examples=3, seed=0)
    assert p.sizes[p.order].tolist() == [50, 30, 20, 10]
    u = _unit(x)
    for c in range(4):
        members = np.flatnonzero(p.labels == c)
        cos = u[members] @ p.centroids[c]
        ranked = members[np.lexsort((members, -cos))]
        assert p.medoids[c] == ranked[0]
        assert p.examples[c].tolist() == ranked[:3].tolist()
        assert len(set(lab[members])) == 1  # each prototype is one blob
    assert [lab[p.medoids[c]] for c in p.order] == [0, 1, 2, 3]


def test_shared_prototypes_find_the_one_sided_clusters():
    x, lab = _blobs([40] * 6, 10, seed=4)
    a_rows = np.flatnonzero(np.isin(lab, [0, 1, 2, 3, 4]))
    b_rows = np.concatenate([np.flatnonzero(lab == b)[:15] for b in (0, 1, 2, 5)])
    xa, xb = x[a_rows], x[b_rows]
    sp = shared_prototypes(xa, xb, 6, n_examples=4, seed=1)
    blob_of = {c: set(lab[a_rows][sp.examples_a[c][sp.examples_a[c] >= 0]]) |
               set(lab[b_rows][sp.examples_b[c][sp.examples_b[c] >= 0]]) for c in range(6)}
    assert sorted(lab[a_rows][sp.examples_a[c][0]] for c in sp.only_a) == [3, 4]
    assert [lab[b_rows][sp.examples_b[c][0]] for c in sp.only_b] == [5]
    assert all(len(v) == 1 for v in blob_of.values())
    assert sp.counts_a.sum() == 200 and sp.counts_b.sum() == 60
    np.testing.assert_allclose(sp.share_a.sum(), 1.0)
    shared = [c for c in range(6) if c not in sp.only_a and c not in sp.only_b]
    np.testing.assert_allclose(sp.share_a[shared], 0.2)   # 40 of 200
    np.testing.assert_allclose(sp.share_b[shared], 0.25)  # 15 of 60
    assert (sp.counts_b[sp.only_a] == 0).all() and (sp.counts_a[sp.only_b] == 0).all()


def test_compare_datasets_round_trips_json():
    x, lab = _blobs([30, 30, 30], 6, seed=6)
    res = compare_datasets(x[lab < 2], x[lab > 0], k=3, n_clusters=3)
    back = DatasetComparison.from_json(res.to_json())
    assert back.to_json() == res.to_json()
    assert res.frechet > 0 and 0 <= res.prdc.precision <= 1


def test_prototype_and_shared_sheets(tmp_path):
    x, lab = _blobs([12, 8, 6], 8, seed=7)
    colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)
    images = [np.full((16, 24, 3), colours[c], np.uint8) for c in lab]
    p = prototypes(x, 3, n_examples=4, seed=0)
    img = prototype_sheet(p, images, tmp_path / "proto.png", thumb_size=32, columns=4)
    arr = np.asarray(img)
    line = max(12, 32 // 8 + 4)
    for row, c in enumerate(p.order):  # each row shows its own blob's colour
        y = 6 + row * (line + 6 + 32 + line + 6) + line + 6 + 16
        assert tuple(arr[y, 6 + 16]) == tuple(colours[lab[p.medoids[c]]])
    assert Image.open(tmp_path / "proto.png").size == img.size
    sp = shared_prototypes(x[lab < 2], x[lab != 1], 3, seed=0)
    sheet = shared_prototype_sheet(sp, images[:20], [images[i] for i in np.flatnonzero(lab != 1)],
                                   tmp_path / "shared.png", names=("train", "test"),
                                   thumb_size=32)
    assert len(sp.only_a) == 1 and len(sp.only_b) == 1
    assert sheet.size[1] == 6 + 2 * (line + 6 + 32 + line + 6)
