"""Near-duplicate search, groups, keep rules and decontamination (zoolens.analyses.curate.duplicates).

Every answer is checked against an independent float64 computation: the full (n, n) cosine
matrix of the same rows, thresholded, and a plain union-find for the groups.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from zoolens.analyses.curate import (contact_sheet, dedup_sheet, deduplicate, duplicate_groups,
                                     near_duplicate_pairs, reference_matches)
from zoolens.analyses.curate.duplicates import DedupResult, cosine_error_bound
from zoolens.errors import InputError

# ----------------------------------------------------------------------------------------------
# independent references


def _cosines(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    u = x.astype(np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    if y is None:
        return u @ u.T
    v = y.astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return u @ v.T


def _reference_pairs(x: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    s = _cosines(x)
    i, j = np.nonzero(np.triu(s > t, 1))
    return np.stack([i, j], 1), s[i, j]


def _union_find_groups(n: int, pairs) -> list[list[int]]:
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in pairs:
        parent[find(int(i))] = find(int(j))
    comp: dict[int, list[int]] = {}
    for v in range(n):
        comp.setdefault(find(v), []).append(v)
    return sorted((g for g in comp.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


# ----------------------------------------------------------------------------------------------
# real photographs with planted copies

_PHOTOS = ["astronaut", "camera", "chelsea", "cat", "coffee", "coins", "immunohistochemistry",
           "moon", "page", "rocket", "text", "clock", "cell", "colorwheel", "microaneurysms",
           "logo", "horse"]


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _crop(im: Image.Image, frac: float) -> Image.Image:
    w, h = im.size
    dx, dy = int(w * frac), int(h * frac)
    return im.crop((dx, dy, w - dx, h - dy)).resize((w, h))


def _jitter(im: Image.Image) -> Image.Image:
    im = ImageEnhance.Brightness(im).enhance(1.15)
    im = ImageEnhance.Contrast(im).enhance(0.85)
    return ImageEnhance.Color(im).enhance(1.2)


def _flip(im: Image.Image) -> Image.Image:
    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


_COPIES = {
    "recompressed": lambda im: _jpeg(im, 25),
    "cropped": lambda im: _crop(im, 0.05),
    "flipped": _flip,
    "jittered": _jitter,
    "all four": lambda im: _jpeg(_jitter(_crop(_flip(im), 0.04)), 40),
}


def _embed(images: list[Image.Image]) -> np.ndarray:
    """The stand-in for a model (no pretrained weights offline): each image box-filtered to 6x6
    RGB, made mirror-symmetric (so a flip is invariant, as it is for trained features), shifted
    and scaled to zero mean and unit variance (brightness / contrast invariance), then a fixed
    seeded Gaussian projection to 64 dimensions (cosines preserved up to a few percent)."""
    proj = np.random.default_rng(1234).standard_normal((6 * 6 * 3, 64)) / 8
    rows = []
    for im in images:
        a = np.asarray(im.resize((6, 6), Image.Resampling.BOX), np.float64) / 255
        a = a + a[:, ::-1]
        rows.append(((a - a.mean()) / (a.std() + 1e-8)).ravel() @ proj)
    return np.array(rows, dtype=np.float32)


@pytest.fixture(scope="module")
def photo_set():
    """17 scikit-image photographs (two of them, 'cat' and 'chelsea', are the same picture) and
    five edited copies of each, interleaved in a seeded order; returns (embeddings, planted
    pairs, names, images)."""
    from skimage import data

    base = []
    for name in _PHOTOS:
        im = Image.fromarray(getattr(data, name)()).convert("RGB")
        im.thumbnail((128, 128))
        base.append(im)
    images, names, origin = list(base), list(_PHOTOS), list(range(len(base)))
    for b, im in enumerate(base):
        for kind, edit in _COPIES.items():
            images.append(edit(im))
            names.append(f"{_PHOTOS[b]} ({kind})")
            origin.append(b)
    perm = np.random.default_rng(7).permutation(len(images))
    images = [images[p] for p in perm]
    names = [names[p] for p in perm]
    origin = np.asarray(origin)[perm]
    pos = {int(p): i for i, p in enumerate(perm)}
    planted = {tuple(sorted((pos[b], pos[len(base) + 5 * b + c])))
               for b in range(len(base)) for c in range(5)}
    return _embed(images), planted, names, images


@pytest.mark.parametrize("n_clusters", [None, 1, 6, 20])
def test_photo_copies_pairs_equal_float64_reference(photo_set, n_clusters):
    x, planted, names, _ = photo_set
    t = 0.8
    ref_pairs, ref_sims = _reference_pairs(x, t)
    got = near_duplicate_pairs(x, t, n_clusters=n_clusters)
    np.testing.assert_array_equal(got.pairs, ref_pairs)
    np.testing.assert_allclose(got.similarities, ref_sims, rtol=0, atol=1e-12)
    found = set(map(tuple, got.pairs.tolist()))
    missed = [(names[i], names[j]) for i, j in planted - found]
    assert not missed, f"planted copies missed: {missed}"
    assert (got.similarities > t).all()
    # 'cat' and 'chelsea' are the same photograph: their two groups merge into one of 12.
    cat, chelsea = names.index("cat"), names.index("chelsea")
    assert (min(cat, chelsea), max(cat, chelsea)) in found


def test_photo_groups_are_the_components_of_the_reference_graph(photo_set):
    x, _, names, _ = photo_set
    ref_pairs, _ = _reference_pairs(x, 0.8)
    res = deduplicate(x, 0.8, n_clusters=6)
    assert [g.tolist() for g in res.groups] == _union_find_groups(len(x), ref_pairs)
    sizes = sorted(len(g) for g in res.groups)
    assert sizes == [6] * 15 + [12]  # each photograph and its 5 copies; cat + chelsea
    assert len(res.kept) == 16 and len(res.removed) == len(x) - 16


# ----------------------------------------------------------------------------------------------
# exactness at the threshold, pruning, memory paths


def _clustered(n: int, d: int, k: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    lab = rng.integers(0, k, n)
    return (centres[lab] + spread * rng.standard_normal((n, d))).astype(np.float32)


def _at_angle(x: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A vector whose exact cosine with `x` is `cos` (before rounding to float32)."""
    u = x / np.linalg.norm(x)
    r = rng.standard_normal(len(x))
    r -= (r @ u) * u
    r /= np.linalg.norm(r)
    return cos * u + np.sqrt(1 - cos ** 2) * r


def test_pairs_straddling_the_threshold_match_float64_exactly():
    """Pairs within 1e-7..1e-4 of t on both sides: float32 products cannot decide them (their
    error bound is ~4e-6 at d = 32); the float64 recheck must, exactly as the reference."""
    rng = np.random.default_rng(3)
    t, d = 0.8, 32
    x = _clustered(600, d, 8, 0.4, seed=3).astype(np.float64)
    offsets = np.array([-1e-4, -1e-5, -1e-6, -1e-7, 1e-7, 1e-6, 1e-5, 1e-4])
    extra = [_at_angle(x[i], t + offsets[i % len(offsets)], rng) for i in range(48)]
    x = np.vstack([x, np.array(extra) * 3.0]).astype(np.float32)
    ref_pairs, ref_sims = _reference_pairs(x, t)
    s = _cosines(x)
    close = np.abs(np.triu(s, 1) - t)
    assert ((close < 2e-6) & (np.triu(s, 1) > t)).sum() >= 4   # the test is not vacuous:
    assert ((close < 2e-6) & (np.triu(s, 1) <= t)).sum() >= 4  # both sides are populated
    assert cosine_error_bound(d) > 2e-6
    for k in (1, 5, 24):
        got = near_duplicate_pairs(x, t, n_clusters=k)
        np.testing.assert_array_equal(got.pairs, ref_pairs)
        np.testing.assert_allclose(got.similarities, ref_sims, rtol=0, atol=1e-12)


@pytest.mark.parametrize("d,t", [(3, 0.995), (3, 0.9), (8, 0.8), (8, 0.3), (16, -0.2)])
def test_pruned_search_equals_reference_in_low_dimensions(d, t):
    """Low dimensions give clusters whose balls overlap and pairs across every boundary."""
    x = _clustered(1500, d, 12, 0.6, seed=d)
    ref_pairs, _ = _reference_pairs(x, t)
    got = near_duplicate_pairs(x, t, n_clusters=40, seed=1)
    np.testing.assert_array_equal(got.pairs, ref_pairs)
    if t > 0.5:  # high thresholds: the bounds must actually have skipped work
        assert got.stats["entries_computed"] < 0.6 * got.stats["all_pairs"]


@pytest.mark.parametrize("t", [0.999, 0.99])
def test_tile_bounds_inside_large_clusters(t):
    """Two clusters of ~2000 points on the 2-sphere: rows sorted by angle to the centroid let
    a tile skip members whose angle differs by more than arccos(t)."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((4000, 3)).astype(np.float32)
    ref_pairs, _ = _reference_pairs(x, t)
    got = near_duplicate_pairs(x, t, n_clusters=2)
    np.testing.assert_array_equal(got.pairs, ref_pairs)
    assert got.stats["entries_computed"] < 0.5 * got.stats["all_pairs"]


@pytest.mark.parametrize("t", [math.cos(0.004), math.cos(0.02), math.cos(0.3)])
def test_points_on_a_circle_where_the_bounds_are_tight(t):
    """On a circle, angles add exactly: ang(x, y) = |ang(x, c) - ang(y, c)| for x, y on one side
    of c, so (1) is tight and any bound shrunk by a rounding margin would lose pairs."""
    theta = np.sort(np.random.default_rng(17).uniform(0, 2 * np.pi, 3000))
    x = np.stack([np.cos(theta), np.sin(theta)], 1).astype(np.float32)
    ref_pairs, _ = _reference_pairs(x, t)
    got = near_duplicate_pairs(x, t, n_clusters=24)
    np.testing.assert_array_equal(got.pairs, ref_pairs)
    assert got.stats["entries_computed"] < 0.2 * got.stats["all_pairs"]


def test_prunes_clustered_high_dimensional_data():
    """Well separated clusters in 64-d: almost no cross-cluster work, and still every pair."""
    x = _clustered(3000, 64, 30, 0.25, seed=5)
    rng = np.random.default_rng(5)
    src = rng.choice(len(x), 40, replace=False)
    x = np.vstack([x, x[src] + 0.01 * rng.standard_normal((40, 64)).astype(np.float32)])
    ref_pairs, _ = _reference_pairs(x, 0.97)
    got = near_duplicate_pairs(x, 0.97, n_clusters=30)
    np.testing.assert_array_equal(got.pairs, ref_pairs)
    assert {(int(s), 3000 + i) for i, s in enumerate(src)} <= set(map(tuple, got.pairs.tolist()))
    assert got.stats["entries_computed"] < 0.1 * got.stats["all_pairs"]


def test_small_memory_budget_gives_the_same_answer():
    x = _clustered(2500, 8, 10, 0.8, seed=11)
    ref_pairs, _ = _reference_pairs(x, 0.6)
    small = near_duplicate_pairs(x, 0.6, n_clusters=50, block_bytes=1 << 16)
    np.testing.assert_array_equal(small.pairs, ref_pairs)


def test_answer_does_not_depend_on_seed_and_repeats_exactly():
    x = _clustered(1200, 16, 6, 0.5, seed=2)
    a = deduplicate(x, 0.85, seed=0)
    b = deduplicate(x, 0.85, seed=0)
    c = deduplicate(x, 0.85, seed=99, n_clusters=13)
    assert a.seconds and a.seconds.keys() == b.seconds.keys()
    a.seconds = b.seconds = {}
    assert a.to_json() == b.to_json()
    np.testing.assert_array_equal(a.pairs, c.pairs)
    np.testing.assert_array_equal(a.kept, c.kept)


def test_float64_input_and_torch_input():
    import torch

    x = _clustered(400, 12, 4, 0.3, seed=8).astype(np.float64)
    x[5] = x[6] * 2.0  # identical direction
    ref_pairs, _ = _reference_pairs(x, 0.99)
    np.testing.assert_array_equal(near_duplicate_pairs(x, 0.99).pairs, ref_pairs)
    np.testing.assert_array_equal(near_duplicate_pairs(torch.from_numpy(x), 0.99).pairs,
                                  _reference_pairs(x.astype(np.float32), 0.99)[0])


# ----------------------------------------------------------------------------------------------
# groups, keep rules, k-NN graph, reference set


def _chain(n_links: int, step_cos: float, seed: int) -> np.ndarray:
    """Rows along a great circle, consecutive rows at cosine `step_cos`."""
    rng = np.random.default_rng(seed)
    a, b = np.linalg.qr(rng.standard_normal((16, 2)))[0].T
    theta = np.arccos(step_cos) * np.arange(n_links)
    return np.outer(np.cos(theta), a) + np.outer(np.sin(theta), b)


def test_groups_are_transitive_where_semdedup_is_not():
    """A chain a - b - c with a, c below the threshold: one group (SemDeDup would keep a and c
    apart after dropping b); one survivor."""
    x = np.vstack([_chain(3, 0.95, 0), _clustered(50, 16, 5, 1.0, seed=1)]).astype(np.float32)
    s = _cosines(x)
    assert s[0, 1] > 0.93 and s[1, 2] > 0.93 and s[0, 2] < 0.93
    res = deduplicate(x, 0.93, keep="first")
    assert [0, 1, 2] in [g.tolist() for g in res.groups]
    assert 0 in res.kept and 1 in res.removed and 2 in res.removed


def test_keep_rules():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((30, 24))
    x = np.vstack([base] + [base[:5] + 0.05 * rng.standard_normal((5, 24)) for _ in range(3)])
    x = x.astype(np.float32)
    res_size = rng.integers(100, 10_000, len(x))
    groups = _union_find_groups(len(x), _reference_pairs(x, 0.95)[0])
    assert len(groups) == 5 and all(len(g) == 4 for g in groups)
    first = deduplicate(x, 0.95, keep="first")
    assert first.group_kept.tolist() == [g[0] for g in groups]
    big = deduplicate(x, 0.95, keep="resolution", resolution=res_size)
    assert big.group_kept.tolist() == [g[int(np.argmax(res_size[g]))] for g in groups]
    wh = np.stack([res_size, np.ones_like(res_size)], 1)
    assert deduplicate(x, 0.95, keep="resolution", resolution=wh).group_kept.tolist() == \
        big.group_kept.tolist()
    cen = deduplicate(x, 0.95, keep="centroid")
    for g, kept in zip(groups, cen.group_kept):
        u = x[g].astype(np.float64)
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        assert kept == g[int(np.argmax(u @ u.mean(0)))]
    for r in (first, big, cen):
        assert np.array_equal(np.union1d(r.kept, r.removed), np.arange(len(x)))
        assert len(np.intersect1d(r.kept, r.removed)) == 0
        assert len(r.kept) == 30


def _reference_knn_groups(x: np.ndarray, t: float, k: int):
    """DINOv2's graph: each row linked to its k nearest others (float64, ties to the lower
    index) when above t, undirected; returns (pairs, groups)."""
    s = _cosines(x)
    np.fill_diagonal(s, -np.inf)
    edges = set()
    for i in range(len(x)):
        for j in np.argsort(-s[i], kind="stable")[:k]:
            if s[i, j] > t:
                edges.add((min(i, int(j)), max(i, int(j))))
    pairs = sorted(edges)
    return pairs, _union_find_groups(len(x), pairs)


def test_knn_graph_restriction_equals_dinov2_graph():
    rng = np.random.default_rng(9)
    # A dense blob of 25 near-copies (each has 24 neighbours above t) and a long chain.
    blob = rng.standard_normal(16) + 0.02 * rng.standard_normal((25, 16))
    x = np.vstack([blob, _chain(12, 0.97, 3), rng.standard_normal((40, 16))]).astype(np.float32)
    for k in (1, 3, 64):
        ref_pairs, ref_groups = _reference_knn_groups(x, 0.95, k)
        res = deduplicate(x, 0.95, max_neighbors=k)
        assert res.pairs.tolist() == [list(p) for p in ref_pairs]
        assert [g.tolist() for g in res.groups] == ref_groups
    full = deduplicate(x, 0.95)
    assert len(deduplicate(x, 0.95, max_neighbors=3).pairs) < len(full.pairs)


def test_reference_set_drops_whole_groups():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((200, 32)).astype(np.float32)
    x[100:103] = x[0] + 0.25 * rng.standard_normal((3, 32))  # group {0, 100, 101, 102}
    x[150] = x[7] + 0.25 * rng.standard_normal(32)           # group {7, 150}
    ref = np.vstack([x[101] + 0.05 * rng.standard_normal(32),  # near 101, not the others
                     x[42] + 0.05 * rng.standard_normal(32),   # near the singleton 42
                     rng.standard_normal((20, 32))]).astype(np.float32)
    t, t_ref = 0.94, 0.99
    s = _cosines(x, ref)
    assert s[101, 0] > t_ref and (s[[0, 100, 102], 0] < t_ref).all()  # only 101 matches
    res = deduplicate(x, t, reference=ref, reference_threshold=t_ref, n_clusters=8)
    hits = np.flatnonzero((s > t_ref).any(1))
    assert hits.tolist() == [42, 101]
    assert res.contaminated.tolist() == hits.tolist()
    best = [int(np.lexsort((np.arange(len(ref)), -s[i]))[0]) for i in hits]
    assert res.contaminated_reference.tolist() == best == [1, 0]
    np.testing.assert_allclose(res.contaminated_similarity, s[hits, best], atol=1e-12)
    assert [g.tolist() for g in res.groups] == [[0, 100, 101, 102], [7, 150]]
    assert res.group_kept[0] == -1 and res.group_kept[1] in (7, 150)
    assert {0, 100, 101, 102, 42} <= set(res.removed.tolist())
    assert len(res.kept) == 200 - 4 - 1 - 1
    # The stand-alone search finds the same rows.
    alone = reference_matches(x, ref, t_ref, n_clusters=3)
    assert alone.rows.tolist() == hits.tolist()


def test_duplicate_groups_of_a_known_graph():
    groups = duplicate_groups(8, [(5, 6), (0, 3), (3, 7), (1, 2)])
    assert [g.tolist() for g in groups] == [[0, 3, 7], [1, 2], [5, 6]]
    assert duplicate_groups(4, np.zeros((0, 2))) == []


def test_result_round_trips_json():
    x = _clustered(300, 8, 3, 0.2, seed=1)
    r = deduplicate(x, 0.99)
    back = DedupResult.from_json(r.to_json())
    assert back.to_json() == r.to_json()
    assert all(isinstance(g, np.ndarray) for g in back.groups)


def test_errors_name_the_argument():
    x = _clustered(50, 8, 2, 0.3, seed=0)
    with pytest.raises(InputError, match="threshold"):
        deduplicate(x, 1.0)
    with pytest.raises(InputError, match="keep"):
        deduplicate(x, 0.9, keep="largest")
    with pytest.raises(InputError, match="resolution"):
        deduplicate(x, 0.9, keep="resolution")
    with pytest.raises(InputError, match="max_neighbors"):
        deduplicate(x, 0.9, max_neighbors=0)
    with pytest.raises(InputError, match="reference"):
        deduplicate(x, 0.9, reference=np.ones((3, 5)))
    z = x.copy()
    z[17] = 0
    with pytest.raises(InputError, match="x: row 17"):
        near_duplicate_pairs(z, 0.9)
    with pytest.raises(InputError, match="n_clusters"):
        near_duplicate_pairs(x, 0.9, n_clusters=51)


# ----------------------------------------------------------------------------------------------
# the sheet


def test_dedup_sheet_shows_the_groups(photo_set, tmp_path):
    x, _, _, images = photo_set
    res = deduplicate(x, 0.8)
    path = tmp_path / "groups.png"
    img = dedup_sheet(res, images, path, max_groups=3, max_per_group=4, thumb_size=48,
                      columns=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert img.size == Image.open(path).size
    # Solid-colour images placed by id: each tile shows its own image's colour.
    colours = {i: tuple(int(v) for v in np.random.default_rng(i).integers(0, 256, 3))
               for i in range(6)}
    sheet = np.asarray(contact_sheet(lambda i: np.full((10, 20, 3), colours[i], np.uint8),
                                     [[0, 1, 2], [3, 4, 5]], thumb_size=40, columns=3))
    line = max(12, 40 // 8 + 4)
    for row, group in enumerate([[0, 1, 2], [3, 4, 5]]):
        y = 6 + row * (line + 6 + 40 + 6) + line + 6 + 20
        for j, i in enumerate(group):
            assert tuple(sheet[y, 6 + j * 46 + 20]) == colours[i]
