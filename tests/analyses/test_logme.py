"""Tests for zoolens.analyses.probes.logme against a dense float64 brute-force evidence."""

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from zoolens.analyses.probes.logme import logme
from zoolens.errors import InputError


def _ref_evidence(f, y, alpha, beta):
    """Log evidence per sample with dense d x d matrices and slogdet over all d dimensions."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    sign, logdet = np.linalg.slogdet(a)
    if sign <= 0:  # only where the optimiser strays to absurd alpha, beta
        return -np.inf
    return (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
            - beta / 2 * np.sum((y - f @ m) ** 2) - alpha / 2 * m @ m - logdet / 2) / n


def _ref_fixed_point(f, y, iters=1000):
    """MacKay's updates on dense matrices: gamma = d - alpha tr(A^-1); None if not converged."""
    n, d = f.shape
    alpha, beta = 1.0, 1.0
    for _ in range(iters):
        a = alpha * np.eye(d) + beta * f.T @ f
        m = beta * np.linalg.solve(a, f.T @ y)
        gamma = d - alpha * np.trace(np.linalg.inv(a))
        alpha_new = gamma / (m @ m)
        beta_new = (n - gamma) / np.sum((y - f @ m) ** 2)
        if abs(alpha_new - alpha) < 1e-12 * alpha and abs(beta_new - beta) < 1e-12 * beta:
            return _ref_evidence(f, y, alpha_new, beta_new)
        alpha, beta = alpha_new, beta_new
    return None


def _ref_max_evidence(f, y):
    """Maximum over (log alpha, log beta) by Nelder-Mead from a few starts."""
    best = -np.inf
    for start in [(0.0, 0.0), (4.0, 1.0), (-3.0, 2.0), (9.0, 0.0)]:
        # Bounded log-parameters keep the dense matrices well conditioned; e^40 is as good as
        # alpha = inf where the maximum is the w = 0 limit.
        r = minimize(lambda p: -_ref_evidence(f, y, np.exp(p[0]), np.exp(p[1]))
                     if np.all(np.abs(p) < 40) else np.inf, start,
                     method="Nelder-Mead",
                     options=dict(xatol=1e-10, fatol=1e-14, maxiter=4000, maxfev=8000))
        best = max(best, -r.fun)
    return best


def _ref_logme(f, labels, method):
    return float(np.mean([method(f, (labels == c).astype(np.float64)) for c in np.unique(labels)]))


def _data(rng, n, d, n_cls=3, signal=1.0, dead=0):
    labels = rng.integers(0, n_cls, n)
    f = rng.normal(size=(n, d))
    f[:, : min(4, d)] += signal * rng.normal(size=(n_cls, min(4, d)))[labels]
    if dead:
        f[:, -dead:] = 0.0
    return f, labels


@pytest.mark.parametrize("n,d,dead", [(40, 64, 0), (30, 50, 12), (120, 20, 3), (60, 60, 0)])
def test_logme_matches_dense_maximum_evidence(n, d, dead):
    rng = np.random.default_rng(n * d + dead)
    f, labels = _data(rng, n, d, signal=2.0, dead=dead)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = logme(f, labels)
    maxed = [_ref_max_evidence(f, (labels == c).astype(np.float64)) for c in np.unique(labels)]
    assert got == pytest.approx(np.mean(maxed), abs=1e-6)
    # Where the dense fixed point converges it sits at the same maximum (1e-6).
    fixed = [_ref_fixed_point(f, (labels == c).astype(np.float64)) for c in np.unique(labels)]
    assert sum(v is not None for v in fixed) >= 2
    for v, w in zip(fixed, maxed):
        assert v is None or v == pytest.approx(w, abs=1e-6)


@pytest.mark.parametrize("n,d", [(30, 100), (50, 50), (100, 60)])
def test_logme_flat_evidence_fallback(n, d):
    # Features unrelated to the labels: the evidence is flat in alpha and the fixed point creeps;
    # a 3-iteration cap forces the direct maximisation, which must still find the maximum.
    rng = np.random.default_rng(n + d)
    f, labels = _data(rng, n, d, signal=0.0)
    want = _ref_logme(f, labels, _ref_max_evidence)
    assert logme(f, labels) == pytest.approx(want, abs=1e-6)
    assert logme(f, labels, max_iter=3) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("n,d", [(40, 64), (100, 12)])
def test_dead_columns_change_nothing(n, d):
    # Exact evidence: zero columns add zero eigenvalues, log(alpha + 0) cancels d/2 log alpha.
    # The authors' truncated log-determinant would add (extra / 2) log(alpha) / n instead.
    rng = np.random.default_rng(d)
    f, labels = _data(rng, n, d, signal=1.5)
    padded = np.concatenate([f[:, :5], np.zeros((n, 30)), f[:, 5:]], axis=1)
    assert logme(padded, labels) == pytest.approx(logme(f, labels), abs=1e-9)


def test_separating_features_score_higher():
    rng = np.random.default_rng(0)
    n, d = 200, 16
    labels = rng.integers(0, 4, n)
    good = rng.normal(size=(n, d)) + 3.0 * np.eye(4, d)[labels]
    bad = rng.normal(size=(n, d))
    assert logme(good, labels) > logme(bad, labels) + 0.1


def test_all_zero_features_closed_form():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 25)
    counts = np.bincount(labels)
    n = 25
    # w = 0 (alpha -> inf), beta = n / n_c: the noise-only evidence.
    want = np.mean([(n / 2 * np.log(n / c) - n / 2 - n / 2 * np.log(2 * np.pi)) / n for c in counts])
    for d in (5, 40):
        with pytest.warns(RuntimeWarning, match="all zero"):
            assert logme(np.zeros((n, d)), labels) == pytest.approx(want, abs=1e-12)


def test_inputs_torch_strings_and_errors():
    rng = np.random.default_rng(2)
    f, labels = _data(rng, 50, 8, signal=2.0)
    base = logme(f, labels)
    names = np.array(["cat", "dog", "owl"])[labels]
    assert logme(torch.from_numpy(f), torch.from_numpy(labels)) == pytest.approx(base, abs=1e-12)
    assert logme(f, names) == pytest.approx(base, abs=1e-12)
    with pytest.raises(InputError, match="labels"):
        logme(f, labels[:-1])
    with pytest.raises(InputError, match="features"):
        logme(f[:, 0], labels)
    with pytest.warns(RuntimeWarning, match="one class"):
        logme(f, np.zeros(50, dtype=int))
