"""Tests for zoolens.analyses.similarity against float64 NumPy references (see also
cka_reference.py)."""


import numpy as np
import pytest
import torch

from cka_reference import ref_hsic1
from zoolens.analyses.similarity import (
    CKAAccumulator,
    LayerCKA,
    LayerMinibatchCKA,
    MinibatchCKA,
    linear_cka,
    mutual_knn,
    mutual_knn_matrix,
    unbiased_cka,
)
from zoolens.errors import InputError, NotFittedError


# ----------------------------------------------------------------------------- references

def _ref_cka(x, y):
    """Kornblith et al. 2019 through Gram matrices: HSIC = tr(K H L H) / (n - 1)^2."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def _ref_minibatch_cka(x, y, bounds):
    xy = np.mean([ref_hsic1(x[s:e], y[s:e]) for s, e in zip(bounds[:-1], bounds[1:])])
    xx = np.mean([ref_hsic1(x[s:e], x[s:e]) for s, e in zip(bounds[:-1], bounds[1:])])
    yy = np.mean([ref_hsic1(y[s:e], y[s:e]) for s, e in zip(bounds[:-1], bounds[1:])])
    return xy / np.sqrt(xx * yy)


def _ref_knn_sets(x, k):
    """k nearest other rows by cosine; ties go to the lower index (lexsort on (index, -sim))."""
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = z @ z.T
    out = []
    for i in range(len(x)):
        idx = np.array([j for j in range(len(x)) if j != i])
        order = np.lexsort((idx, -sims[i, idx]))
        out.append(set(idx[order[:k]].tolist()))
    return out


def _ref_mutual_knn(x, y, k):
    nx, ny = _ref_knn_sets(x, k), _ref_knn_sets(y, k)
    return float(np.mean([len(a & b) / k for a, b in zip(nx, ny)]))


def _pair(rng, n, d1, d2, noise=1.0):
    x = rng.normal(size=(n, d1))
    y = x @ rng.normal(size=(d1, d2)) + noise * rng.normal(size=(n, d2))
    return x, y


# ----------------------------------------------------------------------------- linear_cka

@pytest.mark.parametrize("n,d1,d2", [(60, 8, 12), (20, 100, 80), (30, 5, 200)])
def test_linear_cka_matches_gram_reference(n, d1, d2):
    rng = np.random.default_rng(n + d1)
    x, y = _pair(rng, n, d1, d2)
    x += 3.0  # a mean offset must not matter
    assert linear_cka(x, y) == pytest.approx(_ref_cka(x, y), abs=1e-10)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_linear_cka_invariances_and_torch_input():
    rng = np.random.default_rng(1)
    x, y = _pair(rng, 50, 6, 7)
    base = linear_cka(x, y)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x @ q * 5.0 + 2.0, y) == pytest.approx(base, abs=1e-12)
    for scale in (0.01, 1e-150, 1e150):  # no epsilon, no overflow
        assert linear_cka(scale * x, y) == pytest.approx(base, abs=1e-12)
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(base, abs=1e-12)
    # Unrelated representations of few samples have CKA well below related ones.
    assert linear_cka(rng.normal(size=(50, 6)), y) < base


@pytest.mark.parametrize("value", [0.0, 0.1, 1e6])
def test_linear_cka_constant_is_zero_with_warning(value):
    rng = np.random.default_rng(2)
    y = rng.normal(size=(10, 3))
    with pytest.warns(RuntimeWarning, match="constant"):
        assert linear_cka(np.full((10, 4), value), y) == 0.0
    with pytest.warns(RuntimeWarning, match="constant"):
        assert linear_cka(y, np.full((10, 4), value)) == 0.0


def test_linear_cka_bad_inputs():
    with pytest.raises(InputError, match="same samples"):
        linear_cka(np.zeros((5, 2)), np.zeros((6, 2)))
    with pytest.raises(InputError, match="x"):
        linear_cka(np.zeros(5), np.zeros((5, 2)))
    with pytest.raises(InputError, match="NaN"):
        linear_cka(np.full((5, 2), np.nan), np.zeros((5, 2)))


# ----------------------------------------------------------------------------- streaming exact CKA

def _random_splits(rng, n, parts):
    cuts = np.sort(rng.choice(np.arange(1, n), size=parts - 1, replace=False))
    return np.concatenate([[0], cuts, [n]])


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_accumulator_any_split_and_merge_equals_one_shot(offset, tmp_path):
    rng = np.random.default_rng(3)
    n = 200
    x, y = _pair(rng, n, 9, 5)
    x, y = x + offset, y - offset
    expected = _ref_cka(x - x.mean(0), y - y.mean(0))
    assert linear_cka(x, y) == pytest.approx(expected, abs=1e-9)
    for trial in range(4):
        bounds = _random_splits(rng, n, 6)
        accs = [CKAAccumulator(9, 5) for _ in range(3)]
        for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            accs[i % 3].update(x[s:e], y[s:e])  # each sees different first rows
        if trial % 2:  # resume one from disk
            np.savez(tmp_path / "acc.npz", **accs[1].state_dict())
            accs[1] = CKAAccumulator(9, 5).load_state_dict(dict(np.load(tmp_path / "acc.npz")))
        total = CKAAccumulator(9, 5).merge(accs[2]).merge(accs[0]).merge(accs[1])
        assert total.n_ == n
        assert total.result() == pytest.approx(expected, abs=1e-9)


def test_accumulator_torch_batches_and_empty_batch():
    rng = np.random.default_rng(4)
    x, y = _pair(rng, 64, 4, 6)
    acc = CKAAccumulator(4, 6)
    acc.update(torch.from_numpy(x[:30]), torch.from_numpy(y[:30]))
    acc.update(np.zeros((0, 4)), np.zeros((0, 6)))
    acc.update(x[30:], y[30:])
    assert acc.result() == pytest.approx(linear_cka(x, y), abs=1e-9)


def test_accumulator_constant_and_errors():
    rng = np.random.default_rng(5)
    acc = CKAAccumulator(3, 2)
    with pytest.raises(NotFittedError):
        acc.result()
    y = rng.normal(size=(12, 2))
    acc.update(np.full((5, 3), 0.1), y[:5]).update(np.full((7, 3), 0.1), y[5:])
    with pytest.warns(RuntimeWarning, match="^x is constant"):
        assert acc.result() == 0.0
    with pytest.raises(InputError, match="expected 3 features"):
        acc.update(np.zeros((4, 4)), np.zeros((4, 2)))
    with pytest.raises(InputError, match="same samples"):
        acc.update(np.zeros((4, 3)), np.zeros((5, 2)))
    with pytest.raises(InputError, match="dims"):
        acc.merge(CKAAccumulator(3, 3))


def test_layer_cka_matrix_equals_pairwise_linear_cka():
    rng = np.random.default_rng(6)
    n = 90
    base = rng.normal(size=(n, 5))
    fa = [base @ rng.normal(size=(5, d)) + 0.5 * rng.normal(size=(n, d)) for d in (3, 8)]
    fb = [base @ rng.normal(size=(5, d)) + rng.normal(size=(n, d)) for d in (4, 2, 6)]
    fb[1] = np.full((n, 2), 7.0)  # a constant layer
    acc1, acc2 = LayerCKA([3, 8], [4, 2, 6]), LayerCKA([3, 8], [4, 2, 6])
    acc1.update([f[:40] for f in fa], [f[:40] for f in fb])
    acc2.update([f[40:] for f in fa], [f[40:] for f in fb])
    with pytest.warns(RuntimeWarning, match=r"feats_b\[1\]"):
        got = acc1.merge(acc2).result()
    assert got.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            want = 0.0 if j == 1 else _ref_cka(fa[i], fb[j])
            assert got[i, j] == pytest.approx(want, abs=1e-9)


# ----------------------------------------------------------------------------- minibatch unbiased CKA

def test_unbiased_full_batch_and_minibatches_match_formula():
    rng = np.random.default_rng(7)
    x, y = _pair(rng, 30, 6, 40)
    x = x + 5.0  # the estimator is shift invariant; centring inside must not change it
    assert unbiased_cka(x, y) == pytest.approx(_ref_minibatch_cka(x, y, [0, 30]), abs=1e-10)
    bounds = np.linspace(0, 30, 4).round().astype(int)
    assert unbiased_cka(x, y, batch_size=10) == pytest.approx(_ref_minibatch_cka(x, y, bounds), abs=1e-10)
    # Flattened maps: (n, C, H, W) is (n, C*H*W).
    maps = rng.normal(size=(30, 2, 3, 4))
    assert unbiased_cka(maps, y) == pytest.approx(unbiased_cka(maps.reshape(30, -1), y), abs=1e-12)


def test_minibatch_merge_and_state_equal_one_shot():
    rng = np.random.default_rng(8)
    x, y = _pair(rng, 48, 5, 7)
    one = MinibatchCKA()
    for s in range(0, 48, 8):
        one.update(x[s:s + 8], y[s:s + 8])
    a, b = MinibatchCKA(), MinibatchCKA()
    for s in range(0, 24, 8):
        a.update(x[s:s + 8], y[s:s + 8])
    for s in range(24, 48, 8):
        b.update(torch.from_numpy(x[s:s + 8]), torch.from_numpy(y[s:s + 8]))
    b = MinibatchCKA().load_state_dict(b.state_dict())
    assert a.merge(b).result() == pytest.approx(one.result(), abs=1e-12)
    assert one.result() == pytest.approx(
        _ref_minibatch_cka(x, y, np.arange(0, 49, 8)), abs=1e-10)


def test_minibatch_converges_to_population_and_linear_cka():
    rng = np.random.default_rng(9)
    d1, d2, n = 6, 4, 12000
    w = rng.normal(size=(d1, d2))
    x = rng.normal(size=(n, d1))
    y = x @ w + 2.0 * rng.normal(size=(n, d2))
    # Population CKA: ||Cov(x, y)||_F^2 / (||Cov x||_F ||Cov y||_F) with Cov x = I.
    pop = np.sum(w * w) / (np.sqrt(d1) * np.linalg.norm(w.T @ w + 4.0 * np.eye(d2)))
    mb = unbiased_cka(x, y, batch_size=100)
    assert mb == pytest.approx(pop, abs=0.02)
    assert unbiased_cka(x[:2000], y[:2000]) == pytest.approx(pop, abs=0.03)
    assert linear_cka(x, y) == pytest.approx(mb, abs=0.02)


def test_unbiased_scale_invariance_constant_and_errors():
    rng = np.random.default_rng(10)
    x, y = _pair(rng, 40, 5, 5)
    base = unbiased_cka(x, y, batch_size=10)
    assert unbiased_cka(0.01 * x, y, batch_size=10) == pytest.approx(base, abs=1e-12)
    assert unbiased_cka(x, 1e-30 * y, batch_size=10) == pytest.approx(base, abs=1e-12)
    with pytest.warns(RuntimeWarning, match="HSIC of x is not positive"):
        assert unbiased_cka(np.full((40, 5), 0.1), y, batch_size=10) == 0.0
    with pytest.raises(InputError, match="at least 4"):
        unbiased_cka(x, y, batch_size=3)
    with pytest.raises(InputError, match="at least 4"):
        MinibatchCKA().update(x[:3], y[:3])
    with pytest.raises(NotFittedError):
        MinibatchCKA().result()


def test_layer_minibatch_matrix_equals_pairwise():
    rng = np.random.default_rng(11)
    fa = [rng.normal(size=(24, d)) for d in (3, 10)]
    fb = [fa[0] @ rng.normal(size=(3, 4)), rng.normal(size=(24, 2, 2))]
    acc = LayerMinibatchCKA(2, 2)
    for s in (0, 12):
        acc.update([f[s:s + 12] for f in fa], [f[s:s + 12] for f in fb])
    got = acc.result()
    for i in range(2):
        for j in range(2):
            want = _ref_minibatch_cka(fa[i], fb[j].reshape(24, -1), [0, 12, 24])
            assert got[i, j] == pytest.approx(want, abs=1e-10)


# ----------------------------------------------------------------------------- mutual k-NN

@pytest.mark.parametrize("k,chunk", [(1, 7), (5, 1024), (10, 13)])
def test_mutual_knn_matches_bruteforce(k, chunk):
    rng = np.random.default_rng(12)
    x, y = _pair(rng, 45, 6, 8, noise=2.0)
    got = mutual_knn(x, y, k=k, chunk_size=chunk)
    assert got == pytest.approx(_ref_mutual_knn(x, y, k), abs=1e-12)
    assert 0.0 < got < 1.0


def test_mutual_knn_ties_go_to_lower_index():
    rng = np.random.default_rng(13)
    # +-1 rows of width 16: unit rows have entries +-1/4, so every inner product is exact and
    # there are many exact ties; duplicate rows tie too.
    x = rng.choice([-1.0, 1.0], size=(40, 16))
    y = rng.choice([-1.0, 1.0], size=(40, 16))
    x[20:25] = x[0]
    for k in (3, 8):
        assert mutual_knn(x, y, k=k, chunk_size=9) == pytest.approx(_ref_mutual_knn(x, y, k), abs=1e-12)


def test_mutual_knn_identical_scale_and_errors():
    rng = np.random.default_rng(14)
    x = rng.normal(size=(30, 5))
    assert mutual_knn(x, 3.0 * x, k=4) == 1.0
    assert mutual_knn(x, torch.from_numpy(x).float(), k=4) == 1.0
    with pytest.raises(InputError, match="k"):
        mutual_knn(x, x, k=30)
    with pytest.raises(InputError, match="k"):
        mutual_knn(x, x, k=0)
    with pytest.raises(InputError, match="rows"):
        mutual_knn(x, x[:10], k=3)


def test_mutual_knn_matrix_equals_pairwise():
    rng = np.random.default_rng(15)
    fa = [rng.normal(size=(35, d)) for d in (4, 9)]
    fb = [fa[0] + 0.3 * rng.normal(size=(35, 4)), rng.normal(size=(35, 3))]
    got = mutual_knn_matrix(fa, fb, k=5, chunk_size=8)
    assert got.shape == (2, 2)
    for i in range(2):
        for j in range(2):
            assert got[i, j] == pytest.approx(mutual_knn(fa[i], fb[j], k=5), abs=1e-12)
