"""TokenCut / MaskCut / PCA colours against a float64 NumPy reference and planted objects."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from zoolens.analyses.discovery import cuts as dc
from zoolens.analyses.discovery import (MaskCutResult, mask_bbox, maskcut, ncut, ncut_batch,
                                        pca_rgb, upsample_mask)
from zoolens.errors import InputError

SOLVERS = ["dense", "lanczos", "shift_invert", "auto"]


# --------------------------------------------------------------------------------------------------
# planted data and an independent reference


def rect(grid, r0, r1, c0, c1):
    m = np.zeros(grid, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def planted(rng, grid, objects, *, dim=64, noise=0.8, n_bg=1):
    """(rows*cols, dim): background direction(s), each object mask its own direction, plus noise.

    objects: list of (rows, cols) bool masks; masks listed with the same integer in `same` share a
    direction. n_bg > 1 splits the background into horizontal bands of different directions.
    """
    rows, cols = grid
    bands = np.array_split(np.arange(rows), n_bg)
    feats = np.zeros((rows, cols, dim))
    for band in bands:
        feats[band] = rng.normal(size=dim)
    for m in objects:
        if isinstance(m, tuple):  # (mask, direction) to share a direction
            m, direction = m
        else:
            direction = rng.normal(size=dim)
        feats[m] = direction
    feats += noise * rng.normal(size=feats.shape)
    return feats.reshape(rows * cols, dim)


def components4(mask):
    """4-connected components of a (rows, cols) bool mask by breadth-first search: (labels, n)."""
    rows, cols = mask.shape
    labels = np.zeros(mask.shape, dtype=int)
    n = 0
    for r in range(rows):
        for c in range(cols):
            if mask[r, c] and labels[r, c] == 0:
                n += 1
                labels[r, c] = n
                queue = deque([(r, c)])
                while queue:
                    i, j = queue.popleft()
                    for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
                        if 0 <= a < rows and 0 <= b < cols and mask[a, b] and labels[a, b] == 0:
                            labels[a, b] = n
                            queue.append((a, b))
    return labels, n


def reference_cut(features, grid, tau=0.2, eps=1e-5, corner_flip=False):
    """TokenCut (and MaskCut's flip) written plainly: full dense generalized eigh in float64.

    Returns (mask (rows, cols) bool, eigenvalue, W).
    """
    x = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms == 0, 1.0, norms)
    w = np.where(x @ x.T > tau, 1.0, eps)
    deg = np.diag(w.sum(axis=1))
    vals, vecs = scipy.linalg.eigh(deg - w, deg)
    vec = vecs[:, 1]
    bip = vec > vec.mean()
    seed = int(np.argmax(np.abs(vec)))
    if not bip[seed]:
        vec, bip = -vec, ~bip
    rows, cols = grid
    if corner_flip:
        b2 = bip.reshape(grid)
        if int(b2[0, 0]) + int(b2[0, -1]) + int(b2[-1, 0]) + int(b2[-1, -1]) >= 3:
            bip = ~bip
            seed = int(np.argmax(-vec))
    labels, _ = components4(bip.reshape(grid))
    r, c = divmod(seed, cols)
    return labels == labels[r, c], float(vals[1]), w


def iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return (a & b).sum() / max((a | b).sum(), 1)


def ncut_value(w, inside):
    inside = inside.reshape(-1)
    deg = w.sum(axis=1)
    cut = w[inside][:, ~inside].sum()
    return cut / deg[inside].sum() + cut / deg[~inside].sum()


# --------------------------------------------------------------------------------------------------
# ncut


@pytest.mark.parametrize("grid", [(16, 16), (10, 24), (24, 10), (9, 13)])
@pytest.mark.parametrize("solver", SOLVERS)
def test_ncut_equals_dense_reference(grid, solver):
    rng = np.random.default_rng(hash(grid) % 2**32)
    rows, cols = grid
    obj = rect(grid, rows // 4, rows // 4 + rows // 2, cols // 5, cols // 5 + cols // 3)
    x = planted(rng, grid, [obj], noise=1.0, n_bg=2)
    want, _, _ = reference_cut(x, grid)
    got = ncut(x, grid, solver=solver)
    assert got.shape == (rows * cols,) and got.dtype == bool
    np.testing.assert_array_equal(got.reshape(grid), want)


@pytest.mark.parametrize("solver", ["dense", "lanczos", "shift_invert"])
def test_ncut_recovers_planted_object_non_square(solver):
    grid = (12, 21)
    obj = rect(grid, 3, 8, 11, 18)
    x = planted(np.random.default_rng(1), grid, [obj])
    got = ncut(x, grid, solver=solver).reshape(grid)
    assert iou(got, obj) > 0.9
    # with rows and cols swapped the same patches lie elsewhere: the object is not found
    swapped = ncut(x, (21, 12), solver=solver).reshape(21, 12)
    assert iou(swapped.reshape(grid), obj) < 0.9 or not np.array_equal(swapped.reshape(grid), got)


def test_ncut_keeps_only_the_seeds_component():
    grid = (14, 22)
    a = rect(grid, 2, 7, 2, 8)  # two disconnected blobs sharing one direction
    b = rect(grid, 8, 12, 14, 20)
    direction = np.random.default_rng(5).normal(size=64)
    x = planted(np.random.default_rng(6), grid, [(a, direction), (b, direction)], noise=0.5)
    # the raw side of the split holds both blobs; TokenCut keeps the seed's blob only
    want, _, _ = reference_cut(x, grid)
    got = ncut(x, grid, solver="lanczos").reshape(grid)
    np.testing.assert_array_equal(got, want)
    assert (iou(got, a) > 0.9) != (iou(got, b) > 0.9)
    assert not (got & a).any() or not (got & b).any()


def test_foreground_rule_ignores_eigenvector_sign():
    rng = np.random.default_rng(3)
    grid = (9, 11)
    for _ in range(20):
        v = rng.normal(size=99) ** 3
        for flip in (False, True):
            m1, s1 = dc._foreground(v, grid, flip)
            m2, s2 = dc._foreground(-v, grid, flip)
            np.testing.assert_array_equal(m1, m2)
            assert s1 == s2 and m1[s1]


def test_corner_flip_uses_rows_cols_corners():
    # grid (4, 7): the large values sit on 3 true corners, (0,0) (0,6) (3,0), and the seed at (1,2);
    # a (cols, rows) mix-up would look at (0,3) and (3,3) instead and count only 1 or 2 corners
    grid = (4, 7)
    v = np.full(28, -0.1)
    for r, c in [(0, 0), (0, 6), (3, 0), (1, 2), (1, 1), (1, 0)]:
        v[r * 7 + c] = 1.0
    v[1 * 7 + 2] = 2.0
    fg, seed = dc._foreground(v, grid, corner_flip=False)
    assert seed == 9 and fg.reshape(grid)[0, 0] and not fg.reshape(grid)[0, 6]  # seed's component
    fg, seed = dc._foreground(v, grid, corner_flip=True)
    assert not fg.reshape(grid)[0, 0] and fg.reshape(grid)[0, 3] and fg[seed]
    assert fg.sum() == 22  # the other side is one connected piece


def test_binary_graph_exact_near_tau():
    # pairs of unit vectors whose cosine is tau +- 1e-7: float32 alone would threshold them wrongly
    rng = np.random.default_rng(0)
    dim, tau, n = 384, 0.2, 60
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    base = q[:, 0]
    offsets = rng.choice([-1e-7, 1e-7, -3e-9, 3e-9], size=n)
    cos = tau + offsets
    others = np.outer(cos, base) + np.sqrt(1 - cos**2)[:, None] * q[:, 1:n + 1].T
    fn = np.vstack([base, others])
    fn /= np.linalg.norm(fn, axis=1, keepdims=True)
    c = dc._excess_affinity(fn, tau, 1e-5, True)
    want = (fn @ fn.T) > tau
    np.testing.assert_array_equal(c > 0, want)
    assert (want[0, 1:] == (offsets > 0)).all()
    np.testing.assert_allclose(c[want], 1 - 1e-5)


def test_non_binary_graph_matches_reference():
    grid = (12, 12)
    x = planted(np.random.default_rng(8), grid, [rect(grid, 2, 7, 3, 9)])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    a = xn @ xn.T
    w = np.where(a > 0.2, a, 1e-5)
    deg = np.diag(w.sum(axis=1))
    vec = scipy.linalg.eigh(deg - w, deg)[1][:, 1]
    bip = vec > vec.mean()
    seed = int(np.argmax(np.abs(vec)))
    bip = bip if bip[seed] else ~bip
    labels, _ = components4(bip.reshape(grid))
    want = labels == labels[divmod(seed, 12)]
    for solver in ("dense", "lanczos"):
        got = ncut(x, grid, solver=solver, binary=False)
        np.testing.assert_array_equal(got.reshape(grid), want)


def test_lanczos_fallbacks_agree(monkeypatch):
    grid = (20, 20)
    x = planted(np.random.default_rng(11), grid, [rect(grid, 4, 12, 5, 15)], noise=1.0, n_bg=2)
    want = ncut(x, grid, solver="dense")
    calls = []
    real = dc._fiedler_shift_invert
    monkeypatch.setattr(dc, "_fiedler_shift_invert", lambda c, e: calls.append(1) or real(c, e))
    monkeypatch.setattr(dc, "_LANCZOS_MAXITER_DENSE", 1)
    monkeypatch.setattr(dc, "_LANCZOS_MAXITER_SPARSE", 1)
    monkeypatch.setattr(dc, "_LANCZOS_NCV", 3)
    np.testing.assert_array_equal(ncut(x, grid, solver="lanczos"), want)
    assert calls, "a starved Lanczos run should hand over to shift-invert"
    monkeypatch.setattr(dc, "_SHIFT_INVERT_MAXITER", 1)
    monkeypatch.setattr(dc, "_SHIFT_INVERT_NCV", 2)
    np.testing.assert_array_equal(ncut(x, grid, solver="shift_invert"), want)


def test_ncut_batch_and_torch_input():
    grid = (10, 14)
    rng = np.random.default_rng(4)
    xs = np.stack([planted(rng, grid, [rect(grid, 2, 6, 3 + i, 9 + i)]) for i in range(3)])
    got = ncut_batch(torch.from_numpy(xs).float(), grid, solver="lanczos")
    assert got.shape == (3, 140)
    for i in range(3):
        want, _, _ = reference_cut(xs[i].astype(np.float32), grid)
        np.testing.assert_array_equal(got[i].reshape(grid), want)


def test_default_square_grid_and_input_errors():
    x = planted(np.random.default_rng(2), (8, 8), [rect((8, 8), 1, 4, 2, 6)])
    np.testing.assert_array_equal(ncut(x), ncut(x, (8, 8)))
    with pytest.raises(InputError, match="grid"):
        ncut(x[:60])
    with pytest.raises(InputError, match="grid"):
        ncut(x, (6, 11))
    with pytest.raises(InputError, match="solver"):
        ncut(x, solver="eigsh")
    with pytest.raises(InputError, match="tau"):
        ncut(x, tau=1.5)
    with pytest.raises(InputError, match="eps"):
        ncut(x, eps=0.0)
    with pytest.raises(InputError, match="features"):
        ncut(x[None])
    with pytest.raises(InputError, match="n_objects"):
        maskcut(x, n_objects=0)


# --------------------------------------------------------------------------------------------------
# maskcut


def test_maskcut_two_objects_disjoint_and_recovered():
    grid = (16, 24)
    big = rect(grid, 2, 9, 2, 10)
    small = rect(grid, 9, 14, 15, 21)
    x = planted(np.random.default_rng(21), grid, [big, small], noise=0.8)
    res = {s: maskcut(x, grid, 3, solver=s) for s in ("dense", "lanczos")}
    masks = res["lanczos"].masks
    assert len(masks) >= 2
    for i in range(len(masks)):
        assert masks[i].shape == grid and masks[i].dtype == bool
        for j in range(i + 1, len(masks)):
            assert not (masks[i] & masks[j]).any()
    for planted_mask in (big, small):
        assert max(iou(m, planted_mask) for m in masks) > 0.9
    assert len(res["dense"]) == len(res["lanczos"])
    for a, b in zip(res["dense"].masks, masks):
        np.testing.assert_array_equal(a, b)


def test_maskcut_first_round_matches_reference_and_scores():
    grid = (15, 20)
    obj = rect(grid, 3, 10, 4, 12)
    x = planted(np.random.default_rng(31), grid, [obj], n_bg=2)
    want, lam, w = reference_cut(x, grid, corner_flip=True)
    first = maskcut(x, grid, 1, solver="lanczos").objects[0]
    np.testing.assert_array_equal(first.mask, want)
    assert first.area == int(want.sum())
    assert first.eigenvalue == pytest.approx(lam, rel=1e-6, abs=1e-9)
    assert first.score == pytest.approx(ncut_value(w, want), rel=1e-9)
    r, c = np.nonzero(want)
    assert first.bbox == (c.min(), r.min(), c.max() + 1, r.max() + 1)


def test_maskcut_corner_flip():
    # a large central object and a thin frame of background: the frame is the smaller side, so it
    # holds the extreme eigenvector values and TokenCut's seed; it holds all four corners, so
    # MaskCut takes the other side
    grid = (14, 18)
    centre = rect(grid, 2, 12, 2, 16)
    x = planted(np.random.default_rng(41), grid, [centre], noise=0.5)
    tokencut = ncut(x, grid, solver="lanczos").reshape(grid)
    assert iou(tokencut, ~centre) > 0.9
    want, _, _ = reference_cut(x, grid, corner_flip=True)
    got = maskcut(x, grid, 1, solver="lanczos").masks[0]
    np.testing.assert_array_equal(got, want)
    assert iou(got, centre) > 0.9


def test_maskcut_stops_on_overlap_or_small_and_json_roundtrip():
    grid = (12, 12)
    obj = rect(grid, 3, 8, 3, 9)
    x = planted(np.random.default_rng(51), grid, [obj], noise=0.6)
    res = maskcut(x, grid, 3, solver="dense")
    assert len(res) == 1 and res.stop_reason in ("overlap", "small")
    assert iou(res.masks[0], obj) > 0.9
    back = MaskCutResult.from_json(res.to_json())
    assert back.grid == grid and back.stop_reason == res.stop_reason and back.tau == 0.2
    np.testing.assert_array_equal(back.masks[0], res.masks[0])
    assert back.objects[0].bbox == res.objects[0].bbox
    assert json.loads(res.to_json())["n_objects"] == 3
    # a grid-sized min_area leaves nothing
    assert len(maskcut(x, grid, 3, min_area=0.99)) == 0


def test_maskcut_bookkeeping(monkeypatch):
    # scripted cuts: round 2 overlaps round 1 (IoU < 0.5) and keeps only its new patches; round 3
    # repeats round 1 (IoU > 0.5) and ends the search
    grid = (10, 10)
    a, b = rect(grid, 0, 5, 0, 5), rect(grid, 3, 8, 3, 8)
    script = iter([a, b, a])
    seen = []

    def fake_foreground(vec, g, corner_flip):
        assert corner_flip and g == grid
        return next(script).reshape(-1), 0

    real_fiedler = dc._fiedler
    monkeypatch.setattr(dc, "_foreground", fake_foreground)
    monkeypatch.setattr(dc, "_fiedler",
                        lambda c, e, s: seen.append((c > 0).copy()) or real_fiedler(c, e, s))
    x = np.random.default_rng(0).normal(size=(100, 16))
    res = maskcut(x, grid, 5, tau=0.0, solver="dense")
    assert res.stop_reason == "overlap" and len(res) == 2
    np.testing.assert_array_equal(res.masks[0], a)
    np.testing.assert_array_equal(res.masks[1], b & ~a)
    assert res.objects[1].area == int((b & ~a).sum()) and res.objects[1].bbox == (3, 3, 8, 8)
    # taken patches lose every edge but their own eps: features zeroed before each round
    taken = a.reshape(-1)
    assert not seen[1][taken].any() and not seen[1][:, taken].any()
    assert seen[1][~taken][:, ~taken].any()
    # a cut whose new patches cover <= 1% of the grid is dropped too
    script = iter([a, a | rect(grid, 9, 10, 9, 10)])
    res = maskcut(x, grid, 5, tau=0.0, solver="dense", max_iou=1.0)
    assert res.stop_reason == "small" and len(res) == 1


# --------------------------------------------------------------------------------------------------
# masks to pixels


def test_upsample_mask_nearest_and_bilinear():
    rng = np.random.default_rng(0)
    m = rng.random((5, 7)) > 0.5
    np.testing.assert_array_equal(upsample_mask(m, (20, 28)), np.kron(m, np.ones((4, 4), bool)))
    t = torch.from_numpy(m.astype(np.float32))[None, None]
    for size in [(20, 28), (15, 21), (9, 10)]:
        near = F.interpolate(t, size=size, mode="nearest")[0, 0].numpy() > 0.5
        np.testing.assert_array_equal(upsample_mask(m, size), near)
        bil = F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
        got = upsample_mask(m, size, mode="bilinear")
        decided = np.abs(bil - 0.5) > 1e-5  # float32 torch vs float64 here at exact halves
        np.testing.assert_array_equal(got[decided], bil[decided] >= 0.5)
    with pytest.raises(InputError, match="mode"):
        upsample_mask(m, (10, 10), mode="cubic")


def test_mask_bbox():
    m = np.zeros((6, 9), bool)
    assert mask_bbox(m) is None
    m[1, 7] = m[4, 2] = True
    assert mask_bbox(m) == (2, 1, 8, 5)
    assert m[1:5, 2:8].sum() == m.sum()


# --------------------------------------------------------------------------------------------------
# PCA colours


def test_pca_rgb_foreground_and_colours():
    grid = (9, 13)
    rng = np.random.default_rng(61)
    dim = 48
    obj_dir, bg_dir = rng.normal(size=dim), rng.normal(size=dim)
    masks, feats = [], []
    for i in range(4):
        m = rect(grid, 1 + i % 3, 5 + i % 3, 2 + i, 7 + i)
        f = np.where(m[..., None], obj_dir, bg_dir) + 0.3 * rng.normal(size=(*grid, dim))
        # two parts of the object differ, which the colours should show
        f[m & (np.arange(grid[1]) >= 4 + i)[None, :]] += 1.5 * rng.normal(size=dim)
        masks.append(m)
        feats.append(f.reshape(-1, dim))
    rgb, fg = pca_rgb(np.stack(feats), grid)
    assert rgb.shape == (4, *grid, 3) and fg.shape == (4, *grid)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert iou(fg, np.stack(masks)) > 0.9
    assert (rgb[~fg] == 0).all()
    assert np.ptp(rgb[fg], axis=0).max() == pytest.approx(1.0)
    # a threshold on the min-max scaled component gives the same split here
    _, fg_t = pca_rgb(np.stack(feats), grid, threshold=0.5)
    assert iou(fg_t, np.stack(masks)) > 0.9


def _first_pc_side(x):
    flat = x.reshape(-1, x.shape[-1]) - x.reshape(-1, x.shape[-1]).mean(axis=0)
    proj = flat @ np.linalg.svd(flat, full_matrices=False)[2][0]
    pos, neg = (proj > 0).sum(), (proj < 0).sum()
    if pos > neg or (pos == neg and proj[np.argmax(np.abs(proj))] < 0):
        proj = -proj
    return proj > 0


@pytest.mark.parametrize("shape", [(3, 15, 6), (2, 16, 6)])  # 45 patches; 32 with a 16/16 tie
def test_pca_rgb_first_component_reference(shape):
    rng = np.random.default_rng(71)
    x = rng.normal(size=shape) * np.array([5.0, 1, 1, 1, 1, 1])
    if shape[1] == 16:  # symmetric data: the split is exactly half and half
        x = np.concatenate([x[:1], -x[:1]])
    grid = (3, 5) if shape[1] == 15 else (4, 4)
    _, fg = pca_rgb(x, grid)
    want = _first_pc_side(x)
    assert want.sum() <= x.shape[0] * x.shape[1] / 2
    np.testing.assert_array_equal(fg.reshape(-1), want)
    _, fg_neg = pca_rgb(-x, grid)  # flipping every feature flips the component, not the answer
    np.testing.assert_array_equal(fg_neg.reshape(-1), _first_pc_side(-x))


def test_pca_rgb_constant_features_warn():
    with pytest.warns(UserWarning, match="equal"):
        rgb, fg = pca_rgb(np.ones((2, 9, 5)), None)
    assert (rgb == 0).all() and not fg.any()
