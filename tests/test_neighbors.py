"""Exact inner-product top-k (`zoolens.neighbors`) against NumPy references written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoolens.errors import InputError
from zoolens.neighbors import _stable_topk, inverse_norms, top_k_per_row, top_k_similar


def _ref_top_k(queries, base, k):
    """(sims, idx): float64 products ranked by (-similarity, base index)."""
    sims = np.asarray(queries, np.float64) @ np.asarray(base, np.float64).T
    idx = np.stack([np.lexsort((np.arange(sims.shape[1]), -row))[:k] for row in sims])
    return np.take_along_axis(sims, idx, 1), idx


def test_top_k_similar_exact_with_ties():
    rng = np.random.default_rng(0)
    # Small integers: every float32 product is exact, so ties are exact and the float64
    # reference ranks the same numbers.
    base = rng.integers(-2, 3, size=(3000, 6)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(24, 6)).astype(np.float32)
    for k in (1, 3, 17, 30):  # 3000 columns: up to k = 22 the pruned top-k, then torch.topk
        sims, idx = top_k_similar(queries, base, k, device="cpu")
        ref_sims, ref_idx = _ref_top_k(queries, base, k)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(sims, ref_sims)
    ref_idx = _ref_top_k(queries, base, 3)[1]
    for chunk in (1, 7):
        idx = top_k_similar(queries, base, 3, chunk_size=chunk, device="cpu")[1]
        np.testing.assert_array_equal(idx, ref_idx)


def test_top_k_similar_normalize():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(500, 16))
    queries = rng.normal(size=(30, 16))
    sims, idx = top_k_similar(queries, base, 5, normalize=True, device="cpu")
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    ref_sims, ref_idx = _ref_top_k(unit(queries), unit(base), 5)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, rtol=0, atol=1e-6)
    raw_idx = top_k_similar(queries, base, 5, device="cpu")[1]
    np.testing.assert_array_equal(raw_idx, _ref_top_k(queries, base, 5)[1])
    assert not np.array_equal(raw_idx, idx)  # the inner product ranks differently


def test_top_k_similar_caps_k_and_validates():
    rng = np.random.default_rng(2)
    base, queries = rng.normal(size=(4, 3)), rng.normal(size=(2, 3))
    with pytest.warns(UserWarning, match="exceeds the 4 base rows"):
        sims, idx = top_k_similar(queries, base, 10, device="cpu")
    assert sims.shape == idx.shape == (2, 4)
    np.testing.assert_array_equal(np.sort(idx, axis=1), np.tile(np.arange(4), (2, 1)))
    with pytest.raises(InputError, match="k"):
        top_k_similar(queries, base, 0)
    with pytest.raises(InputError, match="queries"):
        top_k_similar(queries[:, :2], base, 1)
    assert top_k_similar(np.zeros((0, 3)), base, 2)[0].shape == (0, 2)


def test_top_k_similar_exclude_self():
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, size=(300, 4)).astype(np.float32)  # exact ties, duplicate rows
    sims64 = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(sims64, -np.inf)  # the reference: every other row, ties by lower index
    for k in (1, 7, 40):
        for chunk in (None, 13):
            sims, idx = top_k_similar(x, x, k, exclude_self=True, chunk_size=chunk,
                                      device="cpu")
            ref = np.stack([np.lexsort((np.arange(300), -row))[:k] for row in sims64])
            np.testing.assert_array_equal(idx, ref)
            np.testing.assert_array_equal(sims, np.take_along_axis(sims64, ref, 1))
    # a duplicate of a row is its nearest other row (similarity equal to its own)
    dup = np.vstack([x[:5], x[:5]])
    np.testing.assert_array_equal(top_k_similar(dup, dup, 1, exclude_self=True,
                                                normalize=True, device="cpu")[1][:, 0] % 5,
                                  np.arange(10) % 5)
    with pytest.warns(UserWarning, match="other than the query itself; using k=4"):
        assert top_k_similar(x[:5], x[:5], 9, exclude_self=True)[1].shape == (5, 4)
    with pytest.raises(InputError, match="exclude_self"):
        top_k_similar(x[:4], x, 2, exclude_self=True)


def test_inverse_norms():
    x = np.array([[3.0, 4.0], [0.0, 2.0], [1e-30, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(inverse_norms(x, block_bytes=16), [0.2, 0.5, 1e30], rtol=1e-6)
    with pytest.raises(InputError, match=r"feats: row 1 is all zeros \(2 such rows\)"):
        inverse_norms(np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), "feats")


@pytest.mark.parametrize("n, threads", [(1024, 1), (4099, 2), (20000, 2)])
def test_pruned_top_k_exact(n, threads):
    rng = np.random.default_rng(n)
    rows = [rng.normal(size=(140, n)), rng.integers(-3, 4, size=(5, n)),  # heavy ties
            np.full((2, n), 1.5)]                                            # all equal
    x = torch.from_numpy(np.concatenate(rows).astype(np.float32))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # 147 rows: two row slices in parallel with 2 threads
    try:
        for k in (1, 4, 8, (n // 64) // 2):  # the largest k that is still pruned
            vals, idx = top_k_per_row(x, k)
            np.testing.assert_array_equal(vals.numpy(), -np.sort(-x.numpy(), axis=1)[:, :k])
            np.testing.assert_array_equal(torch.gather(x, 1, idx), vals)
            assert all(len(set(row.tolist())) == k for row in idx)  # distinct columns
    finally:
        torch.set_num_threads(before)


def test_stable_topk_boundaries_with_pruning():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=(6, 4096)).astype(np.float32)  # each value ~800 times
    idx = _stable_topk(torch.from_numpy(x), 9, [2, 9]).numpy()
    for row, got in zip(x, idx):
        ref = np.lexsort((np.arange(len(row)), -row))
        for k in (2, 9):  # each prefix is the top-k set with ties to the lower index
            assert set(got[:k]) == set(ref[:k])
