"""The one door to plain k-nearest-neighbour search by inner product in `zoolens.analyses.curate`.

Every "k nearest by cosine" the curate tools need (retrieval, the k-NN radii of precision /
recall / density / coverage, the k-NN graph reference) goes through `top_k`, so it can be swapped
for a shared `zoolens.neighbors` later without touching the callers. Cosine search is inner
product on rows scaled to unit norm (`unit_rows`).

The search is exact: float32 matrix products over blocks of queries into one buffer whose size
comes from a byte budget, never an (m, n) matrix. Neighbours are ordered by decreasing score, ties
by the lower pool index, on every run.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError

__all__ = ["BLOCK_BYTES", "unit_rows", "inverse_norms", "top_k"]

# Bytes of float32 scores held per block: large enough for BLAS to run at full speed, small
# enough that a 1M-row search stays far below the size of its inputs.
BLOCK_BYTES = 64 * 2**20


def inverse_norms(x: np.ndarray, name: str = "x", *, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """1 / L2 norm of every row of `x` (n, d), in float64, computed block by block.

    Raises InputError naming the first all-zero row: a zero vector has no direction.
    """
    n, d = x.shape
    out = np.empty(n, dtype=np.float64)
    rows = max(1, block_bytes // (8 * max(d, 1)))
    for s in range(0, n, rows):
        b = x[s:s + rows].astype(np.float64)
        out[s:s + rows] = np.einsum("ij,ij->i", b, b)
    zero = np.flatnonzero(out == 0)
    if zero.size:
        raise InputError(f"{name}: row {int(zero[0])} is all zeros ({zero.size} such rows); "
                         "a zero vector has no cosine similarity, drop or replace it")
    np.sqrt(out, out=out)
    np.divide(1.0, out, out=out)
    return out


def unit_rows(x: np.ndarray, name: str = "x", *, inv: np.ndarray | None = None) -> np.ndarray:
    """float32 copy of `x` (n, d) with every row scaled to unit norm (the scale in float64)."""
    if inv is None:
        inv = inverse_norms(x, name)
    return (x.astype(np.float64) * inv[:, None]).astype(np.float32)


def top_k(queries: np.ndarray, pool: np.ndarray, k: int, *, exclude_self: bool = False,
          block_bytes: int = BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """The `k` largest inner products of every query row with the pool rows, exactly.

    Parameters
    ----------
    queries : (m, d) float32 array
    pool : (n, d) float32 array
    k : number of neighbours, 1 <= k <= n (n - 1 with `exclude_self`)
    exclude_self : `queries` is `pool` (row for row): query i never returns pool row i.
    block_bytes : memory for one block of scores and its selection indices.

    Returns
    -------
    scores : (m, k) float32, decreasing along each row
    index : (m, k) int64 pool rows; equal scores are ordered by the lower index, and a tie at the
        k-th place keeps the lower indices.
    """
    m, n = queries.shape[0], pool.shape[0]
    avail = n - 1 if exclude_self else n
    if not 1 <= k <= avail:
        raise InputError(f"k: expected 1 <= k <= {avail}, got {k}")
    if exclude_self and m != n:
        raise InputError(f"exclude_self: queries ({m} rows) must be the pool ({n} rows)")
    # Per query row: n float32 scores + n int64 partition indices.
    rows = int(max(1, min(m, block_bytes // (12 * n))))
    buf = np.empty((rows, n), dtype=np.float32)
    out_s = np.empty((m, k), dtype=np.float32)
    out_i = np.empty((m, k), dtype=np.int64)
    for s in range(0, m, rows):
        e = min(m, s + rows)
        sc = buf[:e - s]
        np.matmul(queries[s:e], pool.T, out=sc)
        if exclude_self:
            sc[np.arange(e - s), np.arange(s, e)] = -np.inf
        if k < n:
            part = np.argpartition(sc, n - k, axis=1)[:, n - k:]
        else:
            part = np.broadcast_to(np.arange(n), (e - s, n)).copy()
        vals = np.take_along_axis(sc, part, 1)
        # Decreasing score, then increasing index: lexsort's last key is the primary one.
        order = np.lexsort((part, -vals), axis=1)
        part = np.take_along_axis(part, order, 1)
        vals = np.take_along_axis(vals, order, 1)
        if k < n:
            # argpartition picks arbitrary members of a tie at the k-th place: redo those rows
            # with a stable sort so the lower indices win.
            kth = vals[:, -1:]
            tied = (sc == kth).sum(1) > (vals == kth).sum(1)
            for r in np.flatnonzero(tied):
                full = np.argsort(-sc[r], kind="stable")[:k]
                part[r], vals[r] = full, sc[r, full]
        out_s[s:e], out_i[s:e] = vals, part
    return out_s, out_i
