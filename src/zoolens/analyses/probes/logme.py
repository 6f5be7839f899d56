"""LogME (You et al. 2021): rank frozen features by the evidence of a Bayesian linear regression.

For each class present, the one-vs-rest target y in {0, 1} is regressed on the features F (n, d)
with a Gaussian prior w ~ N(0, alpha^-1 I) and noise precision beta. The log evidence per sample,

    L = [ n/2 log beta + d/2 log alpha - n/2 log 2pi - beta/2 ||y - F m||^2 - alpha/2 m^T m
          - 1/2 log det(alpha I + beta F^T F) ] / n,      m = beta A^-1 F^T y,  A = alpha I + beta F^T F,

is maximised over alpha, beta by MacKay's fixed point
(gamma = sum_i beta s_i / (alpha + beta s_i), alpha = gamma / m^T m, beta = (n - gamma) / ||y - F m||^2,
s_i the d eigenvalues of F^T F), and the score is its mean over classes. Where the fixed point is
still moving after `max_iter` steps (it creeps when the evidence is flat in alpha), the maximum is
found directly over log(alpha / beta) with beta in closed form.

The log-determinant runs over all d eigenvalues, the d - min(n, d) zero ones included: the
authors' code keeps only the min(n, d) singular values and so drops (d - k) log alpha, which
inflates the score when n < d or when features are dead. Here d/2 log alpha - 1/2 log det A
is evaluated as -1/2 sum_i log1p(beta s_i / alpha), exact and free of cancellation.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse
import torch

from ..._validation import as_features, as_labels

__all__ = ["logme"]


def _as_numpy64(x, name: str, min_samples: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):  # keep float64 precision of torch input
        x = x.detach().cpu().to(torch.float64).numpy()
    return as_features(x, name=name, min_samples=min_samples)


class _Spectrum:
    """F's spectrum and every class target's coordinates in it, for cheap evidence evaluations.

    s (k, 1): eigenvalues of F^T F on the directions that can be non-zero; z2 (k, C): squared
    coordinates of F^T y on its eigenvectors; counts (C,): ||y||^2. For n <= d a thin SVD
    F = U S V^T (k = n) also gives u2 = (U^T y)^2 and the part r0 of ||y||^2 outside U, which keeps
    the residual free of cancellation; for n > d the d x d Gram's eigh is used (k = d, cheaper).
    """

    def __init__(self, feats: np.ndarray, onehot: scipy.sparse.csr_matrix, counts: np.ndarray):
        n, d = feats.shape
        self.n, self.counts = n, counts
        if n <= d:
            u, sig, _ = np.linalg.svd(feats, full_matrices=False)
            proj = np.asarray((onehot @ u).T)                    # U^T y for every class: (k, C)
            self.s = (sig * sig)[:, None]
            self.u2 = proj * proj
            self.z2 = self.s * self.u2
            self.r0 = np.maximum(counts - np.sum(self.u2, axis=0), 0.0)
        else:
            s, v = np.linalg.eigh(feats.T @ feats)
            self.s = np.maximum(s, 0.0)[:, None]                 # rounding can give -1e-13 s_max
            z = v.T @ np.asarray(onehot @ feats).T               # V^T F^T y: (d, C)
            self.z2, self.u2, self.r0 = z * z, None, None

    def stats(self, alpha, beta, cols=slice(None)):
        """gamma, m^T m, alpha m^T m, ||y - F m||^2 for classes `cols` at (alpha, beta).

        Written with q = beta s / alpha so that alpha = inf (w = 0) is a finite limit.
        """
        s, z2 = self.s, self.z2[:, cols]
        with np.errstate(divide="ignore", invalid="ignore"):
            q = beta * s / alpha
            ba = np.where(np.isinf(alpha), 0.0, beta / alpha)
        shrink2 = (1.0 / (1.0 + q)) ** 2                         # (alpha / (alpha + beta s_i))^2
        gamma = np.sum(q / (1.0 + q), axis=0)
        zs = np.sum(z2 * shrink2, axis=0)
        m2 = ba * ba * zs
        alpha_m2 = beta * ba * zs
        if self.r0 is None:
            # ||y||^2 - 2 m^T F^T y + m^T F^T F m, in the eigenbasis of F^T F.
            res = self.counts[cols] - ba * np.sum(z2 * (2.0 + q) * shrink2, axis=0)
            # Floor at the cancellation error of that difference, so rounding can't fake a fit.
            res = np.maximum(res, 64 * np.finfo(np.float64).eps * self.counts[cols])
        else:
            # Out-of-span part plus the shrunk in-span part (u_i^T y alpha / (alpha + beta s_i))^2.
            res = self.r0[cols] + np.sum(self.u2[:, cols] * shrink2, axis=0)
        return gamma, m2, alpha_m2, np.maximum(res, np.finfo(np.float64).tiny)

    def evidence(self, alpha, beta, cols=slice(None)):
        """Exact log evidence per sample at (alpha, beta) for classes `cols`."""
        n = self.n
        _, _, alpha_m2, res = self.stats(alpha, beta, cols)
        logdet_rel = np.sum(np.log1p(beta * self.s / alpha), axis=0)   # log det A - d log alpha
        return (n / 2 * np.log(beta) - n / 2 * np.log(2 * np.pi) - beta / 2 * res
                - alpha_m2 / 2 - logdet_rel / 2) / n

    def profile(self, log_lam, cols):
        """Evidence maximised over beta at fixed lam = alpha / beta, where beta = n / (res + lam m^T m)
        in closed form; returns (evidence, alpha, beta), each (len(cols),) like `log_lam`."""
        lam = np.exp(log_lam)
        _, _, alpha_m2, res = self.stats(lam, 1.0, cols)
        beta = self.n / (res + alpha_m2)
        alpha = lam * beta
        return self.evidence(alpha, beta, cols), alpha, beta


def _maximise_profile(spec: _Spectrum, cols: np.ndarray):
    """Global maximum of the profile evidence over log(alpha / beta) for classes `cols`:
    a coarse grid over the spectrum's range, golden-section refinement, and the alpha = inf limit.
    Used where the fixed point has not converged (it creeps when the maximum is flat or far)."""
    s_max = float(spec.s.max())
    if s_max <= 0:
        return np.full(len(cols), np.inf), spec.n / spec.counts[cols]
    grid = np.log(s_max) + np.arange(-35.0, 25.01, 0.5)
    vals = np.stack([spec.profile(np.full(len(cols), t), cols)[0] for t in grid])  # (g, c)
    best = grid[np.argmax(vals, axis=0)]
    lo, hi = best - 0.5, best + 0.5
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(60):  # golden section: bracket shrinks to ~1e-13
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        fa, fb = spec.profile(a, cols)[0], spec.profile(b, cols)[0]
        lo, hi = np.where(fa >= fb, lo, a), np.where(fa >= fb, b, hi)
    ev, alpha, beta = spec.profile((lo + hi) / 2, cols)
    inf_alpha, inf_beta = np.full(len(cols), np.inf), spec.n / spec.counts[cols]
    at_inf = spec.evidence(inf_alpha, inf_beta, cols) > ev
    return np.where(at_inf, np.inf, alpha), np.where(at_inf, inf_beta, beta)


def logme(features, labels, *, tol: float = 1e-6, max_iter: int = 100) -> float:
    """LogME score of frozen features for a classification task (higher is better).

    Args:
        features: (n_samples, n_features) array, NumPy or torch; used as given (no centring).
        labels: (n_samples,) class labels (any hashable values).
        tol: relative change of alpha and beta at which the fixed point stops.
        max_iter: most fixed-point iterations; classes still moving after them are finished by a
            direct 1-D maximisation of the evidence over log(alpha / beta) (beta in closed form).

    Returns:
        Mean over the classes present of the maximum log evidence per sample, float.
    """
    feats = _as_numpy64(features, "features", min_samples=2)
    n, _ = feats.shape
    labels = as_labels(labels, n=n)
    classes, inv = np.unique(labels, return_inverse=True)
    n_cls = len(classes)
    if n_cls < 2:
        warnings.warn(f"labels: only one class ({classes[0]!r}) present; LogME of a constant "
                      "target says little about the features", RuntimeWarning, stacklevel=2)
    if not feats.any():
        warnings.warn("features are all zero; LogME is the noise-only evidence", RuntimeWarning,
                      stacklevel=2)
    onehot = scipy.sparse.csr_matrix((np.ones(n), (inv.ravel(), np.arange(n))), shape=(n_cls, n))
    counts = np.bincount(inv.ravel(), minlength=n_cls).astype(np.float64)   # ||y||^2
    spec = _Spectrum(feats, onehot, counts)

    alpha = np.ones(n_cls)
    beta = np.ones(n_cls)
    done = np.zeros(n_cls, dtype=bool)
    s_max = float(spec.s.max()) if spec.s.size else 0.0
    for _ in range(max_iter):
        gamma, m2, _, res = spec.stats(alpha, beta)
        with np.errstate(divide="ignore", invalid="ignore"):
            new_alpha = np.where(m2 > 0, gamma / m2, np.inf)
        # Prior swamps the data (features carry nothing about y): take the alpha -> inf limit,
        # where w = 0 and the evidence no longer depends on alpha.
        new_alpha = np.where(beta * s_max <= 1e-12 * new_alpha, np.inf, new_alpha)
        new_beta = (n - gamma) / res
        with np.errstate(invalid="ignore"):
            conv = ((np.abs(new_alpha - alpha) <= tol * alpha) | np.isinf(new_alpha)) & \
                   (np.abs(new_beta - beta) <= tol * beta)
        alpha = np.where(done, alpha, new_alpha)
        beta = np.where(done, beta, new_beta)
        done |= conv
        if done.all():
            break
    if not done.all():
        # The fixed point creeps where the evidence is flat; finish those classes by maximising
        # the exact evidence over log(alpha / beta) directly.
        cols = np.flatnonzero(~done)
        a_p, b_p = _maximise_profile(spec, cols)
        better = spec.evidence(a_p, b_p, cols) > spec.evidence(alpha[cols], beta[cols], cols)
        alpha[cols] = np.where(better, a_p, alpha[cols])
        beta[cols] = np.where(better, b_p, beta[cols])
    return float(np.mean(spec.evidence(alpha, beta)))
