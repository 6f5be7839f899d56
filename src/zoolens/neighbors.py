"""Exact nearest neighbours by inner product: chunked float32 products and an exact top-k.

One implementation for every tool that ranks rows by similarity: the k-NN probe
(`analyses.probes.knn`), the k-NN out-of-distribution score (`analyses.ood`), and the curation
tools (`analyses.curate`: retrieval, the k-NN radii of precision / recall / density / coverage).
It ranks by the inner product of the rows it is given; the caller L2-normalises them for cosine
similarity (``normalize=True`` here, or its own code, e.g. with `inverse_norms`, which refuses
all-zero rows instead of giving them similarity 0).

How it stays fast and exact:

- Queries are taken in chunks; each chunk's similarities to the whole base go into ONE reused
  float32 buffer (no page faults per chunk), so memory is O(chunk_size * n_base). The product is
  nearly all of the cost, so the GEMM is chosen per CPU (`_cpu_gemm`): on CUDA ``torch.mm``; on
  Intel CPUs ``torch.mm`` too (the PyTorch wheels' MKL) for large blocks; otherwise NumPy's
  ``matmul`` (OpenBLAS) into the same shared-memory buffer. On an AVX-512 AMD EPYC, OpenBLAS
  takes 1.05 CPU-seconds per core for a 1342 x 768 x 50,000 product and MKL 1.5 (MKL does not
  use its fast kernels on AMD). On a 2-core Sapphire Rapids Xeon the two GEMMs alone are within
  a few percent of each other on a quiet machine (6.50 s OpenBLAS vs 6.77 s MKL for
  10,000 x 768 x 50,000 on one core), but the k-NN OOD score on 50,000 x 768 / 4,026 x 768,
  the two taking turns on a machine shared with other jobs, took 2.97 vs 2.68 CPU-seconds on one
  thread and 3.62 vs 3.01 on two with OpenBLAS vs MKL: OpenBLAS' idle workers spin after each
  product while the top-k runs. Small blocks always go to OpenBLAS: torch's OpenMP threads cost
  up to milliseconds per call when the cores are oversubscribed (measured: 12 ms for a
  1 x 6 x 3000 product with 2 threads on a loaded 2-core machine, vs 15 us with NumPy). torch's
  threads follow ``torch.set_num_threads``; NumPy's follow OMP_NUM_THREADS /
  OPENBLAS_NUM_THREADS (or threadpoolctl).
- The top-k of each row is exact. On CPU, when the base is large, `top_k_per_row` prunes before it
  selects: the k largest values of a row lie in the k groups of columns with the largest group
  maxima (any element outside them is below k group maxima), applied twice (groups of 8 columns,
  then groups of 8 group maxima). One pass over the block computes the group maxima; everything
  after works on about k * 9 values per row. ``torch.topk`` over 50,000 columns costs a quarter of
  the product itself (measured: 0.24 s vs 0.96 s for a 1342 x 768 x 50,000 block on one core);
  the pruned selection about a tenth. Column groups are strided (g, g + G, g + 2G, ...) so that
  their maxima are elementwise maxima of contiguous slices, which vectorise.
- Ties: `top_k_similar` and the probe's `_stable_topk` order equal similarities by the lower base
  index, and the top-k *set* at the boundary follows the same rule.
"""

from __future__ import annotations

import functools
import platform
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ._validation import as_features, inverse_norms  # noqa: F401  (public here too)
from .errors import InputError
from .zoo.registry import resolve_device

__all__ = ["top_k_similar", "top_k_per_row", "similarity_blocks", "default_chunk_size",
           "inverse_norms"]

# Bytes of float32 similarities held per chunk when `chunk_size` is None (about 256 MiB on CPU):
# big enough that BLAS runs at full speed, small enough to leave memory for everything else.
_CHUNK_BYTES_CPU = 256 * 2**20
_CHUNK_BYTES_CUDA = 1024 * 2**20

# Pruned top-k (CPU): level-1 groups of `_GROUP` columns, level-2 groups of `_SUPER` level-1
# maxima. Pruning is used when the level-2 groups outnumber k by `_PRUNE_MIN` (it then reads
# about k * (_GROUP + 1) values per row after the pass over the block).
_GROUP = 8
_SUPER = 8
_PRUNE_MIN = 2

# Rows of a block per thread of the pruned top-k (fewer rows: one thread).
_ROWS_PER_THREAD = 64

# Multiply-adds from which a CPU block may go to torch's MKL (`_matmul_into`); below, thread
# start-up can cost more than the product.
_MKL_MIN_MACS = 2**27


def default_chunk_size(n_base: int, device: torch.device) -> int:
    """Query rows per block: a float32 block of `n_base` columns near 256 MiB (1 GiB on CUDA),
    between 64 and 4096 rows."""
    budget = _CHUNK_BYTES_CUDA if device.type == "cuda" else _CHUNK_BYTES_CPU
    return int(min(4096, max(64, budget // (4 * max(n_base, 1)))))


def _normalize(x: np.ndarray, name: str, device: torch.device, stacklevel: int = 4) -> torch.Tensor:
    """Unit-norm float32 rows on `device`; zero rows stay zero (similarity 0 to everything)."""
    # from_numpy shares memory (no copy); it warns on read-only arrays, so copy those.
    t = torch.from_numpy(x if x.flags.writeable else x.copy()).to(device)
    norms = torch.linalg.vector_norm(t, dim=1)
    n_zero = int((norms == 0).sum())
    if n_zero:
        warnings.warn(f"{name}: {n_zero} all-zero row(s) have no direction; their cosine "
                      f"similarity is 0 to everything", stacklevel=stacklevel)
    return t / norms.clamp_min(torch.finfo(t.dtype).tiny).unsqueeze(1)


@functools.lru_cache(maxsize=1)
def _cpu_gemm() -> str:
    """The faster float32 GEMM on this CPU (module notes): "torch" (MKL) on Intel CPUs when
    torch has MKL, else "numpy" (OpenBLAS). Decided once per process, by vendor only, so that
    results do not depend on a timing."""
    if not torch.backends.mkl.is_available():
        return "numpy"
    try:
        with open("/proc/cpuinfo") as f:
            vendor = next((line for line in f if line.startswith("vendor_id")), "")
    except OSError:
        vendor = platform.processor()
    return "torch" if "GenuineIntel" in vendor or "Intel64" in vendor else "numpy"


def _matmul_into(q: torch.Tensor, base: torch.Tensor, out: torch.Tensor) -> None:
    """out = q @ base.T in float32, into a reused buffer (no page faults per chunk)."""
    large = q.shape[0] * base.shape[0] * base.shape[1] >= _MKL_MIN_MACS
    if out.device.type == "cpu" and not (large and _cpu_gemm() == "torch"):
        # Shared memory both ways: no copies. See the module notes for the choice of GEMM.
        np.matmul(q.numpy(), base.numpy().T, out=out.numpy())
    else:
        torch.mm(q, base.T, out=out)


def similarity_blocks(queries: torch.Tensor, base: torch.Tensor,
                      chunk_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, block)``: ``block = queries[start:start + rows] @ base.T`` per chunk.

    Args:
        queries: (m, d) float32 tensor.
        base: (n, d) float32 tensor on the same device.
        chunk_size: query rows per block.

    Yields:
        The first query row of the block and the (rows, n) float32 block. The block is a view
        of one buffer reused for every chunk: it is overwritten by the next iteration.
    """
    m, n = queries.shape[0], base.shape[0]
    buf = torch.empty((min(chunk_size, m), n), dtype=torch.float32, device=base.device)
    for start in range(0, m, chunk_size):
        q = queries[start:start + chunk_size]
        block = buf[: q.shape[0]]
        _matmul_into(q, base, block)
        yield start, block


# --------------------------------------------------------------------------------------------
# Exact top-k of each row
# --------------------------------------------------------------------------------------------

def _group_max(x: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """(rows, G) maxima of the strided column groups {g, g + G, ..., g + (size - 1) G} plus,
    for g < n - size * G, the leftover column size * G + g; G = n // size (needs G >= size)."""
    r, n = x.shape
    g = n // size
    # A (rows, size, G) view: the maximum over axis 1 is `size` elementwise maxima of
    # contiguous rows of G values, which vectorise (contiguous groups of 8 do not).
    gm = x[:, : g * size].reshape(r, size, g).max(axis=1)
    rest = n - g * size
    if rest:
        np.maximum(gm[:, :rest], x[:, g * size:], out=gm[:, :rest])
    return gm, g


def _gather_groups(x: np.ndarray, groups: np.ndarray, size: int, g: int) -> np.ndarray:
    """Members of the given groups of `_group_max`: (rows, (size + 1) * k) values, position
    t * k + j holding column groups[:, j] + t * g; t = size is the leftover column (-inf where
    a group has none). A gather along the (rows, size, G) view: no index arrays per member."""
    r, n = x.shape
    vals = np.empty((r, size + 1, groups.shape[1]), dtype=x.dtype)
    vals[:, :size] = np.take_along_axis(x[:, : size * g].reshape(r, size, g),
                                        groups[:, None, :], axis=2)
    rest = n - size * g
    if rest:
        vals[:, size] = np.take_along_axis(x[:, size * g:], np.minimum(groups, rest - 1), axis=1)
        np.putmask(vals[:, size], groups >= rest, -np.inf)
    else:
        vals[:, size] = -np.inf
    return vals.reshape(r, -1)


def _largest(v: np.ndarray, k: int) -> np.ndarray:
    """Positions (rows, k) of the k largest values of each row, in no particular order."""
    n = v.shape[1]
    return np.argpartition(v, n - k, axis=1)[:, n - k:]


def _pruned_top_k(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each row of a wide float32 array, via group maxima (module notes)."""
    rows = np.arange(x.shape[0])[:, None]
    gm1, g1 = _group_max(x, _GROUP)
    gm2, g2 = _group_max(gm1, _SUPER)
    best2 = _largest(gm2, k)                                   # the k best super-groups
    pos = _largest(_gather_groups(gm1, best2, _SUPER, g2), k)  # their best k group maxima
    groups = best2[rows, pos % k] + (pos // k) * g2            # the k best level-1 groups
    v = _gather_groups(x, groups, _GROUP, g1)                  # they hold the top-k values
    pos = _largest(v, k)
    vals = v[rows, pos]
    cols = groups[rows, pos % k] + (pos // k) * g1
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(cols, order, axis=1)


def top_k_per_row(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k largest values of each row and their columns, values in descending order.

    Args:
        block: (rows, n) float tensor (finite values).
        k: how many per row; at most n.

    Returns:
        ``(values, indices)``, each (rows, k), on the block's device. The multiset of values is
        exact; the order of equal values (and which of several equal values at the k-th place
        is kept) is unspecified: `_stable_topk` and `top_k_similar` fix it.
    """
    rows, n = block.shape
    if not 1 <= k <= n:
        raise InputError(f"k: expected 1 <= k <= {n}, got {k}")
    if not (block.device.type == "cpu" and block.dtype == torch.float32
            and (n // _GROUP) // _SUPER >= max(_PRUNE_MIN * k, _SUPER)):
        return torch.topk(block, k, dim=1, largest=True, sorted=True)
    x = block.numpy()
    threads = min(torch.get_num_threads(), rows // _ROWS_PER_THREAD)
    if threads <= 1:
        vals, idx = _pruned_top_k(x, k)
    else:
        # NumPy releases the GIL in these loops: row slices run in parallel, like torch.topk's
        # intra-op threads would.
        cuts = np.linspace(0, rows, threads + 1).astype(int)
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(lambda i: _pruned_top_k(x[cuts[i]:cuts[i + 1]], k),
                                  range(threads)))
        vals = np.concatenate([p[0] for p in parts])
        idx = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(vals), torch.from_numpy(idx)


def _stable_topk(buf: torch.Tensor, kmax: int, boundaries: Sequence[int]) -> torch.Tensor:
    """Indices (rows, kmax) of the largest entries per row, ordered so that every prefix of
    length k in `boundaries` is the top-k set with ties broken by the lower column index.

    One top-(kmax + 1) finds the rows where a boundary is tied (the k-th and (k+1)-th values
    are equal); only those rows are re-ranked with a full stable sort, which is rare on real
    features.
    """
    n = buf.shape[1]
    take = min(kmax + 1, n)
    vals, idx = top_k_per_row(buf, take)
    tied = torch.zeros(buf.shape[0], dtype=torch.bool, device=buf.device)
    for k in boundaries:
        if k < take:
            tied |= vals[:, k - 1] == vals[:, k]
    # Inside the selection, order among equal values matters only at a boundary (handled
    # above); the probe's votes are sums, so the order of the rest is irrelevant to it.
    idx = idx[:, :kmax]
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        # A descending stable sort keeps equal values in index order: lower index first.
        _, full = torch.sort(buf[rows], dim=1, descending=True, stable=True)
        idx[rows] = full[:, :kmax].to(idx.device)
    return idx


def top_k_similar(queries, base, k: int, *, normalize: bool = False, exclude_self: bool = False,
                  chunk_size: int | None = None, device=None) -> tuple[np.ndarray, np.ndarray]:
    """The `k` base rows with the largest inner product with each query (exact search).

    Args:
        queries: (m, d) array (NumPy or torch).
        base: (n, d) array.
        k: neighbours per query; capped at n (n - 1 with `exclude_self`) with a warning.
        normalize: L2-normalise both sides first (cosine similarity). All-zero rows stay zero
            (similarity 0 to everything) with a warning.
        exclude_self: `queries` are the base rows themselves, row for row (m == n): query i
            never returns base row i (a point's neighbours among the others, e.g. k-NN radii).
        chunk_size: queries per similarity block (memory ~ 4 * chunk_size * n bytes);
            default `default_chunk_size`.
        device: torch device; CUDA when available, else CPU.

    Returns:
        ``(similarities, indices)``: (m, min(k, n)) float32 products and int64 base rows, in
        descending similarity; equal similarities are ordered by the lower base index, and the
        same rule decides which of them make the top k. Exact for the float32 products.
    """
    q = as_features(queries, "queries", dtype=np.float32, min_samples=0)
    b = as_features(base, "base", dtype=np.float32)
    if q.shape[1] != b.shape[1]:
        raise InputError(f"queries: have {q.shape[1]} features, base has {b.shape[1]}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InputError(f"k: expected a positive integer, got {k!r}")
    n = b.shape[0]
    if exclude_self and q.shape[0] != n:
        raise InputError(f"exclude_self: the queries ({q.shape[0]} rows) must be the base rows "
                         f"({n} rows), row for row")
    avail = n - 1 if exclude_self else n
    if avail < 1:
        raise InputError(f"base: exclude_self needs at least 2 rows, got {n}")
    if k > avail:
        warnings.warn(f"k={k} exceeds the {avail} base rows" + (" other than the query itself"
                      if exclude_self else "") + f"; using k={avail}", stacklevel=2)
    k = min(int(k), avail)
    dev = resolve_device(device)
    chunk = default_chunk_size(n, dev) if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise InputError(f"chunk_size: expected a positive integer, got {chunk_size}")
    if normalize:
        qt = _normalize(q, "queries", dev, stacklevel=3)
        bt = _normalize(b, "base", dev, stacklevel=3)
    else:
        qt = torch.from_numpy(q if q.flags.writeable else q.copy()).to(dev)
        bt = torch.from_numpy(b if b.flags.writeable else b.copy()).to(dev)
    sims = np.empty((q.shape[0], k), dtype=np.float32)
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    for start, block in similarity_blocks(qt, bt, chunk):
        if exclude_self:  # below every similarity: ranked last, never among the k <= n - 1
            r = torch.arange(block.shape[0], device=block.device)
            block[r, r + start] = float("-inf")
        i = _stable_topk(block, k, (k,))
        s = torch.gather(block, 1, i.to(block.device)).cpu().numpy()
        i = i.cpu().numpy()
        # Full order inside the top k: similarity descending, then lower index first.
        order = np.lexsort((i, -s), axis=1)
        sims[start:start + len(s)] = np.take_along_axis(s, order, axis=1)
        idx[start:start + len(s)] = np.take_along_axis(i, order, axis=1)
    return sims, idx
