"""Unsupervised object discovery from patch features: TokenCut, MaskCut, DINOv2's PCA colours.

Arrays in, arrays out: every function takes the patch features of one image `(P, D)` (or of
several, `(B, P, D)`) laid out row-major on a `grid = (rows, cols)` patch grid, `P = rows * cols`,
and returns boolean masks on that grid. `upsample_mask` brings a mask to image resolution.

The graph (TokenCut, Wang et al. 2022; MaskCut from CutLER, Wang et al. 2023 "Cut and Learn"):

* rows L2-normalised, cosine affinity `A = F F^T`;
* binary graph (the default of both codes): `W = 1` where `A > tau`, else `eps`. The papers state
  the threshold loosely; both codes use the strict `A > tau` (`A = A > tau`, then zeros -> eps),
  and we follow the code. The strict test matters only for exact ties: with `tau = 0` it keeps the
  all-zero rows MaskCut creates at `eps` rather than at weight 0 (a node of degree 0). With
  `binary=False` (TokenCut's `--no-binary-graph`) the cosine itself is kept where `A > tau`;
* degree `d = W 1` and the second smallest generalized eigenvector of `(D - W) x = lambda D x`,
  normalised `x^T D x = 1` as LAPACK returns it;
* bipartition `x > mean(x)`; the foreground is the side holding the seed, the patch of largest
  `|x|` (so the eigenvector's arbitrary sign does not matter); only the seed's 4-connected
  component of that side is kept (TokenCut's `detect_box`; `grid` is `(rows, cols)`, the order of
  its `dims`). Exact ties (equal |x|, values at the mean) are settled by a rule that depends
  neither on the solver's rounding nor on the sign; see `_foreground`.

The eigen step. `solver="dense"` is the reference: `scipy.linalg.eigh(D - W, D)` on the full
generalized problem, O(P^3). `solver="lanczos"` uses the symmetric normalised form
`M = D^-1/2 W D^-1/2`, whose top eigenvector `u ~ D^1/2 1` (eigenvalue 1) is known exactly: it is
deflated away (`M - 2 u u^T` sends it to -1, the floor of the spectrum) and ARPACK's Lanczos finds
the largest remaining eigenpair `(mu, y)`; then `x = D^-1/2 y` and `lambda = 1 - mu`. A product
costs one pass over `W - eps`, stored sparse when the graph is sparse (clustered, slow spectra come
from sparse graphs). If ARPACK does not converge within a small budget, `solver="shift_invert"`
takes over: Lanczos on `(L + 2uu^T)^-1`, `L = I - M`, through one Cholesky factorisation, which
pulls a clustered low end of the spectrum apart; the dense solver is the last resort.
`solver="auto"` is Lanczos from 64 patches up, dense below. Masks equal the dense solver's unless
`lambda_2` is (numerically) a multiple eigenvalue, where no eigenvector is preferred. On one core,
28x28 grid (benchmarks/bench_ncut.py): dense ~52 ms, Lanczos ~3.3 ms per image.

The binary graph comes from a float32 Gram matrix; the entries whose float32 value lies within a
rigorous rounding bound of `tau` are recomputed in float64, so the graph is the float64 one.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import scipy.linalg
import scipy.ndimage
import scipy.sparse
import scipy.sparse.linalg

from ..._validation import as_features
from ...errors import InputError

__all__ = [
    "ObjectMask",
    "MaskCutResult",
    "ncut",
    "ncut_batch",
    "maskcut",
    "upsample_mask",
    "mask_bbox",
    "pca_rgb",
]

_SOLVERS = ("auto", "dense", "lanczos", "shift_invert")
_AUTO_MIN_PATCHES = 64  # below this the dense solver is as fast and ARPACK's ncv gets cramped
_SPARSE_DENSITY = 0.05  # below this fill a CSR product (and building it) beats a dense gemv
_LANCZOS_NCV = 24
# ARPACK restarts (about ncv products each) before handing over to shift-invert, which costs about
# 100 dense products (a Cholesky factorisation and some 20 triangular solves).
_LANCZOS_MAXITER_DENSE = 4
_LANCZOS_MAXITER_SPARSE = 8
_SHIFT_INVERT_NCV = 20
_SHIFT_INVERT_MAXITER = 20
_TIE_RTOL = 1e-8  # far above both solvers' rounding (<= 1e-11 relative), far below real gaps
_LANCZOS_TOL = 1e-12


# --------------------------------------------------------------------------------------------------
# results


@dataclass
class ObjectMask:
    """One discovered object on the patch grid.

    mask: (rows, cols) bool. score: normalized-cut value `cut/assoc(A) + cut/assoc(rest)` of the
    mask against every other patch on the graph it was cut from (0 = a perfectly separate object,
    2 = no separation). eigenvalue: `lambda_2` of that graph (the relaxed Ncut).
    area: number of patches. bbox: `(x0, y0, x1, y1)` in patch units, `x` along columns, ends
    exclusive (TokenCut's box before scaling by the patch size): `mask[y0:y1, x0:x1]` holds it.
    """

    mask: np.ndarray
    score: float
    eigenvalue: float
    area: int
    bbox: tuple[int, int, int, int]

    def to_dict(self) -> dict:
        return {"mask": self.mask.astype(int).tolist(), "score": self.score,
                "eigenvalue": self.eigenvalue, "area": self.area, "bbox": list(self.bbox)}

    @classmethod
    def from_dict(cls, d: dict) -> "ObjectMask":
        return cls(mask=np.asarray(d["mask"], dtype=bool), score=float(d["score"]),
                   eigenvalue=float(d["eigenvalue"]), area=int(d["area"]), bbox=tuple(d["bbox"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> "ObjectMask":
        return cls.from_dict(json.loads(s))


@dataclass
class MaskCutResult:
    """The objects MaskCut found in one image, in discovery order, with the settings used.

    stop_reason: "n_objects" (all rounds kept a mask), "overlap" (a new cut overlapped a kept mask
    by IoU > max_iou) or "small" (its new patches covered <= min_area of the grid). A dropped cut
    ends the search: the features did not change, so the next round would repeat the same cut.
    """

    objects: list[ObjectMask]
    grid: tuple[int, int]
    n_objects: int
    tau: float
    eps: float
    binary: bool
    max_iou: float
    min_area: float
    solver: str
    stop_reason: str

    @property
    def masks(self) -> list[np.ndarray]:
        """The (rows, cols) bool masks, pairwise disjoint."""
        return [o.mask for o in self.objects]

    def __len__(self) -> int:
        return len(self.objects)

    def to_json(self) -> str:
        d = {k: v for k, v in asdict(self).items() if k != "objects"}
        d["objects"] = [o.to_dict() for o in self.objects]
        d["grid"] = list(self.grid)
        return json.dumps(d)

    @classmethod
    def from_json(cls, s: str) -> "MaskCutResult":
        d = json.loads(s)
        d["objects"] = [ObjectMask.from_dict(o) for o in d["objects"]]
        d["grid"] = tuple(d["grid"])
        return cls(**d)


# --------------------------------------------------------------------------------------------------
# validation helpers


def _resolve_grid(grid, n_patches: int) -> tuple[int, int]:
    if grid is None:
        side = math.isqrt(n_patches)
        if side * side != n_patches:
            raise InputError(f"grid: None means a square grid, but {n_patches} patches is not a "
                             "square; pass grid=(rows, cols)")
        return side, side
    try:
        rows, cols = (int(g) for g in grid)
    except (TypeError, ValueError):
        raise InputError(f"grid: expected (rows, cols), got {grid!r}") from None
    if rows < 1 or cols < 1 or rows * cols != n_patches:
        raise InputError(f"grid: (rows, cols) = ({rows}, {cols}) does not hold {n_patches} patches")
    return rows, cols


def _check_options(tau: float, eps: float, solver: str) -> None:
    if not 0.0 <= tau < 1.0:
        raise InputError(f"tau: expected 0 <= tau < 1 (a cosine threshold), got {tau}")
    if not eps > 0.0:
        raise InputError(f"eps: expected eps > 0 (it keeps the graph connected), got {eps}")
    if solver not in _SOLVERS:
        raise InputError(f"solver: unknown solver {solver!r}; have {', '.join(_SOLVERS)}")


def _check_patches(features, name: str, ndim: int) -> np.ndarray:
    x = as_features(features, name, ndim=ndim)
    if x.shape[-2] < 2:
        raise InputError(f"{name}: a cut needs at least 2 patches, got {x.shape[-2]}")
    if x.shape[-1] < 1:
        raise InputError(f"{name}: expected at least one feature dimension, got shape {x.shape}")
    return x


# --------------------------------------------------------------------------------------------------
# graph


def _normalize_rows(x: np.ndarray, name: str | None = None) -> np.ndarray:
    """(P, D) -> rows of unit norm; all-zero rows stay zero (as torch's F.normalize leaves them)."""
    norms = np.sqrt(np.einsum("pd,pd->p", x, x))
    zero = norms == 0
    if name is not None and zero.any():
        warnings.warn(f"{name}: {int(zero.sum())} patch(es) have all-zero features; they get "
                      "affinity eps to every patch", stacklevel=3)
    return x / np.where(zero, 1.0, norms)[:, None]


def _excess_affinity(fn: np.ndarray, tau: float, eps: float, binary: bool) -> np.ndarray:
    """Unit rows (P, D) -> C = W - eps, (P, P) float64, zero where the affinity fell below tau."""
    if not binary:
        a = fn @ fn.T
        return np.where(a > tau, a - eps, 0.0)
    f32 = fn.astype(np.float32)
    a32 = f32 @ f32.T
    # |a32 - a64| <= (D + 2) * 2^-24 for unit vectors (dot-product error bound plus the two casts),
    # so only entries within that of tau can threshold differently; recompute those in float64.
    margin = np.float32(4.0 * (fn.shape[1] + 2) * 2.0 ** -24)
    above = a32 > np.float32(tau)
    near = np.flatnonzero(np.abs(a32 - np.float32(tau)) <= margin)  # flat: np.nonzero on 2D is slow
    if near.size:
        rows, cols = np.divmod(near, a32.shape[1])
        above.flat[near] = np.einsum("kd,kd->k", fn[rows], fn[cols]) > tau
    return above * (1.0 - eps)


# --------------------------------------------------------------------------------------------------
# eigen step: (x, lambda) with x the second smallest generalized eigenvector, x^T D x = 1


def _fiedler_dense(c: np.ndarray, eps: float) -> tuple[np.ndarray, float]:
    w = c + eps
    d = w.sum(axis=1)
    dm = np.diag(d)
    vals, vecs = scipy.linalg.eigh(dm - w, dm, subset_by_index=[1, 1], check_finite=False)
    return vecs[:, 0], float(vals[0])


def _normalized_parts(c: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (s = D^-1/2 1, u = D^1/2 1 / |D^1/2 1|, v0): the scaling, the trivial eigenvector of
    M = D^-1/2 W D^-1/2, and a fixed start vector orthogonal to u (same answer on every call)."""
    d = c.sum(axis=1) + eps * c.shape[0]
    u = np.sqrt(d)
    s = 1.0 / u
    u = u / np.linalg.norm(u)
    v0 = np.random.default_rng(0).standard_normal(c.shape[0])
    v0 -= (u @ v0) * u
    return s, u, v0


def _fiedler_lanczos(c: np.ndarray, eps: float) -> tuple[np.ndarray, float]:
    """Largest eigenpair of M - 2uu^T by ARPACK; shift-invert, then dense, if that fails."""
    p = c.shape[0]
    if p < 8:
        return _fiedler_dense(c, eps)
    s, u, v0 = _normalized_parts(c, eps)
    nz = np.flatnonzero(c) if np.count_nonzero(c) < _SPARSE_DENSITY * c.size else None
    if nz is None:
        op_c, maxiter = c, _LANCZOS_MAXITER_DENSE
    else:  # built by hand: scipy's dense -> CSR conversion is several times slower
        rows, cols = np.divmod(nz, p)
        indptr = np.zeros(p + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=p), out=indptr[1:])
        op_c = scipy.sparse.csr_array((c.flat[nz], cols, indptr), shape=(p, p))
        maxiter = _LANCZOS_MAXITER_SPARSE

    def matvec(v: np.ndarray) -> np.ndarray:
        v = v.reshape(-1)
        z = s * v
        y = op_c @ z + eps * z.sum()  # W z with W = C + eps 11^T
        y *= s
        y -= 2.0 * (u @ v) * u  # M - 2uu^T: the trivial eigenvalue 1 goes to -1, the floor
        return y

    op = scipy.sparse.linalg.LinearOperator((p, p), matvec=matvec, dtype=np.float64)
    try:
        mu, y = scipy.sparse.linalg.eigsh(op, k=1, which="LA", v0=v0, ncv=min(_LANCZOS_NCV, p - 1),
                                          tol=_LANCZOS_TOL, maxiter=maxiter)
    except scipy.sparse.linalg.ArpackNoConvergence:
        # A clustered spectrum near lambda_2 (typically a very sparse graph): invert it apart.
        return _fiedler_shift_invert(c, eps)
    y = y[:, 0] / np.linalg.norm(y[:, 0])
    return s * y, float(1.0 - mu[0])


def _fiedler_shift_invert(c: np.ndarray, eps: float) -> tuple[np.ndarray, float]:
    """Largest eigenpair of (L + 2uu^T)^-1 on u's complement, L = I - M the normalised Laplacian.

    L + 2uu^T is positive definite (u spans L's null space, the graph is connected through eps), so
    one Cholesky factorisation (P^3/3, a fraction of a dense eigensolver) serves every product, and
    the inverse spreads the small end of L's spectrum apart: Lanczos then needs few products.
    """
    p = c.shape[0]
    if p < 8:
        return _fiedler_dense(c, eps)
    s, u, v0 = _normalized_parts(c, eps)
    lap = c + eps
    lap *= s[:, None]
    lap *= -s[None, :]
    lap[np.diag_indices(p)] += 1.0
    lap += 2.0 * np.outer(u, u)
    try:
        factor = scipy.linalg.cho_factor(lap, lower=True, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError:
        return _fiedler_dense(c, eps)

    def matvec(v: np.ndarray) -> np.ndarray:
        y = scipy.linalg.cho_solve(factor, v.reshape(-1), check_finite=False)
        y -= (u @ y) * u  # stay on u's complement (u's eigenvalue 1/2 is below every wanted one)
        return y

    op = scipy.sparse.linalg.LinearOperator((p, p), matvec=matvec, dtype=np.float64)
    try:
        theta, y = scipy.sparse.linalg.eigsh(op, k=1, which="LA", v0=v0, tol=_LANCZOS_TOL,
                                             ncv=min(_SHIFT_INVERT_NCV, p - 1),
                                             maxiter=_SHIFT_INVERT_MAXITER)
    except scipy.sparse.linalg.ArpackNoConvergence:
        return _fiedler_dense(c, eps)
    y = y[:, 0] / np.linalg.norm(y[:, 0])
    return s * y, float(1.0 / theta[0])


def _fiedler(c: np.ndarray, eps: float, solver: str) -> tuple[np.ndarray, float]:
    if solver == "dense" or (solver == "auto" and c.shape[0] < _AUTO_MIN_PATCHES):
        return _fiedler_dense(c, eps)
    if solver == "shift_invert":
        return _fiedler_shift_invert(c, eps)
    return _fiedler_lanczos(c, eps)


# --------------------------------------------------------------------------------------------------
# partition


def _seed_component(side: np.ndarray, seed: int, grid: tuple[int, int]) -> np.ndarray:
    """(P,) bool side, seed index -> (P,) bool: the seed's 4-connected component of that side."""
    labels, _ = scipy.ndimage.label(side.reshape(grid))  # default structure: 4-connectivity
    return (labels == labels.flat[seed]).reshape(-1)


def _foreground(x: np.ndarray, grid: tuple[int, int], corner_flip: bool) -> tuple[np.ndarray, int]:
    """Eigenvector (P,) -> (foreground component (P,) bool, seed index), whatever the sign of x.

    TokenCut: split at the mean, the seed is the largest |x|, the foreground its side. After
    MaskCut's corner flip the foreground is the other side and the seed its extreme (MaskCut's
    `argmax(-eigvec)`). Exact ties are settled the same way whichever solver (and sign) produced x:
    values within `_TIE_RTOL` of the largest count as tied and the lowest index wins, and values
    within `_TIE_RTOL` of the mean go with the side away from the seed. Ties arise from symmetric
    structure (duplicate patches, isolated patches of a sparse graph); elsewhere this is TokenCut.
    """
    dev = x - x.mean()
    tol = _TIE_RTOL * float(np.abs(x).max())
    seed = _first_max(np.abs(x), tol)
    fg = dev * np.sign(dev[seed]) > tol
    if corner_flip:
        rows, cols = grid
        corners = fg[[0, cols - 1, (rows - 1) * cols, rows * cols - 1]]
        if int(corners.sum()) >= 3:  # object-centric prior: the background holds the corners
            fg = ~fg
            seed = _first_max(np.where(fg, np.abs(dev), -np.inf), tol)
    return _seed_component(fg, seed, grid), seed


def _first_max(values: np.ndarray, tol: float) -> int:
    """Lowest index whose value is within tol of the maximum."""
    return int(np.flatnonzero(values >= values.max() - tol)[0])


def _ncut_value(c: np.ndarray, eps: float, inside: np.ndarray) -> float:
    """Normalized cut of `inside` (P,) bool against the rest, on W = C + eps."""
    p = c.shape[0]
    n_in = int(inside.sum())
    if n_in == 0 or n_in == p:
        return 2.0
    deg = c.sum(axis=1) + eps * p
    assoc_in = float(deg[inside].sum())
    within = float(c[np.ix_(inside, inside)].sum()) + eps * n_in * n_in
    cut = assoc_in - within
    return cut / assoc_in + cut / float(deg[~inside].sum())


# --------------------------------------------------------------------------------------------------
# public API


def ncut(features, grid: tuple[int, int] | None = None, tau: float = 0.2, eps: float = 1e-5, *,
         solver: str = "auto", binary: bool = True) -> np.ndarray:
    """TokenCut: foreground patches of one image by a normalized cut of its patch-affinity graph.

    features: (P, D) patch features (no class token), NumPy or torch. grid: (rows, cols) with
    rows * cols = P, row-major; None for a square grid. tau, eps: affinities above tau weigh 1
    (binary) or keep their cosine (binary=False), the others eps. solver: "dense" (scipy.linalg.eigh
    on the generalized problem, the reference), "lanczos" (deflated normalised form, ARPACK) or
    "auto". Returns (P,) bool: the seed's 4-connected component of the seed's side of the split.
    """
    _check_options(tau, eps, solver)
    x = _check_patches(features, "features", 2)
    grid = _resolve_grid(grid, x.shape[0])
    c = _excess_affinity(_normalize_rows(x, "features"), tau, eps, binary)
    vec, _ = _fiedler(c, eps, solver)
    fg, _ = _foreground(vec, grid, corner_flip=False)
    return fg


def ncut_batch(features, grid: tuple[int, int] | None = None, tau: float = 0.2, eps: float = 1e-5,
               *, solver: str = "auto", binary: bool = True) -> np.ndarray:
    """`ncut` over a batch: features (B, P, D) -> (B, P) bool. Images are cut one after another:
    on a CPU the Lanczos step is already bound by one pass over each (P, P) graph per product.
    """
    _check_options(tau, eps, solver)
    x = _check_patches(features, "features", 3)
    grid = _resolve_grid(grid, x.shape[1])
    out = np.zeros(x.shape[:2], dtype=bool)
    for b in range(x.shape[0]):
        c = _excess_affinity(_normalize_rows(x[b], f"features[{b}]"), tau, eps, binary)
        vec, _ = _fiedler(c, eps, solver)
        out[b], _ = _foreground(vec, grid, corner_flip=False)
    return out


def maskcut(features, grid: tuple[int, int] | None = None, n_objects: int = 3, tau: float = 0.2,
            eps: float = 1e-5, *, solver: str = "auto", binary: bool = True, max_iou: float = 0.5,
            min_area: float = 0.01) -> MaskCutResult:
    """MaskCut (CutLER): up to `n_objects` disjoint object masks from one image's patch features.

    features: (P, D); grid: (rows, cols) or None for square. Each round zeroes the features of the
    patches already taken (their affinities become eps), cuts the graph as `ncut` does, takes the
    other side when 3 or more of the 4 corner patches fall in the foreground, and keeps the seed's
    4-connected component. The round's cut is dropped, and the search ends, when it overlaps a kept
    mask by IoU > max_iou or when its patches not yet taken cover <= min_area of the grid (CutLER's
    0.5 and 1%). A kept mask is the component minus the patches already taken, so masks are disjoint
    (like CutLER's subtraction of earlier masks; it can then be disconnected, rarely).

    Returns a MaskCutResult; `.masks` is the list of (rows, cols) bool masks.
    Unlike CutLER's script we check the IoU against every kept mask, not only the last one, and stop
    at the first dropped cut: the script swaps in an empty mask and goes on, so its next round
    repeats the same cut, compares it with that empty mask, and keeps it.
    """
    _check_options(tau, eps, solver)
    if int(n_objects) < 1:
        raise InputError(f"n_objects: expected at least 1, got {n_objects}")
    if not 0.0 <= max_iou <= 1.0:
        raise InputError(f"max_iou: expected a value in [0, 1], got {max_iou}")
    if not 0.0 <= min_area < 1.0:
        raise InputError(f"min_area: expected a fraction of the grid in [0, 1), got {min_area}")
    x = _check_patches(features, "features", 2)
    grid = _resolve_grid(grid, x.shape[0])
    p = x.shape[0]
    fn = _normalize_rows(x, "features")
    taken = np.zeros(p, dtype=bool)
    objects: list[ObjectMask] = []
    stop_reason = "n_objects"
    for _ in range(int(n_objects)):
        c = _excess_affinity(np.where(taken[:, None], 0.0, fn), tau, eps, binary)
        vec, lam = _fiedler(c, eps, solver)
        comp, _ = _foreground(vec, grid, corner_flip=True)
        if any(_iou(comp, o.mask.reshape(-1)) > max_iou for o in objects):
            stop_reason = "overlap"
            break
        new = comp & ~taken
        if new.sum() <= min_area * p:
            stop_reason = "small"
            break
        mask = new.reshape(grid)
        objects.append(ObjectMask(mask=mask, score=_ncut_value(c, eps, new), eigenvalue=lam,
                                  area=int(new.sum()), bbox=mask_bbox(mask)))
        taken |= new
    return MaskCutResult(objects=objects, grid=grid, n_objects=int(n_objects), tau=float(tau),
                         eps=float(eps), binary=bool(binary), max_iou=float(max_iou),
                         min_area=float(min_area), solver=solver, stop_reason=stop_reason)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def mask_bbox(mask) -> tuple[int, int, int, int] | None:
    """(h, w) bool -> (x0, y0, x1, y1), ends exclusive (`mask[y0:y1, x0:x1]`), or None if empty."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise InputError(f"mask: expected a 2D (h, w) mask, got shape {m.shape}")
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def upsample_mask(mask, size: tuple[int, int], *, mode: str = "nearest") -> np.ndarray:
    """(h, w) bool patch mask -> (H, W) bool image mask.

    mode "nearest": pixel (i, j) takes patch (floor(i h / H), floor(j w / W)), as MaskCut's
    `F.interpolate(mode="nearest")` (computed in integers here, so exact for any ratio).
    mode "bilinear": the 0/1 mask interpolated with half-pixel centres (`align_corners=False`, edges
    clamped) and kept where >= 0.5.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"mask: expected a 2D (h, w) mask, got shape {m.shape}")
    try:
        out_h, out_w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"size: expected (H, W), got {size!r}") from None
    if out_h < 1 or out_w < 1:
        raise InputError(f"size: expected positive (H, W), got {size!r}")
    h, w = m.shape
    m = m.astype(bool)
    if mode == "nearest":
        ri = (np.arange(out_h) * h) // out_h
        ci = (np.arange(out_w) * w) // out_w
        return m[np.ix_(ri, ci)]
    if mode == "bilinear":
        f = m.astype(np.float64)
        r0, r1, rw = _linear_taps(h, out_h)
        c0, c1, cw = _linear_taps(w, out_w)
        f = f[r0] * (1.0 - rw)[:, None] + f[r1] * rw[:, None]
        f = f[:, c0] * (1.0 - cw) + f[:, c1] * cw
        return f >= 0.5
    raise InputError(f"mode: unknown mode {mode!r}; have nearest, bilinear")


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo


def _top_components(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) -> (projections (n, k), variances (k,)) of the centred data, signs fixed so that each
    component's largest-|loading| entry is positive (as sklearn's svd_flip): reproducible colours.
    """
    xc = x - x.mean(axis=0)
    cov = xc.T @ xc / max(len(x) - 1, 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:k]
    vals, vecs = vals[order], vecs[:, order]
    flip = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(vecs.shape[1])])
    vecs = vecs * np.where(flip == 0, 1.0, flip)
    proj = xc @ vecs
    if proj.shape[1] < k:  # fewer feature dimensions than components
        proj = np.pad(proj, ((0, 0), (0, k - proj.shape[1])))
        vals = np.pad(vals, (0, k - vals.shape[0]))
    return proj, np.maximum(vals, 0.0)


def pca_rgb(patch_features, grid: tuple[int, int] | None = None, *,
            threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """DINOv2's PCA figure: foreground by the first principal component, colours by three more.

    patch_features: (N, P, D), the patches of N images; PCA is fitted jointly over all N * P
    patches. grid: (rows, cols) or None for square. The first component is oriented so that its
    positive side (above the mean) is the minority of patches, taken as the foreground (objects
    cover less of a photo than the background does; on an exact tie, the side holding the largest
    |projection|). threshold None splits at the mean (0 of the centred projection, TokenCut's
    split); a float in [0, 1] is applied instead to that oriented component min-max scaled over all
    patches (as in the DINOv2 notebooks). A second PCA over the foreground patches only gives three
    components, each min-max scaled over them to [0, 1]: the RGB colours; background is black.

    Returns (rgb (N, rows, cols, 3) float64 in [0, 1], foreground (N, rows, cols) bool).
    """
    x = as_features(patch_features, "patch_features", ndim=3)
    n, p, dim = x.shape
    grid = _resolve_grid(grid, p)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold: expected None or a value in [0, 1], got {threshold}")
    flat = x.reshape(n * p, dim)
    rgb = np.zeros((n * p, 3))
    proj, var = _top_components(flat, 1)
    first = proj[:, 0]
    if var[0] <= 0.0 or np.ptp(first) == 0.0:
        warnings.warn("patch_features: all patches are equal; no foreground, all black",
                      stacklevel=2)
        return rgb.reshape(n, *grid, 3), np.zeros((n, *grid), dtype=bool)
    n_pos, n_neg = np.count_nonzero(first > 0), np.count_nonzero(first < 0)
    if n_pos > n_neg or (n_pos == n_neg and first[np.argmax(np.abs(first))] < 0):
        first = -first  # the minority side, on a tie the side of the extreme patch: sign-free
    if threshold is None:
        fg = first > 0
    else:
        scaled = (first - first.min()) / np.ptp(first)
        fg = scaled > threshold
    if not fg.any():
        warnings.warn(f"threshold: {threshold} leaves no foreground patch; all black", stacklevel=2)
        return rgb.reshape(n, *grid, 3), fg.reshape(n, *grid)
    colours, _ = _top_components(flat[fg], 3)
    lo, span = colours.min(axis=0), np.ptp(colours, axis=0)
    flat_span = span <= 1e-12 * max(float(np.abs(colours).max()), 1.0)
    if flat_span.any():
        warnings.warn(f"pca_rgb: {int(flat_span.sum())} colour component(s) are constant over the "
                      "foreground; set to 0", stacklevel=2)
    rgb[fg] = np.where(flat_span, 0.0, (colours - lo) / np.where(flat_span, 1.0, span))
    return np.clip(rgb, 0.0, 1.0).reshape(n, *grid, 3), fg.reshape(n, *grid)
