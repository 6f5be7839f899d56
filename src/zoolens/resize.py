"""Resizing activation maps to a common grid, and the resize as a linear operator.

Units of different layers and models are compared over (image, position) samples, so every map
is brought to one grid first: bilinear with `align_corners=False`, antialiased when a side
shrinks (a downsampled unit then averages its footprint instead of aliasing).

The resize is linear and separable: a map x (h, w) becomes Mh x Mw^T with 1-D interpolation
matrices Mh (H, h) and Mw (W, w) whose rows sum to 1. `interpolation_matrix` gives them, which
lets `zoolens.stats.CrossCorrelation` take products at a coarse map's own grid instead of the
common one (see its docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

__all__ = ["as_size", "resize_maps", "concat_resized", "interpolation_matrix"]


def as_size(size) -> tuple[int, int]:
    """`size` as (H, W): an int means a square grid."""
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise InputError(f"size: expected an int or (H, W), got {size!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"size: expected positive sizes, got {size!r}")
    return h, w


def _antialias(grid: tuple[int, int], size: tuple[int, int]) -> bool:
    return size[0] < grid[0] or size[1] < grid[1]


def resize_maps(x, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize activation maps to a common grid.

    Parameters
    ----------
    x : tensor or array (B, C, h, w)
    size : int or (H, W)

    Returns
    -------
    tensor (B, C, H, W), same dtype (float32 for integer input) and device; `x` itself when it
    already has that size. Bilinear with `align_corners=False`, antialiased when either side
    shrinks, so a downsampled unit averages its footprint instead of aliasing: the weights of
    `F.interpolate(mode="bilinear", antialias=...)`, applied as two matrix products (on CPU
    4-5x faster than `F.interpolate` when upsampling, measured).
    """
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.ndim != 4:
        raise InputError(f"x: expected activation maps (B, C, h, w), got shape {tuple(x.shape)}")
    H, W = as_size(size)
    B, C, h, w = x.shape
    if (h, w) == (H, W):
        return x
    if not x.is_floating_point():
        x = x.float()
    mh = interpolation_matrix(h, H, other=(w, W)).to(x.device, x.dtype)  # (H, h)
    mw = interpolation_matrix(w, W, other=(h, H)).to(x.device, x.dtype)  # (W, w)
    t = torch.mm(x.reshape(-1, w), mw.T).view(B * C, h, W)  # along the width
    t = torch.mm(t.transpose(1, 2).reshape(-1, h), mh.T)  # along the height: (B*C*W, H)
    return t.view(B, C, W, H).transpose(2, 3).contiguous()


def concat_resized(maps: Sequence, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize each layer's maps (B, C_l, h_l, w_l) to `size` and concatenate: (B, sum C_l, H, W).

    The channel order is the layer order, matching `zoolens.analyses.rosetta.UnitIndex`.
    """
    if len(maps) == 0:
        raise InputError("maps: expected at least one layer's activation maps")
    out = [resize_maps(m, size) for m in maps]
    if len({t.shape[0] for t in out}) != 1:
        raise InputError(f"maps: layers disagree on the batch size: {[t.shape[0] for t in out]}")
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def interpolation_matrix(n_in: int, n_out: int, *, other: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """The 1-D matrix (n_out, n_in), float64, that `resize_maps` applies along one axis.

    `other` = (input, output) length of the other axis: it decides whether the 2-D resize is
    antialiased, which changes the weights along both axes when either shrinks.
    """
    return _interpolation_matrix(int(n_in), int(n_out), int(other[0]), int(other[1])).clone()


@lru_cache(maxsize=64)
def _interpolation_matrix(n_in: int, n_out: int, other_in: int, other_out: int) -> torch.Tensor:
    if min(n_in, n_out, other_in, other_out) < 1:
        raise InputError(f"interpolation_matrix: sizes must be positive, got {n_in} -> {n_out}")
    if n_in == n_out and not _antialias((n_in, other_in), (n_out, other_out)):
        return torch.eye(n_in, dtype=torch.float64)
    # resize the basis vectors; the other axis is given two columns, since torch's antialiased
    # kernel treats a width-1 input specially
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1).expand(n_in, 1, n_in, 2)
    out = F.interpolate(eye, size=(n_out, 2), mode="bilinear", align_corners=False,
                        antialias=_antialias((n_in, other_in), (n_out, other_out)))
    return out[:, 0, :, 0].T.contiguous()
