"""Per-label float64 row sums in blocks, shared by the k-means of `curate` and the Mahalanobis
score of `ood`."""

from __future__ import annotations

import numpy as np

__all__ = ["label_sums"]


def label_sums(x: np.ndarray, labels: np.ndarray, k: int, rows: int,
               scale: np.ndarray | None = None) -> np.ndarray:
    """(k, d) float64 sums of the rows of `x` with each label 0..k-1.

    `rows` rows are read at a time, converted to float64 and, with `scale` (n,), multiplied by
    their factor. Inside a block the rows of each label are added in row order (a stable sort,
    then ``np.add.reduceat``), so the sums are the same on every run.
    """
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    for s in range(0, x.shape[0], rows):
        b = x[s:s + rows].astype(np.float64)
        if scale is not None:
            b *= scale[s:s + rows, None]
        lab = labels[s:s + rows]
        order = np.argsort(lab, kind="stable")  # a fixed summation order: deterministic sums
        lab_sorted = lab[order]
        starts = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1]])
        sums[lab_sorted[starts]] += np.add.reduceat(b[order], starts, axis=0)
    return sums
