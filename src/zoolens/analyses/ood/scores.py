"""Out-of-distribution scores on arrays, with OpenOOD's conventions.

Every score is a *confidence*: higher = more in-distribution (ID). Feed ``conf_id`` and
``conf_ood`` to `zoolens.analyses.ood.metrics`, which treats OOD as the positive class.

Feature scores take (n, d) features (NumPy or torch; float16/float32 are kept in float32, anything
else becomes float64) and logit scores take (n, C) logits; all return (n,) float64 NumPy arrays.
Statistics are accumulated in float64. Degenerate inputs give numbers, never NaN: an all-zero
row, a class with one image, a singular covariance, k above the training size.

- `knn`: Sun et al. 2022, "Out-of-Distribution Detection with Deep Nearest Neighbors".
- `mahalanobis`: Lee et al. 2018 (OpenOOD "mds"); ``relative=True``: Ren et al. 2021 (RMDS).
- `energy`: Liu et al. 2020. `msp`: Hendrycks & Gimpel 2017. `max_logit`: Hendrycks et al. 2022.
- `vim`: Wang et al. 2022, "ViM: Out-Of-Distribution with Virtual-logit Matching".
- `feature_norm`, `negative_aware_norm`: Park et al. 2023, "Understanding the Feature Norm for
  Out-of-Distribution Detection" (ICCV).

The k-NN search shares `zoolens.neighbors` with the k-NN probe: float32 similarity products in
chunks and an exact top-k. Its float32 ranking is then made exact in float64 (see `knn`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..._validation import as_features, as_labels
from ...errors import InputError
from ...neighbors import default_chunk_size, similarity_blocks, top_k_per_row
from ...zoo.registry import resolve_device
from ..label_sums import label_sums

__all__ = ["knn", "mahalanobis", "energy", "msp", "max_logit", "vim", "feature_norm",
           "negative_aware_norm"]

# Rows of float64 work per block in the Mahalanobis / ViM passes: about 32 MiB of the widest
# intermediate, at least 64 rows.
_BLOCK_BYTES = 32 * 2**20


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------

def _features(x, name: str, *, min_samples: int = 1) -> np.ndarray:
    """Finite 2D features; float16/bfloat16/float32 kept in float32 (exactly), else float64.

    Keeping float32 halves memory on large feature banks; every float32 value is exact in
    float64, so float64 statistics computed from it lose nothing.
    """
    if isinstance(x, torch.Tensor):
        dtype = np.float64 if x.dtype == torch.float64 or not x.is_floating_point() else np.float32
    else:
        arr = np.asarray(x)
        dtype = np.float32 if arr.dtype in (np.float16, np.float32) else np.float64
    return as_features(x, name, dtype=dtype, min_samples=min_samples)


def _same_width(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise InputError(f"{name_b}: has {b.shape[1]} features, {name_a} has {a.shape[1]}")


def _positive_int(value, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _block_rows(width: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return _positive_int(chunk_size, "chunk_size")
    return max(64, _BLOCK_BYTES // (8 * max(width, 1)))


def _row_norms(x: np.ndarray) -> np.ndarray:
    """(n,) L2 norms accumulated in float64 (einsum casts in small buffers: no float64 copy)."""
    return np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# k-NN (Sun et al. 2022)
# --------------------------------------------------------------------------------------------

def _unit_rows(x: np.ndarray, norms: np.ndarray, device: torch.device) -> torch.Tensor:
    """float32 unit rows on `device`, each component within (2u + u^2) of x / |x|: float32 rows
    times fl32(1 / |x|) (two roundings, cheaper than a float64 pass), float64 rows scaled in
    float64 and rounded once."""
    scale = 1.0 / norms
    if x.dtype == np.float64 or scale.max() > 1e30:  # 1/|x| of a subnormal row: no float32
        unit = (x * scale[:, None]).astype(np.float32)
    else:
        unit = x * scale.astype(np.float32)[:, None]
    return torch.from_numpy(unit).to(device)


def _product_error(d: int, device: torch.device) -> float:
    """Bound on |float32 product of the rounded unit rows - exact cosine| for d features.

    With unit roundoff u: each component of a rounded unit row is within (2u + u^2) of the
    exact one (`_unit_rows`), which moves a cosine by at most about 4u; a float32 inner product
    of length d errs by at most gamma_d = d u / (1 - d u) times sum |x_i y_i| <= 1 + 4u, in any
    summation order (Higham, "Accuracy and Stability of Numerical Algorithms", 3.1). On CUDA,
    TF32 / bfloat16 matmuls (if the user enabled them) have a larger u.
    """
    u = 2.0 ** -24
    if device.type == "cuda":
        precision = torch.get_float32_matmul_precision()
        if precision == "medium":
            u = 2.0 ** -8
        elif precision == "high" or torch.backends.cuda.matmul.allow_tf32:
            u = 2.0 ** -11
    du = (d + 8) * u
    return du / (1.0 - du) + 1e-12  # + the float64 recomputation's own rounding


class _ExactCosines:
    """Float64 cosines between query rows and base rows, from the original values."""

    def __init__(self, queries: np.ndarray, q_norms: np.ndarray, base: np.ndarray,
                 b_norms: np.ndarray):
        self.queries, self.q_norms = queries, q_norms
        self.base, self.b_norms = base, b_norms

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(p,) cosines of the pairs (query `rows[i]`, base row `cols[i]`)."""
        dots = np.einsum("pd,pd->p", self.queries[rows], self.base[cols], dtype=np.float64)
        return dots / (self.q_norms[rows] * self.b_norms[cols])


def _exact_rank(vals: np.ndarray, idx: np.ndarray, rank: int, rows: np.ndarray,
                block: torch.Tensor, exact: _ExactCosines, delta: float,
                n_base: int) -> np.ndarray:
    """Exact `rank`-th largest cosine (1-based) of each query, from its float32 top candidates.

    `vals`, `idx` (r, w): the float32 top-w products (descending) and base rows of the block's
    queries `rows`; every float32 product f is within `delta` of its exact cosine s. With
    v = f at `rank` and [lo, hi] = [v - 2 delta, v + 2 delta]: the exact value lies in
    [v - delta, v + delta], every element with f > hi is above it and every element with
    f < lo below it, so it is the (rank - #above)-th largest exact cosine among the few
    elements with f in [lo, hi]. Those are among the candidates unless the w-th candidate is
    still >= lo; such rows (rare: many near-equal similarities) are redone on their block row.
    """
    r, w = vals.shape
    v = vals[:, rank - 1].astype(np.float64)
    lo, hi = v - 2 * delta, v + 2 * delta
    above = (vals > hi[:, None]).sum(1)
    upto = (vals >= lo[:, None]).sum(1)
    redo = (upto == w) & (w < n_base)
    out = np.empty(r)
    ok = np.flatnonzero(~redo)
    if len(ok):
        # The windows [above, upto) of all rows as one flat list of (row, position) pairs.
        first, count = above[ok], upto[ok] - above[ok]
        owner = np.repeat(np.arange(len(ok)), count)
        starts = np.cumsum(count) - count
        pos = np.repeat(first - starts, count) + np.arange(count.sum())
        s = exact(rows[ok[owner]], idx[ok[owner], pos])
        s = s[np.lexsort((-s, owner))]  # by row, then descending cosine
        out[ok] = s[starts + rank - first - 1]
    for i in np.flatnonzero(redo):
        f = block[i].cpu().numpy().astype(np.float64)
        n_above = int((f > hi[i]).sum())
        cand = np.flatnonzero((f >= lo[i]) & (f <= hi[i]))
        s = np.sort(exact(np.full(len(cand), rows[i]), cand))[::-1]
        out[i] = s[rank - n_above - 1]
    return out


def knn(train, test, k: int = 50, *, chunk_size: int | None = None, device=None) -> np.ndarray:
    """k-NN confidence of Sun et al. 2022: minus the squared distance to the k-th nearest row.

    Rows of both sets are L2-normalised; the confidence of a test row x is
    ``-|x/|x| - t/|t||^2`` for the training row t at the k-th smallest such distance
    (``-(2 - 2 cos)`` for non-zero rows), as OpenOOD's "knn" postprocessor computes with faiss
    ``IndexFlatL2`` (squared distances). The paper uses k = 50 on CIFAR and k = 1000 on the full
    ImageNet training set.

    Exactness: candidates come from float32 products (`zoolens.neighbors`: chunked products, an
    exact top-k). The k-th value is then recomputed in float64 from the original features over
    every candidate whose float32 product is within twice a proven rounding bound of the k-th one
    (`_exact_rank`), so the result equals a float64 computation of the formula (to float64
    rounding), not just the float32 one. The window is narrow: 1.76 rows per query on average
    for the benchmark's 768-d clustered features (`benchmarks/bench_ood_knn.py`).

    Edge cases, unlike OpenOOD: k above the training size is capped at n_train with a warning
    (never padded with sentinel distances); an all-zero row stays the zero vector (no NaN), at
    squared distance 1 from every unit row and 0 from other zero rows.

    Args:
        train: (n_train, d) in-distribution training features.
        test: (n_test, d) features to score.
        k: the neighbour whose distance is the score (1 = nearest).
        chunk_size: test rows per similarity block (memory ~ 4 * chunk_size * n_train bytes);
            default `zoolens.neighbors.default_chunk_size`.
        device: torch device of the similarity products; CUDA when available, else CPU.

    Returns:
        (n_test,) float64 confidences in [-4, 0].
    """
    tr = _features(train, "train")
    te = _features(test, "test", min_samples=0)
    _same_width(tr, te, "train", "test")
    k = _positive_int(k, "k")
    n = tr.shape[0]
    if k > n:
        warnings.warn(f"k={k} exceeds the {n} training rows; using k={n}", stacklevel=2)
        k = n
    dev = resolve_device(device)
    chunk = default_chunk_size(n, dev) if chunk_size is None else _positive_int(chunk_size,
                                                                                  "chunk_size")
    tr_norms, te_norms = _row_norms(tr), _row_norms(te)
    live = np.flatnonzero(tr_norms > 0)
    n_zero = n - len(live)
    if n_zero:
        warnings.warn(f"train: {n_zero} all-zero row(s) stay zero after normalisation (squared "
                      f"distance 1 to every unit row)", stacklevel=2)
    out = np.empty(te.shape[0])
    # A zero test row is at distance 0 from the zero training rows and 1 from all others.
    zero_q = te_norms == 0
    out[zero_q] = -(0.0 if k <= n_zero else 1.0)
    q_rows = np.flatnonzero(~zero_q)
    if len(q_rows) == 0:
        return out
    if len(live) == 0:
        out[q_rows] = -1.0
        return out

    base = tr if n_zero == 0 else tr[live]
    base_norms = tr_norms[live]
    n_live = len(live)
    # Squared distances of a unit query: t_j = 2 - 2 s_j to the live rows, 1 to the zero rows.
    # The k-th smallest of both is min(t_(k), max(1, t_(k - n_zero))), with t_(r) = +inf past
    # the live rows and -inf below rank 1: so at most two ranks of the live rows are needed.
    ranks = sorted({r for r in (k, k - n_zero) if 1 <= r <= n_live})
    if not ranks:  # n_live < k <= n_zero: the k-th smallest distance is a zero row's, 1
        out[q_rows] = -1.0
        return out
    # A margin of candidates past the k-th, for the float64 recomputation (`_exact_rank`).
    width = min(n_live, ranks[-1] + 8 + k // 16)
    exact = _ExactCosines(te, te_norms, base, base_norms)
    delta = _product_error(tr.shape[1], dev)
    q_t = _unit_rows(te[q_rows], te_norms[q_rows], dev)
    b_t = _unit_rows(base, base_norms, dev)
    dist = np.empty(len(q_rows))
    for start, block in similarity_blocks(q_t, b_t, chunk):
        vals, idx = top_k_per_row(block, width)
        vals, idx = vals.cpu().numpy(), idx.cpu().numpy()
        rows = q_rows[start:start + block.shape[0]]
        t = {r: 2.0 - 2.0 * _exact_rank(vals, idx, r, rows, block, exact, delta, n_live)
             for r in ranks}
        if n_zero:
            t_k = t.get(k, np.inf)
            dist[start:start + len(rows)] = np.minimum(t_k, np.maximum(1.0, t.get(k - n_zero,
                                                                                   -np.inf)))
        else:
            dist[start:start + len(rows)] = t[k]
    out[q_rows] = -np.maximum(dist, 0.0)  # rounding can leave -1e-16 for a duplicate row
    return out


# --------------------------------------------------------------------------------------------
# Mahalanobis (Lee et al. 2018) and RMDS (Ren et al. 2021)
# --------------------------------------------------------------------------------------------

def _encode(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    try:
        classes, codes = np.unique(labels, return_inverse=True)
    except TypeError as err:
        raise InputError(f"train_labels: values cannot be sorted ({err})") from None
    return classes, codes.reshape(-1).astype(np.int64)


def _add_scatter(acc: np.ndarray, rows: np.ndarray) -> None:
    """acc += rows.T @ rows (float64, in place)."""
    acc += rows.T @ rows


def _pinv_factor(cov: np.ndarray) -> np.ndarray:
    """L (d, r) with pinv(cov) = L @ L.T, so that (x - m)^T pinv(cov) (x - m) = |(x - m) @ L|^2.

    Eigenvalues at or below d * eps * the largest are treated as zero: the default cut-off of
    ``scipy.linalg.pinvh``, which scikit-learn's ``EmpiricalCovariance.precision_`` (used by
    OpenOOD) applies. Singular covariances (fewer images than features) are normal here.
    """
    lam, vec = np.linalg.eigh(cov)
    top = lam[-1] if lam.size else 0.0
    if not top > 0:
        return np.zeros((cov.shape[0], 0))
    keep = lam > top * cov.shape[0] * np.finfo(np.float64).eps
    return vec[:, keep] / np.sqrt(lam[keep])


def mahalanobis(train, train_labels, test, *, relative: bool = False,
                chunk_size: int | None = None) -> np.ndarray:
    """Mahalanobis confidence (Lee et al. 2018, OpenOOD "mds"), or RMDS with ``relative=True``.

    With class means mu_c and one tied covariance S of the class-centred training rows,
    divided by N (the maximum-likelihood estimate, as scikit-learn's ``EmpiricalCovariance``
    that OpenOOD uses), and P = pinv(S):

        conf(x) = max_c -(x - mu_c)^T P (x - mu_c).

    ``relative=True`` gives the relative Mahalanobis distance (Ren et al. 2021, "A Simple Fix to
    Mahalanobis Distance for Improving Near-OOD Detection"; OpenOOD "rmds"): the same score minus
    the one under a single Gaussian fitted to all training rows (mean mu_0, covariance S_0 / N
    of the rows centred on mu_0, P_0 = pinv(S_0 / N)):

        conf(x) = max_c -(x - mu_c)^T P (x - mu_c) + (x - mu_0)^T P_0 (x - mu_0).

    Computation: float64 statistics in two passes over the training rows (class sums, then the
    scatter of the class-centred rows); S_0 follows from S and the class means without a third
    pass (S_0 = S + sum_c n_c (mu_c - mu_0)(mu_c - mu_0)^T). The pseudo-inverse is factored as
    P = L L^T (eigenvectors over the square roots of the kept eigenvalues, see `_pinv_factor`),
    so one pass over the test set in chunks maps each chunk to z = (x - mu_0) L and gets every
    class's distance from one matrix product, |z|^2 - 2 z . z_c + |z_c|^2: no
    (n_test, n_classes, d) array is formed.

    Args:
        train: (n_train, d) in-distribution training features.
        train_labels: (n_train,) class labels (any sortable values). A class may have a single
            image: its centred row is zero and adds nothing to the covariance.
        test: (n_test, d) features to score.
        relative: RMDS instead of the plain Mahalanobis score.
        chunk_size: rows per float64 block in the passes (default: about 32 MiB per block).

    Returns:
        (n_test,) float64 confidences (<= 0 unless ``relative``).
    """
    tr = _features(train, "train")
    labels = as_labels(train_labels, "train_labels", n=tr.shape[0])
    te = _features(test, "test", min_samples=0)
    _same_width(tr, te, "train", "test")
    classes, codes = _encode(labels)
    n, d = tr.shape
    n_cls = len(classes)
    rows = _block_rows(max(d, n_cls), chunk_size)

    counts = np.bincount(codes, minlength=n_cls).astype(np.float64)
    means = label_sums(tr, codes, n_cls, rows) / counts[:, None]
    scatter = np.zeros((d, d))
    for s in range(0, n, rows):
        _add_scatter(scatter, tr[s:s + rows].astype(np.float64) - means[codes[s:s + rows]])
    mu0 = counts @ means / n
    factor = _pinv_factor(scatter / n)
    # Everything is centred on mu_0 first: it keeps |z| small, so |z|^2 - 2 z.z_c + |z_c|^2
    # loses few digits to cancellation.
    z_cls = (means - mu0) @ factor
    z_cls_sq = np.einsum("ij,ij->i", z_cls, z_cls)
    if relative:
        between = (means - mu0) * np.sqrt(counts)[:, None]
        factor0 = _pinv_factor((scatter + between.T @ between) / n)

    out = np.empty(te.shape[0])
    for s in range(0, te.shape[0], rows):
        y = te[s:s + rows].astype(np.float64) - mu0
        z = y @ factor
        dist = np.einsum("ij,ij->i", z, z)[:, None] - 2.0 * (z @ z_cls.T) + z_cls_sq
        conf = -np.maximum(dist, 0.0).min(axis=1)
        if relative:
            z0 = y @ factor0
            conf += np.einsum("ij,ij->i", z0, z0)
        out[s:s + rows] = conf
    return out


# --------------------------------------------------------------------------------------------
# Logit scores
# --------------------------------------------------------------------------------------------

def _logits(logits, name: str = "logits") -> np.ndarray:
    x = as_features(logits, name, min_samples=0)
    if x.shape[1] < 1:
        raise InputError(f"{name}: expected at least one class column, got shape {x.shape}")
    return x


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """Row-wise log(sum(exp(x))), shifted by the row maximum so that nothing overflows."""
    top = x.max(axis=1)
    return top + np.log(np.exp(x - top[:, None]).sum(axis=1))


def energy(logits, temperature: float = 1.0) -> np.ndarray:
    """Energy confidence (Liu et al. 2020): ``T * logsumexp(logits / T)``, T = 1 by default.

    This is minus the free energy, so higher = more in-distribution (OpenOOD "ebo").

    Args:
        logits: (n, C) logits.
        temperature: T > 0.

    Returns:
        (n,) float64 confidences.
    """
    x = _logits(logits)
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise InputError(f"temperature: expected a positive number, got {temperature}")
    return t * _logsumexp(x / t)


def msp(logits) -> np.ndarray:
    """Maximum softmax probability (Hendrycks & Gimpel 2017): (n, C) logits -> (n,) in (0, 1]."""
    x = _logits(logits)
    # max softmax = 1 / sum_j exp(l_j - max l): no overflow, exact 1 for a lone class.
    return 1.0 / np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1)


def max_logit(logits) -> np.ndarray:
    """Maximum logit (Hendrycks et al. 2022): (n, C) logits -> (n,) float64."""
    return _logits(logits).max(axis=1)


# --------------------------------------------------------------------------------------------
# ViM (Wang et al. 2022)
# --------------------------------------------------------------------------------------------

def vim(train_features, test_features, weight, bias, dim: int, *,
        chunk_size: int | None = None) -> np.ndarray:
    """ViM confidence (Wang et al. 2022) for a model whose head is ``logits = x @ W.T + b``.

    Following the paper and OpenOOD's "vim" postprocessor:

    1. origin u = -pinv(W) b (the point the head maps to zero logits);
    2. principal subspace: the top `dim` eigenvectors of the uncentred second moment of the
       shifted training features, sum (x - u)(x - u)^T / N (OpenOOD's
       ``EmpiricalCovariance(assume_centered=True)``); R spans the other d - dim eigenvectors;
    3. residual r(x) = |(x - u) R|, the norm of the part outside the principal subspace;
    4. alpha = mean max-logit / mean residual over the training features;
    5. conf(x) = logsumexp(logits(x)) - alpha * r(x)  (energy minus the scaled virtual logit).

    The residual is computed directly as |(x - u) R| rather than as
    sqrt(|x - u|^2 - |(x - u) P|^2), which loses every digit when the residual is small.

    Args:
        train_features: (n_train, d) in-distribution training features (the head's input).
        test_features: (n_test, d) features to score.
        weight: (C, d) head weight W.
        bias: (C,) head bias b.
        dim: principal subspace dimension, 1 <= dim < d, chosen per backbone (the paper and
            OpenOOD keep a large share of d).
        chunk_size: rows per float64 block (default: about 32 MiB per block).

    Returns:
        (n_test,) float64 confidences.
    """
    tr = _features(train_features, "train_features")
    te = _features(test_features, "test_features", min_samples=0)
    _same_width(tr, te, "train_features", "test_features")
    w = as_features(weight, "weight")
    b = as_features(bias, "bias", ndim=1)
    n, d = tr.shape
    if w.shape[1] != d:
        raise InputError(f"weight: has shape {w.shape}, expected (C, {d}) for {d} features")
    if b.shape != (w.shape[0],):
        raise InputError(f"bias: has shape {b.shape}, expected ({w.shape[0]},) for weight "
                         f"{w.shape}")
    dim = _positive_int(dim, "dim")
    if dim >= d:
        raise InputError(f"dim: expected 1 <= dim < {d} (the feature width), got {dim}")
    rows = _block_rows(max(d, w.shape[0]), chunk_size)

    u = -np.linalg.pinv(w) @ b
    moment = np.zeros((d, d))
    for s in range(0, n, rows):
        _add_scatter(moment, tr[s:s + rows].astype(np.float64) - u)
    lam, vec = np.linalg.eigh(moment / n)  # ascending
    if lam[d - dim] - lam[d - dim - 1] <= lam[-1] * d * np.finfo(np.float64).eps:
        warnings.warn(f"dim={dim}: eigenvalues {d - dim} and {d - dim + 1} (from the top) are "
                      f"equal, so the principal subspace is not unique; choose another dim",
                      stacklevel=2)
    resid_basis = vec[:, : d - dim]

    def residual_and_logits(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Residual norms, logits and the shifted rows x - u (float64)."""
        x64 = x.astype(np.float64)
        shifted = x64 - u
        return np.linalg.norm(shifted @ resid_basis, axis=1), x64 @ w.T + b, shifted

    sum_res = sum_max = sum_norm = 0.0
    for s in range(0, n, rows):
        res, logit, shifted = residual_and_logits(tr[s:s + rows])
        sum_res += float(res.sum())
        sum_max += float(logit.max(axis=1).sum())
        sum_norm += float(np.linalg.norm(shifted, axis=1).sum())
    # A residual at rounding level (relative to the features' size) is zero: alpha would be
    # a quotient of rounding errors.
    if not sum_res > 1e-10 * sum_norm:
        raise InputError(f"train_features: all lie in their top-{dim} principal subspace "
                         f"(zero residual), so ViM's alpha is undefined; use a smaller dim")
    alpha = sum_max / sum_res

    out = np.empty(te.shape[0])
    for s in range(0, te.shape[0], rows):
        res, logit, _ = residual_and_logits(te[s:s + rows])
        out[s:s + rows] = _logsumexp(logit) - alpha * res
    return out


# --------------------------------------------------------------------------------------------
# Feature norms (Park et al., ICCV 2023)
# --------------------------------------------------------------------------------------------

def feature_norm(features, *, ord: float = 2) -> np.ndarray:
    """The feature norm |a|_p of each row (higher = more in-distribution).

    Park et al. (ICCV 2023) show that the L1 norm of a hidden layer's (post-activation)
    features equals, under a regularity condition, the maximum logit of a classifier hidden in
    that layer (their Theorem 3), which is why it separates ID from OOD; "Block Selection"
    (Yu et al., CVPR 2023) uses the L2 norm of a block's output. zoolens applies it to every
    tapped layer.

    Args:
        features: (n, d) features, e.g. pooled post-activation maps of one layer.
        ord: p of the norm: any p >= 1 or ``np.inf``; 2 by default, 1 for Park et al.'s theory.

    Returns:
        (n,) float64 norms; an all-zero row gives 0.
    """
    x = _features(features, "features", min_samples=0)
    p = float(ord)
    if not (p >= 1):
        raise InputError(f"ord: expected a number >= 1 or inf, got {ord!r}")
    return np.linalg.norm(x.astype(np.float64), ord=p, axis=1)


def negative_aware_norm(features) -> np.ndarray:
    """Negative-aware norm (NAN) of Park et al., ICCV 2023, equations (9) and (10):

        |a|_NAN = |a|_1 * |a|_0^{-1},   |a|_0 = d - |{i : a_i <= 0}|,

    the L1 norm of the features divided by the number of active (strictly positive) units. The
    denominator rewards deactivation: ID samples switch more units off. The paper applies it to
    the last hidden layer (post-activation); it has no hyperparameter.

    A row with no positive unit has |a|_0 = 0; zoolens divides by max(|a|_0, 1) instead, so an
    all-zero row scores 0 (the least in-distribution a post-ReLU row can be), not NaN.

    Args:
        features: (n, d) features.

    Returns:
        (n,) float64 scores.
    """
    x = _features(features, "features", min_samples=0)
    l1 = np.abs(x).sum(axis=1, dtype=np.float64)
    active = (x > 0).sum(axis=1)
    return l1 / np.maximum(active, 1)
