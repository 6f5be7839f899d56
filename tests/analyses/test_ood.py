"""OOD scores against independent float64 NumPy references; metrics against scikit-learn."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve

from zoolens.analyses.ood import (OODMetrics, energy, feature_norm, knn, mahalanobis, max_logit,
                                  metrics, msp, negative_aware_norm, vim)
from zoolens.errors import InputError

EPS = np.finfo(np.float64).eps


# --------------------------------------------------------------------------------------------
# References, written plainly in float64
# --------------------------------------------------------------------------------------------

def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def ref_knn(train, test, k):
    """-(squared distance to the k-th nearest normalised training row), k capped at n_train."""
    tr, te = _unit(train), _unit(test)
    dist = ((te[:, None, :] - tr[None, :, :]) ** 2).sum(-1)
    return -np.sort(dist, axis=1)[:, min(k, len(tr)) - 1]


def _pinv(cov):
    # SVD-based pseudo-inverse (an independent route from the eigendecomposition under test),
    # with scipy.linalg.pinvh's default cut-off: d * eps * the largest singular value.
    return np.linalg.pinv(cov, rtol=cov.shape[0] * EPS)


def ref_mahalanobis(train, labels, test, relative=False):
    tr = np.asarray(train, dtype=np.float64)
    te = np.asarray(test, dtype=np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    means = np.stack([tr[labels == c].mean(0) for c in classes])
    centred = np.concatenate([tr[labels == c] - means[i] for i, c in enumerate(classes)])
    prec = _pinv(centred.T @ centred / len(tr))
    per_class = np.stack([-np.einsum("ij,jk,ik->i", te - m, prec, te - m) for m in means], 1)
    conf = per_class.max(1)
    if relative:
        mu0 = tr.mean(0)
        prec0 = _pinv((tr - mu0).T @ (tr - mu0) / len(tr))
        conf = conf + np.einsum("ij,jk,ik->i", te - mu0, prec0, te - mu0)
    return conf


def ref_logsumexp(logits):
    return np.log(np.sum(np.exp(logits), axis=1))


def ref_vim(train, test, weight, bias, dim):
    tr = np.asarray(train, dtype=np.float64)
    te = np.asarray(test, dtype=np.float64)
    u = -np.linalg.pinv(weight) @ bias
    # Principal directions from the SVD of the shifted training rows (right singular vectors
    # are the eigenvectors of their second moment), not from an eigendecomposition.
    _, _, vt = np.linalg.svd(tr - u, full_matrices=False)
    principal = vt[:dim].T

    def residual(x):
        y = x - u
        return np.linalg.norm(y - y @ principal @ principal.T, axis=1)

    alpha = np.mean(np.max(tr @ weight.T + bias, axis=1)) / np.mean(residual(tr))
    return ref_logsumexp(te @ weight.T + bias) - alpha * residual(te)


def ref_metrics(conf_id, conf_ood, recall=0.95):
    """OpenOOD's definitions, computed with scikit-learn (every ROC threshold kept)."""
    conf = np.r_[conf_id, conf_ood]
    is_ood = np.r_[np.zeros(len(conf_id)), np.ones(len(conf_ood))]
    fpr, tpr, _ = roc_curve(is_ood, -conf, drop_intermediate=False)
    p_in, r_in, _ = precision_recall_curve(1 - is_ood, conf)
    p_out, r_out, _ = precision_recall_curve(is_ood, -conf)
    return dict(auroc=roc_auc_score(is_ood, -conf), aupr_in=auc(r_in, p_in),
                aupr_out=auc(r_out, p_out), fpr=fpr[np.argmax(tpr >= recall)])


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# k-NN
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_train, dim, k", [(300, 16, 1), (300, 16, 20), (3000, 32, 5),
                                             (3000, 32, 50), (4000, 8, 200)])
def test_knn_matches_reference(n_train, dim, k):
    rng = np.random.default_rng(n_train + dim + k)
    means = rng.normal(size=(6, dim))
    train = means[rng.integers(0, 6, n_train)] + rng.normal(size=(n_train, dim))
    test = means[rng.integers(0, 6, 60)] + rng.normal(size=(60, dim))
    train, test = train.astype(np.float32), test.astype(np.float32)
    np.testing.assert_allclose(knn(train, test, k, device="cpu"), ref_knn(train, test, k),
                               rtol=1e-9, atol=1e-12)


def test_knn_float64_and_torch_inputs():
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(200, 12)), rng.normal(size=(30, 12))
    ref = ref_knn(train, test, 7)
    np.testing.assert_allclose(knn(train, test, 7, device="cpu"), ref, rtol=1e-9, atol=1e-12)
    got = knn(torch.from_numpy(train), torch.from_numpy(test), 7, device="cpu")
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_knn_exact_where_float32_ranking_is_not():
    rng = np.random.default_rng(2)
    q = rng.normal(size=16)
    q /= np.linalg.norm(q)
    # Training rows whose cosines to the queries differ by less than float32 resolves: a
    # float32 search returns the k-th value off by ~1e-7; the float64 recomputation must not.
    # 400 near-equal rows overflow the candidate list (the per-row fallback); 12 near-equal
    # rows among far ones fit inside it (the windowed recomputation).
    crowded = q + rng.normal(size=(400, 16)) * 1e-4
    sparse = np.concatenate([q + rng.normal(size=(12, 16)) * 1e-4, rng.normal(size=(300, 16))])
    test = q + rng.normal(size=(5, 16)) * 1e-5
    for train, k in ((crowded, 7), (sparse, 6)):
        ref = ref_knn(train, test, k)
        t32 = _unit(train).astype(np.float32)
        q32 = _unit(test).astype(np.float32)
        naive = -(2.0 - 2.0 * np.sort(q32 @ t32.T, axis=1)[:, -k].astype(np.float64))
        assert np.abs(naive - ref).max() > 1e-8  # the float32 answer is measurably wrong here
        np.testing.assert_allclose(knn(train, test, k, device="cpu"), ref, rtol=1e-9,
                                   atol=1e-13)


def test_knn_zero_rows():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(10, 5)).astype(np.float32)
    train[[1, 4, 8]] = 0.0
    train[6] *= 1e-39  # subnormal in float32, but a direction all the same
    test = rng.normal(size=(6, 5)).astype(np.float32)
    test[[0, 3]] = 0.0
    for k in range(1, 11):  # every case of merging the 3 zero rows with the 7 others
        with pytest.warns(UserWarning, match="all-zero"):
            got = knn(train, test, k, device="cpu")
        np.testing.assert_allclose(got, ref_knn(train, test, k), rtol=1e-9, atol=1e-12)
    only_zero = np.zeros((4, 5))
    got = _quiet(knn, only_zero, test, 2, device="cpu")
    np.testing.assert_allclose(got, ref_knn(only_zero, test, 2), atol=1e-12)
    assert set(got) == {0.0, -1.0}


def test_knn_k_capped_never_padded():
    rng = np.random.default_rng(4)
    train, test = rng.normal(size=(12, 6)), rng.normal(size=(9, 6))
    with pytest.warns(UserWarning, match="exceeds the 12 training rows"):
        got = knn(train, test, 50, device="cpu")
    np.testing.assert_allclose(got, ref_knn(train, test, 12), rtol=1e-9, atol=1e-12)
    assert (got >= -4.0).all() and (got <= 0.0).all()  # a real distance, not a sentinel


def test_knn_chunk_size_does_not_change_result():
    rng = np.random.default_rng(5)
    train = rng.normal(size=(2500, 24)).astype(np.float32)
    test = rng.normal(size=(37, 24)).astype(np.float32)
    full = knn(train, test, 10, device="cpu")
    for chunk in (1, 8, 1000):
        np.testing.assert_allclose(knn(train, test, 10, chunk_size=chunk, device="cpu"), full,
                                   rtol=1e-14, atol=0)


def test_knn_no_test_rows():
    assert knn(np.ones((4, 3)), np.zeros((0, 3)), 2, device="cpu").shape == (0,)


# --------------------------------------------------------------------------------------------
# Mahalanobis and RMDS
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("relative", [False, True])
def test_mahalanobis_full_rank(relative):
    rng = np.random.default_rng(6)
    means = rng.normal(size=(4, 8)) * 3
    labels = rng.integers(0, 4, 300)
    mix = rng.normal(size=(8, 8))  # correlated features
    train = (means[labels] + rng.normal(size=(300, 8)) @ mix).astype(np.float32)
    test = (means[rng.integers(0, 4, 50)] + rng.normal(size=(50, 8)) @ mix * 2).astype(np.float32)
    ref = ref_mahalanobis(train, labels, test, relative)
    got = mahalanobis(train, labels, test, relative=relative)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    for chunk in (1, 7):  # one pass in chunks gives the same numbers
        np.testing.assert_allclose(mahalanobis(train, labels, test, relative=relative,
                                               chunk_size=chunk), got, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("relative", [False, True])
def test_mahalanobis_singular_covariance_and_one_image_class(relative):
    rng = np.random.default_rng(7)
    # 12 images, 20 features: the covariance has rank <= 9. Class "c" has a single image.
    train = rng.normal(size=(12, 20))
    labels = np.array(["a"] * 6 + ["b"] * 5 + ["c"])
    test = rng.normal(size=(15, 20))
    got = mahalanobis(train, labels, test, relative=relative)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref_mahalanobis(train, labels, test, relative),
                               rtol=1e-9, atol=1e-9)


def test_mahalanobis_every_class_one_image():
    # Class-centred rows are all zero: covariance 0, pseudo-inverse 0, every distance 0.
    rng = np.random.default_rng(8)
    train, test = rng.normal(size=(5, 4)), rng.normal(size=(3, 4))
    got = mahalanobis(train, np.arange(5), test)
    np.testing.assert_array_equal(got, np.zeros(3))
    np.testing.assert_allclose(got, ref_mahalanobis(train, np.arange(5), test), atol=1e-12)


def test_mahalanobis_torch_inputs():
    rng = np.random.default_rng(9)
    train, test = rng.normal(size=(60, 5)), rng.normal(size=(10, 5))
    labels = rng.integers(0, 3, 60)
    got = mahalanobis(torch.from_numpy(train), torch.from_numpy(labels), torch.from_numpy(test))
    np.testing.assert_allclose(got, ref_mahalanobis(train, labels, test), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------------
# Logit scores and ViM
# --------------------------------------------------------------------------------------------

def test_logit_scores_match_reference():
    rng = np.random.default_rng(10)
    logits = rng.normal(size=(40, 7)) * 4
    np.testing.assert_allclose(energy(logits), ref_logsumexp(logits), rtol=1e-12)
    np.testing.assert_allclose(energy(logits, temperature=2.5),
                               2.5 * ref_logsumexp(logits / 2.5), rtol=1e-12)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(msp(logits), probs.max(1), rtol=1e-12)
    np.testing.assert_array_equal(max_logit(logits), logits.max(1))


def test_logit_scores_do_not_overflow():
    logits = np.array([[1000.0, 1000.0, 0.0], [-1000.0, -1000.0, -1000.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e, p = energy(logits), msp(logits)
    np.testing.assert_allclose(e, [1000 + np.log(2), -1000 + np.log(3)], rtol=1e-15)
    np.testing.assert_allclose(p, [0.5, 1 / 3], rtol=1e-15)
    assert msp(np.array([[3.0]]))[0] == 1.0


def test_vim_matches_reference():
    rng = np.random.default_rng(11)
    d, n_cls = 12, 5
    weight = rng.normal(size=(n_cls, d))
    bias = rng.normal(size=n_cls)
    scales = np.linspace(3, 0.2, d)  # distinct eigenvalues: the principal subspace is unique
    train = rng.normal(size=(400, d)) * scales + 1.0
    test = rng.normal(size=(50, d)) * scales[::-1] + 1.0
    for dim in (1, 4, 11):
        ref = ref_vim(train, test, weight, bias, dim)
        np.testing.assert_allclose(vim(train, test, weight, bias, dim), ref, rtol=1e-9,
                                   atol=1e-9)
    got = vim(train.astype(np.float32), test.astype(np.float32), torch.from_numpy(weight),
              torch.from_numpy(bias), 4, chunk_size=9)
    ref = ref_vim(train.astype(np.float32), test.astype(np.float32), weight, bias, 4)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)


def test_vim_degenerate_inputs():
    rng = np.random.default_rng(12)
    weight, bias = rng.normal(size=(3, 6)), rng.normal(size=3)
    train = rng.normal(size=(20, 6))
    with pytest.raises(InputError, match="dim"):
        vim(train, train, weight, bias, 6)
    with pytest.raises(InputError, match="weight"):
        vim(train, train, weight[:, :5], bias, 2)
    with pytest.raises(InputError, match="bias"):
        vim(train, train, weight, bias[:2], 2)
    # Two training rows around the origin u span a 2D subspace: zero residual at dim=2.
    u = -np.linalg.pinv(weight) @ bias
    flat = u + rng.normal(size=(2, 6))
    with pytest.raises(InputError, match="residual"):
        vim(flat, train, weight, bias, 2)


# --------------------------------------------------------------------------------------------
# Feature norms
# --------------------------------------------------------------------------------------------

def test_feature_norms_match_reference():
    rng = np.random.default_rng(13)
    x = np.maximum(rng.normal(size=(30, 9)), 0.0)  # post-ReLU: many exact zeros
    x[4] = 0.0                                     # an all-zero row
    x[5] = -np.abs(rng.normal(size=9))             # no active unit (e.g. GELU outputs)
    for p in (1, 2, np.inf):
        ref = [np.sum(np.abs(row) ** p) ** (1 / p) if np.isfinite(p) else np.abs(row).max()
               for row in x]
        np.testing.assert_allclose(feature_norm(x, ord=p), ref, rtol=1e-12)
    ref_nan = []
    for row in x:
        active = sum(1 for a in row if a > 0)
        ref_nan.append(sum(abs(a) for a in row) / max(active, 1))
    got = negative_aware_norm(x)
    np.testing.assert_allclose(got, ref_nan, rtol=1e-12)
    assert got[4] == 0.0 and np.isfinite(got).all()
    with pytest.raises(InputError, match="ord"):
        feature_norm(x, ord=0.5)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(5, 300, 2)
    # Rounded scores: many ties, inside each set and across ID and OOD.
    conf_id = np.round(rng.normal(0.8, 1.0, n_id), 1)
    conf_ood = np.round(rng.normal(0.0, 1.0, n_ood), 1)
    for recall in (0.95, 0.5, 1.0):
        got = metrics(conf_id, conf_ood, recall=recall)
        ref = ref_metrics(conf_id, conf_ood, recall)
        for name, value in ref.items():
            assert getattr(got, name) == pytest.approx(value, rel=1e-12, abs=1e-15), name
        assert (got.n_id, got.n_ood, got.recall) == (n_id, n_ood, recall)


def test_metrics_hand_cases():
    perfect = metrics([3.0, 2.0, 2.5], [0.0, 1.0])
    assert (perfect.auroc, perfect.aupr_in, perfect.aupr_out, perfect.fpr) == (1.0, 1.0, 1.0, 0.0)
    reversed_ = metrics([0.0, 1.0], [3.0, 2.0, 2.5])
    assert reversed_.auroc == 0.0 and reversed_.fpr == 1.0
    # Constant scores: one threshold flags everything. AUPR = (1 + prevalence) / 2.
    const = metrics(np.full(6, 0.3), np.full(2, 0.3))
    assert const.auroc == 0.5 and const.fpr == 1.0
    assert const.aupr_in == pytest.approx((1 + 6 / 8) / 2)
    assert const.aupr_out == pytest.approx((1 + 2 / 8) / 2)
    for name, value in ref_metrics(np.full(6, 0.3), np.full(2, 0.3)).items():
        assert getattr(const, name) == pytest.approx(value, rel=1e-12)
    # 20 OOD: catching 19 of them (95%) costs the one ID sample ranked among them.
    conf_ood = -np.arange(20.0)          # OOD-ness 0..19
    conf_id = np.array([-18.5, 5.0, 6.0])  # one ID sample between OOD 18 and 19
    assert metrics(conf_id, conf_ood).fpr == pytest.approx(1 / 3)


def test_fpr_keeps_every_threshold():
    # A run of tied (ID, OOD) pairs makes a straight diagonal ROC segment with equal steps;
    # roc_curve's default drop_intermediate=True (OpenOOD's call) drops its inner points, among
    # them the first one reaching 95% TPR. The definition reads the FPR there.
    # OOD-ness (-conf): 16 OOD alone at 30..45, then 4 thresholds 23..20 of one OOD + one ID
    # each (ROC points (1, 17) .. (4, 20) in counts), then 10 ID alone below.
    conf_ood = np.r_[-np.arange(30.0, 46.0), [-20.0, -21.0, -22.0, -23.0]]  # 20 OOD
    conf_id = np.r_[[-20.0, -21.0, -22.0, -23.0], np.arange(10.0)]         # 14 ID
    got = metrics(conf_id, conf_ood)
    ref = ref_metrics(conf_id, conf_ood)
    assert got.fpr == ref["fpr"] == 3 / 14  # 19 of 20 OOD caught with 3 ID flagged
    is_ood = np.r_[np.zeros(14), np.ones(20)]
    fpr, tpr, _ = roc_curve(is_ood, -np.r_[conf_id, conf_ood])  # OpenOOD's exact call
    assert fpr[np.argmax(tpr >= 0.95)] == 4 / 14                 # a later threshold


def test_metrics_json_roundtrip():
    m = metrics([1.0, 2.0, 0.5], [0.0, 0.7])
    back = OODMetrics.from_json(m.to_json())
    assert back == m and json.loads(m.to_json())["fpr"] == m.fpr


# --------------------------------------------------------------------------------------------
# Planted data: every feature score separates far outliers perfectly
# --------------------------------------------------------------------------------------------

def test_planted_data_reaches_auroc_one():
    rng = np.random.default_rng(14)
    n_cls, d = 4, 32

    def id_rows(n):
        # Post-ReLU-like features: each class drives its own block of 8 units strongly.
        y = rng.integers(0, n_cls, n)
        x = np.maximum(rng.normal(0.0, 0.1, (n, d)), 0.0)
        for c in range(n_cls):
            x[y == c, 8 * c:8 * c + 8] += rng.normal(5.0, 0.1, ((y == c).sum(), 8))
        return x, y

    train, labels = id_rows(400)
    test_id, _ = id_rows(100)
    # Diffuse, weak activations: far from every cluster, smaller norms, no block switched on.
    test_ood = np.abs(rng.normal(0.0, 0.6, (100, d)))
    weight = np.stack([train[labels == c].mean(0) for c in range(n_cls)])
    weight /= np.linalg.norm(weight, axis=1, keepdims=True)
    bias = np.zeros(n_cls)

    def feature_scores(x):
        return {
            "knn": knn(train, x, 10, device="cpu"),
            "mahalanobis": mahalanobis(train, labels, x),
            "rmds": mahalanobis(train, labels, x, relative=True),
            "vim": vim(train, x, weight, bias, n_cls),
            "feature_norm_l2": feature_norm(x),
            "feature_norm_l1": feature_norm(x, ord=1),
            "nan": negative_aware_norm(x),
            "energy": energy(x @ weight.T + bias),
            "msp": msp(x @ weight.T + bias),
            "max_logit": max_logit(x @ weight.T + bias),
        }

    conf_id, conf_ood = feature_scores(test_id), feature_scores(test_ood)
    for name in conf_id:
        m = metrics(conf_id[name], conf_ood[name])
        assert (m.auroc, m.fpr, m.aupr_in, m.aupr_out) == (1.0, 0.0, 1.0, 1.0), name


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

def test_input_errors():
    rng = np.random.default_rng(15)
    train, test = rng.normal(size=(20, 4)), rng.normal(size=(5, 4))
    bad = test.copy()
    bad[1, 2] = np.nan
    with pytest.raises(InputError, match="test"):
        knn(train, bad)
    with pytest.raises(InputError, match="test"):
        knn(train, test[:, :3])
    with pytest.raises(InputError, match="k"):
        knn(train, test, 0)
    with pytest.raises(InputError, match="k"):
        knn(train, test, True)
    with pytest.raises(InputError, match="train"):
        knn(train[0], test)
    with pytest.raises(InputError, match="train_labels"):
        mahalanobis(train, np.zeros(19), test)
    with pytest.raises(InputError, match="test"):
        mahalanobis(train, np.zeros(20), test[:, :2])
    with pytest.raises(InputError, match="temperature"):
        energy(test, temperature=0.0)
    with pytest.raises(InputError, match="logits"):
        msp(np.zeros((3, 0)))
    with pytest.raises(InputError, match="conf_ood"):
        metrics([1.0, 2.0], [])
    with pytest.raises(InputError, match="conf_id"):
        metrics([[1.0]], [1.0])
    with pytest.raises(InputError, match="recall"):
        metrics([1.0], [0.0], recall=0.0)
