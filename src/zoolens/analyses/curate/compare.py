"""How two image sets differ, seen through the same model and layer.

- `frechet_distance`: the Fréchet distance between Gaussians fitted to the two feature sets
  (FID's formula, on any features): ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2)``.
  Moments are float64 sums over blocks (shifted by a first-block mean, so large offsets do not
  cancel digits); covariances use n - 1, as ``np.cov`` and pytorch-fid do. The trace of the
  matrix square root is taken as ``sum(sqrt(eig(S_a^1/2 S_b S_a^1/2)))``: that matrix is
  symmetric positive semi-definite and similar to S_a S_b, so its eigenvalues are real and
  non-negative, unlike a general ``sqrtm`` of the non-symmetric product (which can return
  complex parts and needs an epsilon fix on singular covariances).
- `prdc`: k-NN precision and recall (Kynkäänniemi et al. 2019) and density and coverage
  (Naeem et al. 2020, k = 5): each point's k-NN ball (radius: distance to its k-th nearest other
  point of its own set) stands for the manifold. Balls are open (``<``), as in the authors'
  released code; ``closed=True`` uses ``<=`` (which keeps the metrics meaningful on data with
  exact duplicates). Distances are Euclidean (or between unit rows with ``metric="cosine"``);
  blocks of float32 products are exact after a float64 recheck of every comparison that float32
  rounding could flip, so the counts equal a float64 computation.
- `shared_prototypes`: one k-means over both sets; each cluster's share of each dataset, and the
  clusters (nearly) only one side populates, with their members nearest the centroid for display.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..._validation import as_features
from ...errors import InputError
from ...neighbors import top_k_similar
from ._result import ResultMixin, _float_array, _int_array, array_field
from .clustering import BLOCK_BYTES, KMeansResult, kmeans
from .centroids import medoids

__all__ = ["feature_moments", "frechet_distance", "frechet_distance_from_moments", "PRDC",
           "prdc", "SharedPrototypes", "shared_prototypes", "DatasetComparison",
           "compare_datasets"]

_U = 2.0 ** -24


# ----------------------------------------------------------------------------------------------
# Fréchet distance


def feature_moments(x, *, block_bytes: int = BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d) of the rows of `x` (n, d), float64, n - 1 normalised."""
    keep64 = isinstance(x, np.ndarray) and x.dtype == np.float64  # no float32 copy of float64
    x = as_features(x, "x", dtype=np.float64 if keep64 else np.float32, min_samples=2)
    n, d = x.shape
    rows = max(1, block_bytes // (8 * max(d, 1)))
    shift = x[:rows].astype(np.float64).mean(0)
    s1 = np.zeros(d)
    s2 = np.zeros((d, d))
    for s in range(0, n, rows):
        b = x[s:s + rows].astype(np.float64) - shift
        s1 += b.sum(0)
        s2 += b.T @ b
    mean_c = s1 / n
    cov = (s2 - n * np.outer(mean_c, mean_c)) / (n - 1)
    return shift + mean_c, (cov + cov.T) / 2


def _clean_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with its rounding noise floor set to 0: below
    d * eps * max|w| an eigenvalue is indistinguishable from 0, and its square root (up to
    sqrt(1e-16) = 1e-8 each) would otherwise add up over a null space."""
    tol = len(w) * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 1e-300)
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(_clean_eigenvalues(w))) @ v.T


def frechet_distance_from_moments(mu_a, cov_a, mu_b, cov_b) -> float:
    """Fréchet distance between N(mu_a, cov_a) and N(mu_b, cov_b), float64.

    Parameters
    ----------
    mu_a, mu_b : (d,) means
    cov_a, cov_b : (d, d) symmetric positive semi-definite covariances
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    d = mu_a.shape[0]
    for name, v in (("mu_b", mu_b),):
        if v.shape != (d,):
            raise InputError(f"{name}: expected shape ({d},), got {v.shape}")
    for name, c in (("cov_a", cov_a), ("cov_b", cov_b)):
        if c.shape != (d, d):
            raise InputError(f"{name}: expected shape ({d}, {d}), got {c.shape}")
    root_a = _psd_sqrt((cov_a + cov_a.T) / 2)
    m = root_a @ cov_b @ root_a
    eig = _clean_eigenvalues(np.linalg.eigvalsh((m + m.T) / 2))
    tr_sqrt = float(np.sqrt(eig).sum())
    diff = mu_a - mu_b
    fd = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt)
    return max(fd, 0.0)  # a distance: rounding can leave -1e-12 for equal Gaussians


def frechet_distance(x_a, x_b, *, block_bytes: int = BLOCK_BYTES) -> float:
    """Fréchet distance between Gaussians fitted to feature sets `x_a` (n_a, d), `x_b` (n_b, d)."""
    mu_a, cov_a = feature_moments(x_a, block_bytes=block_bytes)
    mu_b, cov_b = feature_moments(x_b, block_bytes=block_bytes)
    if mu_a.shape != mu_b.shape:
        raise InputError(f"x_b: has {mu_b.shape[0]} features, x_a has {mu_a.shape[0]}")
    return frechet_distance_from_moments(mu_a, cov_a, mu_b, cov_b)


# ----------------------------------------------------------------------------------------------
# precision / recall / density / coverage


@dataclass
class PRDC(ResultMixin):
    """k-NN precision, recall, density and coverage of `fake` against `real`.

    Attributes
    ----------
    precision : share of fake points inside some real k-NN ball.
    recall : share of real points inside some fake k-NN ball.
    density : mean over fake points of (real balls holding it) / k.
    coverage : share of real balls holding at least one fake point.
    k, n_real, n_fake, metric, closed : settings used.
    """

    precision: float = 0.0
    recall: float = 0.0
    density: float = 0.0
    coverage: float = 0.0
    k: int = 5
    n_real: int = 0
    n_fake: int = 0
    metric: str = "euclidean"
    closed: bool = False


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact float64 squared distances of row pairs a[i], b[i] (one fixed summation order)."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    return np.einsum("ij,ij->i", diff, diff)


def _knn_sq_radii(x: np.ndarray, k: int, block_bytes: int) -> np.ndarray:
    """(n,) float64 squared distance of every row to its k-th nearest other row.

    Nearest by Euclidean distance = largest ``x_i . x_j - |x_j|^2 / 2``: an inner product of
    ``[x_i, 1]`` with ``[x_j, -|x_j|^2 / 2]``, which `top_k_similar` searches. A few extra
    candidates are re-ranked by exact float64 distances so float32 ties cannot move the k-th
    one.
    """
    n = len(x)
    sq = np.einsum("ij,ij->i", x.astype(np.float64), x.astype(np.float64))
    q = np.hstack([x, np.ones((n, 1))]).astype(np.float32)
    p = np.hstack([x, -0.5 * sq[:, None]]).astype(np.float32)
    kk = min(n - 1, k + 4)
    _, idx = top_k_similar(q, p, kk, exclude_self=True,
                           chunk_size=max(1, block_bytes // (4 * n)))  # rows per block
    d2 = _sq_dist(np.repeat(x, kk, axis=0), x[idx.ravel()]).reshape(n, kk)
    return np.sort(d2, axis=1)[:, k - 1]


def _ball_counts(real: np.ndarray, fake: np.ndarray, r2_real: np.ndarray, r2_fake: np.ndarray,
                 closed: bool, block_bytes: int):
    """For fake rows: real balls holding each; for real rows: whether a fake is in its ball,
    and whether it lies in some fake ball. Float32 blocks, float64 recheck near the radii."""
    n_r, n_f = len(real), len(fake)
    d = real.shape[1]
    g = d * _U / (1 - d * _U)
    # |float32 d^2 - d^2| <= (2 gamma_d + 7u)(|f| + |r|)^2 for d^2 = |f|^2 + |r|^2 - 2 f.r; twice
    # that also covers rounding the radius and the margin to float32 near the boundary.
    rel = 2.02 * (2 * g + 8 * _U)
    r32, f32 = real.astype(np.float32), fake.astype(np.float32)
    nr = np.sqrt(np.einsum("ij,ij->i", real.astype(np.float64), real.astype(np.float64)))
    nf = np.sqrt(np.einsum("ij,ij->i", fake.astype(np.float64), fake.astype(np.float64)))
    sq_r32 = (nr ** 2).astype(np.float32)
    in_real_balls = np.zeros(n_f, dtype=np.int64)  # per fake: real balls holding it
    covered = np.zeros(n_r, dtype=bool)            # per real: a fake inside its ball
    recalled = np.zeros(n_r, dtype=bool)           # per real: inside some fake ball
    less = np.less_equal if closed else np.less
    rows = max(1, block_bytes // (16 * n_r))
    for s in range(0, n_f, rows):
        e = min(n_f, s + rows)
        d2 = (nf[s:e, None] ** 2).astype(np.float32) + sq_r32[None, :] - 2.0 * (f32[s:e] @ r32.T)
        margin = (rel * (nf[s:e].max() + nr) ** 2).astype(np.float32)  # per real column
        margin_f = (rel * (nf[s:e, None] + nr.max()) ** 2).astype(np.float32)  # per fake row
        for target, r2, m in ((0, r2_real[None, :], margin[None, :]),
                              (1, r2_fake[s:e, None], margin_f)):
            r2_32 = r2.astype(np.float32)
            inside = d2 < r2_32 - m
            amb = ~inside & (d2 <= r2_32 + m)
            fi, ri = np.nonzero(amb)
            if len(fi):
                exact = _sq_dist(fake[fi + s], real[ri])
                lim = r2_real[ri] if target == 0 else r2_fake[fi + s]
                inside[fi, ri] = less(exact, lim)
            if target == 0:
                in_real_balls[s:e] = inside.sum(1)
                covered |= inside.any(0)
            else:
                recalled |= inside.any(0)
    return in_real_balls, covered, recalled


def prdc(real, fake, k: int = 5, *, metric: str = "euclidean", closed: bool = False,
         block_bytes: int = BLOCK_BYTES) -> PRDC:
    """Precision, recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020).

    Parameters
    ----------
    real : (n_r, d) features of the reference set; n_r > k.
    fake : (n_f, d) features of the set judged against it; n_f > k.
    k : neighbours defining each ball (5 in Naeem et al.).
    metric : "euclidean" (the papers') or "cosine" (Euclidean between unit rows).
    closed : count a point on a ball's boundary as inside (``<=``); default open (``<``).

    Returns
    -------
    PRDC
    """
    if metric not in ("euclidean", "cosine"):
        raise InputError(f"metric: expected 'euclidean' or 'cosine', got {metric!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k: expected a positive integer, got {k!r}")
    r = as_features(real, "real", min_samples=k + 1)
    f = as_features(fake, "fake", min_samples=k + 1)
    if r.shape[1] != f.shape[1]:
        raise InputError(f"fake: has {f.shape[1]} features, real has {r.shape[1]}")
    if metric == "cosine":
        for name, a in (("real", r), ("fake", f)):
            if (np.linalg.norm(a, axis=1) == 0).any():
                raise InputError(f"{name}: has an all-zero row; cosine needs a direction")
        r = r / np.linalg.norm(r, axis=1, keepdims=True)
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
    # Distances do not change under a common shift; centring on the real mean keeps the norms,
    # and so the float32 rounding of the products, small.
    centre = r.mean(0)
    r, f = r - centre, f - centre
    r2_real = _knn_sq_radii(r, int(k), block_bytes)
    r2_fake = _knn_sq_radii(f, int(k), block_bytes)
    in_balls, covered, recalled = _ball_counts(r, f, r2_real, r2_fake, closed, block_bytes)
    return PRDC(precision=float(np.mean(in_balls > 0)), recall=float(np.mean(recalled)),
                density=float(in_balls.sum() / (k * len(f))), coverage=float(np.mean(covered)),
                k=int(k), n_real=len(r), n_fake=len(f), metric=metric, closed=closed)


# ----------------------------------------------------------------------------------------------
# shared prototypes


@dataclass
class SharedPrototypes(ResultMixin):
    """A joint k-means of two datasets and how each populates its clusters.

    Attributes
    ----------
    counts_a, counts_b : (k,) int64 members of each dataset per cluster.
    share_a, share_b : (k,) float64 fraction of each dataset in each cluster (each sums to 1).
    purity_a : (k,) float64 ``share_a / (share_a + share_b)``: 1 = only A, 0 = only B, 0.5 = even
        (shares, not counts, so unequal dataset sizes do not tilt it).
    only_a, only_b : (.,) int64 clusters with purity_a >= min_purity (resp. <= 1 - min_purity),
        most populated first.
    order : (k,) int64 clusters by decreasing total share (ties: lower id).
    examples_a, examples_b : (k, e) int64 per cluster, its members from A (resp. B) nearest the
        centroid, -1 padded; ids index each dataset.
    min_purity, n_a, n_b, seed : settings and sizes.
    """

    counts_a: np.ndarray = array_field(_int_array)
    counts_b: np.ndarray = array_field(_int_array)
    share_a: np.ndarray = array_field(_float_array)
    share_b: np.ndarray = array_field(_float_array)
    purity_a: np.ndarray = array_field(_float_array)
    only_a: np.ndarray = array_field(_int_array)
    only_b: np.ndarray = array_field(_int_array)
    order: np.ndarray = array_field(_int_array)
    examples_a: np.ndarray = array_field(_int_array)
    examples_b: np.ndarray = array_field(_int_array)
    min_purity: float = 0.95
    n_a: int = 0
    n_b: int = 0
    seed: int | None = 0


def shared_prototypes(x_a, x_b, n_clusters: int, *, min_purity: float = 0.95,
                      n_examples: int = 8, spherical: bool = True, n_iter: int = 20,
                      seed: int | None = 0, block_bytes: int = BLOCK_BYTES) -> SharedPrototypes:
    """Prototypes of two datasets from one joint k-means, and the clusters only one populates.

    Parameters
    ----------
    x_a : (n_a, d), x_b : (n_b, d) features of the two datasets (same model and layer).
    n_clusters : k of the joint k-means (seeded).
    min_purity : a cluster is one-sided when at least this fraction of its (share-weighted)
        mass comes from one dataset; 1.0 asks for clusters the other dataset does not reach.
    n_examples : members per side kept per cluster, for thumbnails.
    spherical : cosine k-means (default).

    Returns
    -------
    SharedPrototypes
    """
    a = as_features(x_a, "x_a", dtype=np.float32)
    b = as_features(x_b, "x_b", dtype=np.float32)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"x_b: has {b.shape[1]} features, x_a has {a.shape[1]}")
    if not 0.5 < min_purity <= 1.0:
        raise InputError(f"min_purity: expected a fraction in (0.5, 1], got {min_purity}")
    km = kmeans(np.vstack([a, b]), n_clusters, spherical=spherical, n_iter=n_iter, seed=seed,
                block_bytes=block_bytes)
    k, n_a = len(km.centroids), len(a)
    lab_a, lab_b = km.labels[:n_a], km.labels[n_a:]
    counts_a = np.bincount(lab_a, minlength=k)
    counts_b = np.bincount(lab_b, minlength=k)
    share_a, share_b = counts_a / n_a, counts_b / len(b)
    tot = share_a + share_b
    purity = np.divide(share_a, tot, out=np.full(k, 0.5), where=tot > 0)
    order = np.lexsort((np.arange(k), -tot))
    only_a = np.array([c for c in order if tot[c] > 0 and purity[c] >= min_purity], np.int64)
    only_b = np.array([c for c in order if tot[c] > 0 and purity[c] <= 1 - min_purity], np.int64)
    # Examples per side: rank each side's members by the joint clustering's score.
    side_a = _side(km, slice(0, n_a))
    side_b = _side(km, slice(n_a, None))
    return SharedPrototypes(counts_a=counts_a, counts_b=counts_b, share_a=share_a,
                            share_b=share_b, purity_a=purity, only_a=only_a, only_b=only_b,
                            order=order, examples_a=medoids(side_a, n_examples),
                            examples_b=medoids(side_b, n_examples), min_purity=float(min_purity),
                            n_a=n_a, n_b=len(b), seed=seed)


def _side(km: KMeansResult, rows: slice) -> KMeansResult:
    """The joint clustering restricted to one dataset's rows (ids re-based to that dataset)."""
    lab = km.labels[rows]
    return KMeansResult(centroids=km.centroids, labels=lab, scores=km.scores[rows],
                        sizes=np.bincount(lab, minlength=len(km.centroids)),
                        spherical=km.spherical, seed=km.seed)


# ----------------------------------------------------------------------------------------------
# all three


@dataclass
class DatasetComparison(ResultMixin):
    """Fréchet distance, PRDC (A as real, B as judged) and shared prototypes of two datasets."""

    frechet: float = 0.0
    prdc: PRDC = field(default_factory=PRDC, metadata={"load": PRDC.from_dict})
    prototypes: SharedPrototypes = field(default_factory=SharedPrototypes,
                                         metadata={"load": SharedPrototypes.from_dict})


def compare_datasets(x_a, x_b, *, k: int = 5, n_clusters: int | None = None,
                     metric: str = "euclidean", min_purity: float = 0.95, n_examples: int = 8,
                     seed: int | None = 0, block_bytes: int = BLOCK_BYTES) -> DatasetComparison:
    """Compare two feature sets from the same model and layer.

    Parameters
    ----------
    x_a : (n_a, d) the reference set ("real" for PRDC).
    x_b : (n_b, d) the set compared with it.
    k : PRDC neighbours.
    n_clusters : joint k-means clusters (default ``max(2, round(sqrt((n_a + n_b) / 10)))``
        capped at 100).
    metric, min_purity, n_examples, seed : see `prdc` and `shared_prototypes`.

    Returns
    -------
    DatasetComparison
    """
    a = as_features(x_a, "x_a", dtype=np.float32)
    b = as_features(x_b, "x_b", dtype=np.float32)
    if n_clusters is None:
        n_clusters = int(min(100, max(2, round(math.sqrt((len(a) + len(b)) / 10)))))
    return DatasetComparison(
        frechet=frechet_distance(a, b, block_bytes=block_bytes),
        prdc=prdc(a, b, k, metric=metric, block_bytes=block_bytes),
        prototypes=shared_prototypes(a, b, n_clusters, min_purity=min_purity,
                                     n_examples=n_examples, seed=seed, block_bytes=block_bytes))
