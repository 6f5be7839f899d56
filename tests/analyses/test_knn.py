"""DINO k-NN rule against an independent NumPy float64 implementation written here."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from zoolens.analyses.probes import knn as knn_mod
from zoolens.analyses.probes.knn import (KNNProbe, KNNResult, evaluate_knn, knn_classify,
                                         knn_scores, top_k_accuracy)
from zoolens.errors import InputError, NotFittedError


def _ref_votes(train, labels, test, k, temperature, shift=False):
    """(classes, (m, C) votes): float64, stable ranking by (-similarity, train index)."""
    tr = np.asarray(train, dtype=np.float64)
    te = np.asarray(test, dtype=np.float64)
    ntr = np.linalg.norm(tr, axis=1, keepdims=True)
    nte = np.linalg.norm(te, axis=1, keepdims=True)
    tr = np.divide(tr, ntr, out=np.zeros_like(tr), where=ntr > 0)
    te = np.divide(te, nte, out=np.zeros_like(te), where=nte > 0)
    sims = te @ tr.T
    classes, codes = np.unique(labels, return_inverse=True)
    n = len(tr)
    k = min(k, n)
    votes = np.zeros((len(te), len(classes)))
    for i in range(len(te)):
        top = np.lexsort((np.arange(n), -sims[i]))[:k]
        base = sims[i, top[0]] if shift else 0.0
        for j in top:
            votes[i, codes[j]] += np.exp((sims[i, j] - base) / temperature)
    return classes, votes


def _ref_predict(train, labels, test, k, temperature, shift=False, rtol=1e-9):
    """Lowest class among those whose vote equals the maximum (up to rounding)."""
    classes, votes = _ref_votes(train, labels, test, k, temperature, shift)
    best = votes.max(1, keepdims=True)
    return classes[np.argmax(votes >= best * (1 - rtol), axis=1)]


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(5, 16)) * 0.8
    y = rng.integers(0, 5, 300)
    x = (means[y] + rng.normal(size=(300, 16))).astype(np.float32)
    yq = rng.integers(0, 5, 80)
    q = (means[yq] + rng.normal(size=(80, 16))).astype(np.float32)
    return x, y, q, yq


@pytest.mark.parametrize("temperature", [0.07, 0.005])
def test_matches_float64_reference(data, temperature):
    x, y, q, _ = data
    ks = [1, 5, 20, 299]
    pred = knn_classify(x, y, q, ks, temperature, device="cpu")
    scores = knn_scores(x, y, q, ks, temperature, device="cpu")
    for k in ks:
        np.testing.assert_array_equal(pred[k], _ref_predict(x, y, q, k, temperature))
        # Votes match up to one positive factor per row (the shift by the row maximum).
        _, ref = _ref_votes(x, y, q, k, temperature)
        np.testing.assert_allclose(scores[k] / scores[k].sum(1, keepdims=True),
                                   ref / ref.sum(1, keepdims=True), rtol=1e-4, atol=1e-12)
        assert scores[k].max(1).max() <= k  # shifted votes: each weight is at most 1


def test_k_capped_at_train_size(data):
    x, y, q, _ = data
    x, y = x[:12], y[:12]
    with pytest.warns(UserWarning, match="exceeds the 12 training samples"):
        pred = knn_classify(x, y, q, [5, 200], device="cpu")
    assert set(pred) == {5, 200}
    np.testing.assert_array_equal(pred[200], _ref_predict(x, y, q, 12, 0.07))
    np.testing.assert_array_equal(pred[200], knn_classify(x, y, q, 12, device="cpu"))
    np.testing.assert_array_equal(pred[5], _ref_predict(x, y, q, 5, 0.07))


def test_tiny_temperature_no_overflow(data):
    x, y, q, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any overflow RuntimeWarning fails the test
        scores = knn_scores(x, y, q, 20, 1e-3, device="cpu")
        pred = knn_classify(x, y, q, 20, 1e-3, device="cpu")
    assert np.isfinite(scores).all() and (scores.max(1) >= 1.0).all()
    # exp(1 / 1e-3) overflows even float64, so the reference shifts as well.
    np.testing.assert_array_equal(pred, _ref_predict(x, y, q, 20, 1e-3, shift=True))


def test_string_labels(data):
    x, y, q, _ = data
    names = np.array(["cat", "dog", "emu", "gnu", "yak"])
    pred = knn_classify(x, names[y], q, 10, device="cpu")
    assert pred.dtype.kind == "U"
    np.testing.assert_array_equal(pred, _ref_predict(x, names[y], q, 10, 0.07))
    np.testing.assert_array_equal(pred, names[knn_classify(x, y, q, 10, device="cpu")])


def test_ties_hand_cases():
    e = np.eye(3, dtype=np.float32)
    train = np.stack([e[0], e[0], e[1], e[1], e[2]])
    labels = np.array(["b", "a", "a", "b", "c"])
    q = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float32)
    pred = knn_classify(train, labels, q, [1, 2, 3], device="cpu")
    # q0 = e0: rows 0 and 1 tie; k=1 keeps the lower index (row 0, "b"), not the lower class.
    # k=2: one vote each for "a" and "b", equal -> lower class "a".
    #   k=3: rows 0, 1 and, of the rows at similarity 0 (2, 3, 4), row 2 ("a") -> "a".
    # q1: rows 0-3 tie; k=1 row 0 ("b"); k=2 "b" = "a" -> "a"; k=3 rows 0, 1, 2 -> "a".
    # q2 = e1: rows 2 and 3 tie; k=1 keeps row 2 ("a"); k=2 tie -> "a";
    #   k=3 adds row 0 (lowest index at similarity 0, "b", not row 4 "c") -> "b" wins.
    assert list(pred[1]) == ["b", "b", "a"]
    assert list(pred[2]) == ["a", "a", "a"]
    assert list(pred[3]) == ["a", "a", "b"]


def test_ties_random_against_reference():
    rng = np.random.default_rng(3)
    # Train rows are basis vectors: similarities are exact copies of query coordinates, so
    # every direction is an exact tie group in float32 and float64 alike.
    dirs = rng.integers(0, 6, 40)
    train = np.eye(6, dtype=np.float32)[dirs]
    labels = rng.integers(0, 4, 40)
    q = rng.normal(size=(50, 6)).astype(np.float32)
    ks = [1, 2, 3, 5, 8, 13, 40]
    pred = knn_classify(train, labels, q, ks, device="cpu")
    for k in ks:
        np.testing.assert_array_equal(pred[k], _ref_predict(train, labels, q, k, 0.07))


def test_chunk_size_does_not_change_result(data):
    x, y, q, _ = data
    ref_pred = knn_classify(x, y, q, [3, 20], chunk_size=None, device="cpu")
    ref_scores = knn_scores(x, y, q, 20, chunk_size=None, device="cpu")
    for chunk in (1, 7, 33, 1000):
        pred = knn_classify(x, y, q, [3, 20], chunk_size=chunk, device="cpu")
        for k in (3, 20):
            np.testing.assert_array_equal(pred[k], ref_pred[k])
        np.testing.assert_allclose(knn_scores(x, y, q, 20, chunk_size=chunk, device="cpu"),
                                   ref_scores, rtol=2e-5)  # float32 products differ by block


def test_many_k_from_one_topk(data, monkeypatch):
    x, y, q, _ = data
    calls = []
    orig = knn_mod._stable_topk

    def counting(buf, kmax, boundaries):
        calls.append((buf.shape[0], kmax))
        return orig(buf, kmax, boundaries)

    monkeypatch.setattr(knn_mod, "_stable_topk", counting)
    pred = knn_classify(x, y, q, [20, 1, 5], chunk_size=10, device="cpu")
    assert len(calls) == 8 and all(kmax == 20 for _, kmax in calls)  # one search per chunk
    for k in (1, 5, 20):
        np.testing.assert_array_equal(pred[k], knn_classify(x, y, q, k, device="cpu"))


def test_num_classes_columns(data):
    x, y, q, _ = data
    s = knn_scores(x, y, q, 10, num_classes=8, device="cpu")
    assert s.shape == (len(q), 8) and (s[:, 5:] == 0).all()
    np.testing.assert_allclose(s[:, :5], knn_scores(x, y, q, 10, device="cpu"), rtol=1e-12)
    with pytest.raises(InputError, match="train_labels"):
        knn_scores(x, y, q, 10, num_classes=3, device="cpu")


def test_top_k_accuracy_closed_form():
    s = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.3], [1.0, 0.0, 2.0]])
    assert top_k_accuracy(s, np.array([2, 1, 0]), 1) == 0.0
    assert top_k_accuracy(s, np.array([2, 1, 0]), 2) == 1.0
    assert top_k_accuracy(s, np.array([1, 0, 2]), 1) == 1.0  # ties rank the lower column first
    assert top_k_accuracy(s, np.array([1, 2, 2]), 2) == pytest.approx(2 / 3)
    classes = np.array(["x", "y", "z"])
    assert top_k_accuracy(s, np.array(["y", "x", "q"]), 1, classes=classes) == pytest.approx(2 / 3)
    assert top_k_accuracy(s, np.array([2, 1, 0]), 10) == 1.0
    with pytest.raises(InputError, match="labels"):
        top_k_accuracy(s, np.array([0, 1, 3]), 1)


def test_knn_probe(data):
    x, y, q, yq = data
    probe = KNNProbe(k=10, temperature=0.05)
    assert not [a for a in vars(probe) if a.endswith("_")]  # __init__ stores params only
    assert probe.get_params()["k"] == 10
    with pytest.raises(NotFittedError):
        probe.predict(q)
    assert probe.fit(x, y) is probe
    pred = probe.predict(q)
    np.testing.assert_array_equal(pred, _ref_predict(x, y, q, 10, 0.05))
    assert probe.score(q, yq) == pytest.approx(np.mean(pred == yq))
    scores = knn_scores(x, y, q, 10, 0.05, device="cpu")
    assert probe.score(q, yq, top_k=5) == pytest.approx(top_k_accuracy(scores, yq, 5))
    with pytest.raises(InputError, match="test"):
        probe.predict(q[:, :3])


def test_evaluate_knn_json_roundtrip(data):
    x, y, q, yq = data
    res = evaluate_knn(x, y, q, yq, k=(1, 20), device="cpu")
    pred = knn_classify(x, y, q, 20, device="cpu")
    assert res.top1[20] == pytest.approx(np.mean(pred == yq))
    assert res.top5[1] >= res.top1[1]
    back = KNNResult.from_json(res.to_json())
    assert back == res


def test_input_errors_and_zero_rows(data):
    x, y, q, _ = data
    with pytest.raises(InputError, match="test"):
        knn_classify(x, y, q[:, :5], device="cpu")
    with pytest.raises(InputError, match="temperature"):
        knn_classify(x, y, q, temperature=0.0, device="cpu")
    with pytest.raises(InputError, match="train_labels"):
        knn_classify(x, y[:-1], q, device="cpu")
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="train"):
        knn_classify(bad, y, q, device="cpu")
    with pytest.raises(InputError, match="k"):
        knn_classify(x, y, q, k=0, device="cpu")
    x0 = x.copy()
    x0[3] = 0.0
    with pytest.warns(UserWarning, match="all-zero"):
        s = knn_scores(x0, y, q, 5, device="cpu")
    assert np.isfinite(s).all()


def test_accepts_torch_tensors(data):
    x, y, q, _ = data
    pred = knn_classify(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(q), 5,
                        device="cpu")
    np.testing.assert_array_equal(pred, knn_classify(x, y, q, 5, device="cpu"))
