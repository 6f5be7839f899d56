"""Mutual k-NN alignment (Huh et al. 2024, "The Platonic Representation Hypothesis"): rows
L2-normalised, each sample's k nearest *other* samples by inner product in each space, the mean
fraction of neighbours the two spaces share."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..._validation import as_tensor64 as _as_tensor64
from ...errors import InputError

__all__ = ["mutual_knn", "mutual_knn_matrix"]


def _knn_mask(z: torch.Tensor, start: int, stop: int, k: int) -> torch.Tensor:
    """(stop - start, n) bool mask of the k nearest other rows of z[start:stop] by inner product.

    Ties at the k-th value go to the lowest column index (stable, unlike a bare topk).
    """
    sims = z[start:stop] @ z.T
    rows = torch.arange(stop - start, device=z.device)
    sims[rows, rows + start] = -torch.inf  # never one's own neighbour
    kth = sims.topk(k, dim=1).values[:, -1:]
    above = sims > kth
    tied = sims == kth
    need = k - above.sum(1, keepdim=True)
    return above | (tied & (tied.cumsum(1) <= need))


def _prep_knn(feats, name, device, n_expected=None):
    z = _as_tensor64(feats, name, device)
    if n_expected is not None and z.shape[0] != n_expected:
        raise InputError(f"{name}: has {z.shape[0]} rows, expected {n_expected} (the same samples)")
    return F.normalize(z, dim=1)  # an all-zero row stays zero


def _check_k(k, n) -> int:
    if int(k) != k or not 1 <= k < n:
        raise InputError(f"k: must be an integer with 1 <= k < n_samples = {n}, got {k}")
    return int(k)


def mutual_knn(x, y, k: int = 10, *, chunk_size: int = 1024, device=None) -> float:
    """Mutual k-NN alignment (Huh et al. 2024) between two representations of the same samples.

    Rows are L2-normalised; each sample's k nearest *other* samples by inner product are found in
    each space (ties at the k-th value go to the lower index), and the score is the mean over
    samples of |N_x(i) ∩ N_y(i)| / k.

    Args:
        x: (n_samples, d1) features; y: (n_samples, d2).
        k: neighbours per sample, 1 <= k < n_samples.
        chunk_size: rows per block; memory is O(chunk_size * n_samples).
        device: where the float64 similarities are computed.

    Returns:
        The alignment in [0, 1].
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    zx = _prep_knn(x, "x", dev)
    zy = _prep_knn(y, "y", dev, zx.shape[0])
    n = zx.shape[0]
    k = _check_k(k, n)
    shared = 0
    for s in range(0, n, int(chunk_size)):
        e = min(n, s + int(chunk_size))
        shared += int((_knn_mask(zx, s, e, k) & _knn_mask(zy, s, e, k)).sum())
    return shared / (n * k)


def mutual_knn_matrix(feats_a: Sequence, feats_b: Sequence, k: int = 10, *,
                      chunk_size: int = 1024, device=None) -> np.ndarray:
    """Mutual k-NN alignment for every (layer of A, layer of B) pair.

    Args:
        feats_a: list of (n_samples, d_i) arrays; feats_b: list of (n_samples, d_j) arrays.
        k, chunk_size, device: as in `mutual_knn`; memory is O((La + Lb) * chunk_size * n).

    Returns:
        (len(feats_a), len(feats_b)) float64 array.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if not feats_a or not feats_b:
        raise InputError("feats_a and feats_b: expected non-empty lists of arrays")
    za = [_prep_knn(feats_a[0], "feats_a[0]", dev)]
    n = za[0].shape[0]
    za += [_prep_knn(f, f"feats_a[{i}]", dev, n) for i, f in enumerate(feats_a) if i > 0]
    zb = [_prep_knn(f, f"feats_b[{j}]", dev, n) for j, f in enumerate(feats_b)]
    k = _check_k(k, n)
    shared = torch.zeros(len(za), len(zb), dtype=torch.int64)
    for s in range(0, n, int(chunk_size)):
        e = min(n, s + int(chunk_size))
        ma = [_knn_mask(z, s, e, k) for z in za]
        mb = [_knn_mask(z, s, e, k) for z in zb]
        for i, a in enumerate(ma):
            for j, b in enumerate(mb):
                shared[i, j] += int((a & b).sum())
    return shared.numpy().astype(np.float64) / (n * k)
