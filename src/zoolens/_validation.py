"""Validation at the edge, once: public array functions call `as_features` and trust the result."""

from __future__ import annotations

import sys

import numpy as np

from .errors import InputError

__all__ = ["as_features", "as_labels", "as_tensor64", "inverse_norms", "is_tensor"]


def is_tensor(x) -> bool:
    """Whether `x` is a torch tensor, without importing torch (array-only callers, such as the
    data tools on NumPy embeddings, never pay for it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def as_features(x, name: str = "x", *, ndim: int = 2, min_samples: int = 1,
                dtype=np.float64) -> np.ndarray:
    """Return `x` as a finite NumPy array of `ndim` dimensions, or raise InputError naming `name`."""
    if is_tensor(x):
        import torch

        x = x.detach().cpu()
        x = (x if x.dtype == torch.float64 else x.float()).numpy()
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise InputError(f"{name}: expected a {ndim}D array, got {arr.ndim}D with shape {arr.shape}")
    if arr.shape[0] < min_samples:
        raise InputError(f"{name}: expected at least {min_samples} samples, got {arr.shape[0]}")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{name}: expected numbers, got dtype {arr.dtype}")
    arr = arr.astype(dtype, copy=False)
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    return arr


def as_labels(y, name: str = "labels", *, n: int | None = None) -> np.ndarray:
    """Return labels as a 1D array (any hashable values), checking the length against `n`."""
    if is_tensor(y):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise InputError(f"{name}: expected a 1D array of labels, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise InputError(f"{name}: has {arr.shape[0]} labels for {n} samples")
    return arr


def as_tensor64(x, name: str, device, *, flatten: bool = False):
    """Validate `x` as a float64 tensor on `device`: (n, d), or (n, ...) flattened to (n, -1)."""
    import torch

    if not isinstance(x, torch.Tensor):
        arr = np.asarray(x)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise InputError(f"{name}: expected numbers, got dtype {arr.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.is_complex():
        raise InputError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if flatten:
        if x.ndim < 2:
            raise InputError(f"{name}: expected an array of shape (n, ...), got shape {tuple(x.shape)}")
        x = x.reshape(x.shape[0], -1)
    elif x.ndim != 2:
        raise InputError(f"{name}: expected a 2D array, got {x.ndim}D with shape {tuple(x.shape)}")
    x = x.detach().to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name}: contains NaN or infinite values")
    return x


def inverse_norms(x: np.ndarray, name: str = "x", *, block_bytes: int = 64 * 2**20) -> np.ndarray:
    """(n,) float64 1 / L2 norm of every row of `x` (n, d), computed block by block (no float64
    copy of `x`).

    Raises InputError naming the first all-zero row: a zero vector has no direction, and a
    caller that needs cosine similarities exactly (deduplication, k-means on the sphere) must
    not rank it as "similarity 0 to everything".
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
