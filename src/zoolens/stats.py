"""Mergeable streaming accumulators: unit-by-unit Pearson correlation and top-K partners.

`CrossCorrelation` keeps, over every (image, position) sample seen so far, the float64 sums that
the Pearson correlation between each unit of group A and each unit of group B is a ratio of:

    n, sum_a (Ca,), sumsq_a (Ca,), sum_b (Cb,), sumsq_b (Cb,), cross = A^T B (Ca, Cb)

Memory is O(Ca x Cb) whatever the number of images, and accumulators filled by different batches,
processes or machines add up (`merge`) to exactly the accumulator of all their data.

Precision, and why the per-batch product is float32
---------------------------------------------------
The per-batch cross product is the only O(samples x Ca x Cb) step. float64 GEMM runs at half the
float32 rate on CPUs (measured here: 41 vs 93 GFLOP/s, one core) and at 1/32 to 1/64 of it on
consumer GPUs, so the product is taken in float32 and added into float64 accumulators. Done naively
this loses the answer: activations with a mean of 1000 and a standard deviation of 1 give raw
cross sums of 1e6 per sample, and float32 keeps only ~7 digits of them. Two measures make the
float32 path as accurate as a float64 reference to ~1e-7 in the correlation:

* Centring. Each batch is centred on its own per-unit mean (a float32 value) before the product;
  the sums of the centred values and the float64 offset between that centre and the
  accumulator's fixed `shift` (the first batch's centre) then move the product to the
  accumulator's frame exactly (a rank-2 float64 update). Only the rounding of each centred
  sample (~6e-8 of the unit's spread) remains. A layer that is resized is centred on its
  native mean before the resize, whose float32 sums would otherwise round at the unit's level.
  Sums are kept relative to `shift`, so the final `cov = cross / n - mean_a mean_b` has no
  catastrophic cancellation either.
* Chunking. A float32 dot product over m samples has a relative error that grows like sqrt(m)
  (measured: 4e-8 at 4096 samples, 1.8e-6 at 200 000 for units correlated at 0.99), so the product
  is summed over chunks of `chunk_size` samples (default 4096) and each chunk's float32 result is
  added into float64. The float64 additions cost Ca x Cb per chunk, against 2 x Ca x Cb x 4096
  flops for the chunk's product. Per-unit sums are float32 cascade sums per chunk, added in
  float64 (a float64-dtype torch reduction is ~40x slower on CPU).

Coarse maps: products at their own grid
---------------------------------------
With `resolution` set, `update` takes each layer at its own grid and counts it as resized to the
common one (`zoolens.resize`). Upsampling adds samples but no information: a map y (h, w)
becomes Mh y Mw^T with fixed interpolation matrices, so for any map x at (H, W)

    sum over (H, W) of x * (Mh y Mw^T)  =  sum over (h, w) of (Mh^T x Mw) * y.

A layer coarser than the common grid is therefore never upsampled: the other group's maps are
moved to its grid by the adjoint Mh^T . Mw (cheap: two small products per map), and the
O(samples x Ca x Cb) product runs over h*w positions instead of H*W (4x fewer flops for a
2x-coarser map, 21x for a 7x7 layer on a 32x32 grid). Its per-unit sums need no resized map
either: sum(Mh y Mw^T) is a weighted sum of y, and sum((Mh y Mw^T)^2) = <y, (Mh^T Mh) y (Mw^T Mw)>.
Centring commutes with the resize (the rows of Mh and Mw sum to 1). The sums are those of the
resized maps to float rounding; `_native_grids` picks the layers for which this saves flops.

Cost: besides the products, `update` makes one centred, units-first copy of each batch and reads
it for the sums, all memory-bound; work buffers are reused across updates (a fresh batch-sized
allocation costs ~15% of an update on CPU in page faults), `release_buffers` frees them.

`matmul_dtype="float64"` does the product in float64 instead (for a CPU run that wants the last
digits, or an accelerator with fast float64). TF32 (CUDA) or bf16 (oneDNN on CPU) would keep only
10 or 7 mantissa bits of a float32 product (errors ~1e-3 and worse); zoolens changes no global
setting, so when the caller has enabled them (`torch.set_float32_matmul_precision("high")`, say)
`update` warns and takes the float64 product instead.

Memory budget: blocking and top-K
---------------------------------
A correlation needs the final means, so nothing about a pair can be pruned before the pass ends:
any exact one-pass method holds all Ca x Cb cross sums. When that table does not fit the budget,
the honest saving is in passes: `plan_column_blocks` splits B's units into column blocks whose
accumulators fit `max_memory`; the caller runs one pass over the data per block, with
`CrossCorrelation(cols=(start, stop))` (it slices B itself, so it can be fed the full B maps), and
reduces each block to `TopKPartners` (each unit's K best partners), which is all best buddies need.
A B unit's K best A partners are complete within its block; an A unit's lists are merged over the
blocks. Re-running the models per block is avoided when the extraction cache holds the resized maps:
each pass then only reads them back.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, NotFittedError
from .resize import as_size, interpolation_matrix, resize_maps

__all__ = ["CrossCorrelation", "Prepared", "TopKPartners", "plan_column_blocks", "release_buffers"]

_FORMAT_VERSION = 2
_SAVE_KEYS = ("sum_a", "sumsq_a", "sum_b", "sumsq_b", "cross", "shift_a", "shift_b")


# ----------------------------------------------------------------------------------------------
# helpers


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.from_numpy(np.asarray(x))
    except TypeError as err:
        raise InputError(f"{name}: expected a tensor or an array, got {type(x).__name__}") from err


def _reduced_precision_matmul(device: torch.device) -> bool:
    """Whether float32 products on `device` may run in TF32 or bf16 (a read-only check).

    Reads the per-backend `fp32_precision` setting, which answers whichever API the caller used to
    set it (the legacy getters raise once the two APIs have been mixed).
    """
    backend = {"cuda": "cuda", "cpu": "mkldnn"}.get(device.type)
    if backend is None:
        return False
    try:
        precision = getattr(torch.backends, backend).matmul.fp32_precision
        if precision == "none":
            precision = torch.backends.fp32_precision
        return precision not in ("ieee", "none")
    except (AttributeError, RuntimeError):  # older torch
        try:
            return torch.get_float32_matmul_precision() != "highest"
        except RuntimeError:
            return True


def _accumulator_device(device: torch.device) -> torch.device:
    # MPS has no float64; everything else keeps the sums next to the data.
    return torch.device("cpu") if device.type == "mps" else device


def _as_layers(x, name: str, device: torch.device | None = None) -> list[torch.Tensor]:
    """`x` as a list of (B, C, h, w) tensors, one per layer, on one device.

    Accepts one tensor (B, C, h, w) or (n, C) (samples, taken as 1 x 1 maps), or a sequence of
    such tensors: layers concatenated along units.
    """
    listed = isinstance(x, (list, tuple))
    parts = list(x) if listed else [x]
    if not parts:
        raise InputError(f"{name}: got an empty list of activation maps")
    out = []
    for i, part in enumerate(parts):
        label = f"{name}[{i}]" if listed else name
        t = _as_tensor(part, label)
        device = t.device if device is None else device
        t = t.to(device)
        if t.ndim == 2:
            t = t[:, :, None, None]
        elif t.ndim != 4:
            raise InputError(f"{label}: expected (B, C, H, W) maps or (n, C) samples, got shape "
                             f"{tuple(t.shape)}")
        if t.shape[0] == 0 or t.shape[1] == 0 or t.shape[2] * t.shape[3] == 0:
            raise InputError(f"{label}: has no samples or no units, shape {tuple(t.shape)}")
        out.append(t)
    return out


def _slice_units(layers: list[torch.Tensor], start: int, stop: int) -> list[torch.Tensor]:
    """Units start:stop of the layers' concatenation, as a list of (views of) layers."""
    total = sum(t.shape[1] for t in layers)
    if stop > total:
        raise InputError(f"cols=({start}, {stop}) is outside b's {total} units")
    out, offset = [], 0
    for t in layers:
        lo, hi = max(start, offset), min(stop, offset + t.shape[1])
        if lo < hi:
            out.append(t[:, lo - offset:hi - offset])
        offset += t.shape[1]
    return out


_pool = threading.local()


def _buffer(name: str, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
    """A work buffer reused across updates (per thread, CPU only).

    Fresh batch-sized allocations come from the OS as zeroed pages and their first touch costs
    ~15% of an update on CPU (measured); accelerators' caching allocators already reuse memory.
    """
    numel = math.prod(shape)
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    pool = getattr(_pool, "buffers", None)
    if pool is None:
        pool = _pool.buffers = {}
    buf = pool.get((name, dtype))
    if buf is None or buf.numel() < numel:
        buf = pool[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return buf[:numel].view(shape)


def _native_grids(grids: Sequence[tuple[int, int]], channels: Sequence[int],
                  size: tuple[int, int]) -> list[tuple[int, int]]:
    """Grids whose layers are multiplied at their own resolution, finest first.

    A layer coarser than the common grid (H, W) is only upsampled, so its products can be taken at
    its own h x w positions after the other group's maps are moved there by the resize's adjoint
    (`Prepared.moved`). Per unit of the other group that costs H W w + H w h multiply-adds for the
    adjoint plus c h w for the product, against c H W for the product at (H, W).
    """
    H, W = size
    total: dict[tuple[int, int], int] = {}
    for g, c in zip(grids, channels):
        total[g] = total.get(g, 0) + c
    chosen = [(h, w) for (h, w), c in total.items()
              if h <= H and w <= W and (h, w) != (H, W)
              and H * W * w + H * w * h + c * h * w < c * H * W]
    return sorted(chosen, key=lambda g: -g[0] * g[1])


def _move(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, name: str) -> torch.Tensor:
    """x viewed (N, p, q) -> (N, p', q'), out[k, i', j'] = sum_ij x[k, i, j] a[i, i'] b[j, j'].

    As one product with the dense (p q, p' q') operator when that is cheap, else separably (two
    products and transposed copies of the smaller intermediates): the separable products are
    skinny and run ~5x below the dense one's rate (measured on CPU). The result lives in the
    work buffer `name`.
    """
    (p, p2), (q, q2) = a.shape, b.shape
    out = _buffer(name, (x.numel() // (p * q), p2, q2), x.dtype, x.device)
    if p * q * p2 * q2 < 5 * (p * q * q2 + q2 * p * p2):
        dense = torch.einsum("iI,jJ->ijIJ", a, b).reshape(p * q, p2 * q2)
        return torch.mm(x.reshape(-1, p * q), dense, out=out.view(-1, p2 * q2)).view(out.shape)
    t = torch.mm(x.reshape(-1, q), b).view(-1, p, q2)
    tt = _buffer("move_t", (t.shape[0], q2, p), x.dtype, x.device)
    tt.copy_(t.transpose(1, 2))
    u = torch.mm(tt.view(-1, p), a).view(-1, q2, p2)
    return out.copy_(u.transpose(1, 2))


class _Part:
    """Units of one side multiplied at `grid` (None: at the common grid): `values` (rows,
    n*h*w), centred, and where its rows go in the user's unit order, as (row_start, row_stop,
    user_start) runs. A part cut out of another (`Prepared.columns`) keeps its `origin` and the
    `offset` of its first row there, so work done on the origin's rows is shared."""

    def __init__(self, grid, values, runs, index, origin=None, offset=0):
        self.grid, self.values, self.runs, self.index = grid, values, runs, index
        self.origin, self.offset = origin or self, offset

    @property
    def area(self) -> float:
        return math.inf if self.grid is None else self.grid[0] * self.grid[1]


class Prepared:
    """One group's batch, centred, in the forms the products need.

    `parts`: the layers used at the common grid (H, W), then those of each native grid
    (`_native_grids`), finest first; each part's runs map its rows back to the user's order.

    * the common part's values (C_r, n*H*W): the layers resized to (H, W) and centred;
    * a native part's values (C_g, n*h*w): the layers at their own grid g = (h, w), centred on
      the mean of their resized maps. Their resized maps are never formed: with Mh (H, h) and
      Mw (W, w) the resize matrices, the sum of a resized map is a weighted sum of the native
      one, and its sum of squares is <x, (Mh^T Mh) x (Mw^T Mw)>.

    s, q: float64 sums of the resized, centred values and their squares per unit; centre: the
    per-unit centres (float64). All three in the user's unit order.
    """

    def __init__(self, layers: list[torch.Tensor], size: tuple[int, int], work: torch.dtype,
                 step: int, tag: str):
        H, W = size
        n, dev = layers[0].shape[0], layers[0].device
        self.size, self.n, self.work, self.tag, self.step = size, n, work, tag, step
        self.device = dev
        grids = [tuple(t.shape[-2:]) for t in layers]
        native = _native_grids(grids, [t.shape[1] for t in layers], size)
        user_start = [0] + np.cumsum([t.shape[1] for t in layers]).tolist()
        C = user_start[-1]
        acc = _accumulator_device(dev)
        self.s = torch.empty(C, dtype=torch.float64, device=acc)
        self.q = torch.empty(C, dtype=torch.float64, device=acc)
        self.centre = torch.empty(C, dtype=torch.float64, device=acc)
        self.parts: list[_Part] = []
        self._cache: dict = {}
        for grid in [None] + native:
            members = [i for i, g in enumerate(grids) if (g if g in native else None) == grid]
            if not members:
                continue
            c_part = sum(layers[i].shape[1] for i in members)
            if grid is None:
                out = _buffer("z" + tag, (c_part, n, H, W), work, dev)
            else:
                out = _buffer(f"n{tag}{grid}", (c_part, n, *grid), work, dev)
            runs, r, centres, user_rows = [], 0, [], []
            for i in members:
                x = layers[i].to(work)
                c = x.shape[1]
                pre = None
                if grid is None:
                    if tuple(x.shape[-2:]) != size:
                        # centre before resizing: the resize's float32 sums would round away
                        # the digits of a unit whose level dwarfs its spread
                        pre = x.mean(dim=(0, 2, 3))
                        x = resize_maps(x - pre[:, None, None], size)
                    centre = x.sum(dim=(0, 2, 3)) / (n * H * W)
                else:  # the mean of the resized maps, from the native ones
                    ch, cw = self._weights(grid)
                    centre = torch.mv(x.sum(dim=0).reshape(c, -1), torch.outer(ch, cw).flatten())
                    centre /= n * H * W
                torch.sub(x.transpose(0, 1), centre[:, None, None, None], out=out[r:r + c])
                centre = centre.to(acc, torch.float64)
                centres.append(centre if pre is None else centre + pre.to(acc, torch.float64))
                user_rows.append(torch.arange(user_start[i], user_start[i] + c))
                if runs and runs[-1][1] == r and runs[-1][2] + r - runs[-1][0] == user_start[i]:
                    runs[-1] = (runs[-1][0], r + c, runs[-1][2])
                else:
                    runs.append((r, r + c, user_start[i]))
                r += c
            part = _Part(grid, out.view(c_part, -1), runs, index=len(self.parts))
            s, q = self._sums(part.values) if grid is None else self._native_sums(part)
            rows = torch.cat(user_rows).to(acc)
            self.s[rows], self.q[rows] = s, q
            self.centre[rows] = torch.cat(centres)
            self.parts.append(part)

    def columns(self, start: int, stop: int) -> Prepared:
        """The same batch restricted to user units start:stop (a column block); shares the work."""
        if stop > self.s.shape[0]:
            raise InputError(f"cols=({start}, {stop}) is outside b's {self.s.shape[0]} units")
        out = copy.copy(self)
        out.parts = []
        for part in self.parts:
            for r0, r1, u0 in part.runs:
                lo, hi = max(start, u0), min(stop, u0 + r1 - r0)
                if lo < hi:
                    a, b = r0 + lo - u0, r0 + hi - u0
                    out.parts.append(_Part(part.grid, part.values[a:b], [(0, b - a, lo - start)],
                                           index=part.index, origin=part, offset=a))
        out.s, out.q, out.centre = self.s[start:stop], self.q[start:stop], self.centre[start:stop]
        return out

    def _matrices(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mh (H, h) and Mw (W, w), which resize `grid` to the common grid, in the work dtype."""
        if ("m", grid) not in self._cache:
            (H, W), (h, w) = self.size, grid
            self._cache["m", grid] = (
                interpolation_matrix(h, H, other=(w, W)).to(self.device, self.work),
                interpolation_matrix(w, W, other=(h, H)).to(self.device, self.work))
        return self._cache["m", grid]

    def _weights(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Column sums of Mh and Mw: each native row's and column's weight in the resized map."""
        mh, mw = self._matrices(grid)
        return mh.sum(dim=0), mw.sum(dim=0)

    def _sums(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 sums of z and z^2 per row: float32 cascade sums over `step` samples added in
        float64 (a float64-dtype reduction is ~40x slower on CPU)."""
        acc = _accumulator_device(z.device)
        s = torch.zeros(z.shape[0], dtype=torch.float64, device=acc)
        q = torch.zeros(z.shape[0], dtype=torch.float64, device=acc)
        sq = _buffer("sq", (z.shape[0], min(self.step, z.shape[1])), z.dtype, z.device)
        for i in range(0, z.shape[1], self.step):
            chunk = z[:, i:i + self.step]
            s += chunk.sum(dim=1).to(acc)
            q += torch.mul(chunk, chunk, out=sq[:, :chunk.shape[1]]).sum(dim=1).to(acc)
        return s, q

    def _native_sums(self, part: _Part) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums over the resized grid of a native part: weighted sums of its values, and the
        quadratic form <x, (Mh^T Mh) x (Mw^T Mw)>; per image in float32, over images in float64."""
        acc = _accumulator_device(self.device)
        c, n = part.values.shape[0], self.n
        ch, cw = self._weights(part.grid)
        per_image = part.values.view(c * n, -1)
        s = torch.mv(per_image, torch.outer(ch, cw).flatten()).view(c, n)
        gram = self.moved(part, part.grid).view(c * n, -1)
        prod = torch.mul(per_image, gram, out=_buffer("sq", gram.shape, self.work, self.device))
        q = prod.sum(dim=1).view(c, n)
        return (s.to(acc, torch.float64).sum(dim=1), q.to(acc, torch.float64).sum(dim=1))

    def moved(self, part: _Part, grid: tuple[int, int]) -> torch.Tensor:
        """The part's units as the adjoint of the resize from `grid` sees them: (rows, n*h*w).

        With the other group's map y at `grid` upsampled as Mh y Mw^T, the sum over (H, W) of
        x * (Mh y Mw^T) equals the sum over (h, w) of (Mh^T x Mw) * y, so the product runs over
        h*w positions. A native part's x is itself Mh' x' Mw'^T, hence Mh^T Mh' x' Mw'^T Mw.
        Computed once per (origin part, grid), then sliced.
        """
        origin = part.origin
        key = ("moved", origin.index, grid)
        if key not in self._cache:
            mh, mw = self._matrices(grid)
            name = f"moved{self.tag}{origin.index}{grid}"
            if origin.grid is None:
                out = _move(origin.values.view(-1, *self.size), mh, mw, name)
            else:
                mh2, mw2 = self._matrices(origin.grid)
                out = _move(origin.values.view(-1, *origin.grid), mh2.T @ mh, mw2.T @ mw, name)
            self._cache[key] = out.view(origin.values.shape[0], -1)
        return self._cache[key][part.offset:part.offset + part.values.shape[0]]


def release_buffers() -> None:
    """Free the work buffers `CrossCorrelation.update` keeps for reuse in this thread."""
    _pool.__dict__.pop("buffers", None)


# ----------------------------------------------------------------------------------------------
# CrossCorrelation


class CrossCorrelation:
    """Streaming, exactly mergeable Pearson correlation between the units of two groups.

    Group A and group B are sets of units (channels, concatenated over a model's tapped layers);
    samples are (image, position) pairs on one common grid.

    Parameters
    ----------
    resolution : int or (H, W) or None
        The common grid. Each layer's maps count as resized to it (`zoolens.resize.resize_maps`:
        bilinear, antialiased when downsampling); layers coarser than it are multiplied at their
        own grid, which gives the same sums for fewer flops (module docstring). None: every map
        must already share one grid.
    cols : (start, stop) or None
        Accumulate only B's units `start:stop` (one block of a memory-budgeted run, see
        `plan_column_blocks`). `update` still takes B's full maps and slices them itself.
    chunk_size : int
        Samples per float32 product; bounds its rounding error (module docstring).
    matmul_dtype : "float32" or "float64"
        Precision of the per-batch product; sums are float64 either way.
    dead_rtol : float
        A unit is dead (zero variance) when var <= dead_rtol * E[x^2]: constant units, all-zero
        units, and units whose variation is below float32 resolution of their level.

    Examples
    --------
    >>> acc = CrossCorrelation(resolution=32)
    >>> for a_layers, b_layers in batches:   # lists of (B, C_l, h_l, w_l) maps, one per layer
    ...     acc.update(a_layers, b_layers)
    >>> r = acc.correlation()          # (Ca, Cb) float64 NumPy
    """

    #: bytes per (A unit, B unit) pair at peak: float64 sums, float32 chunk product, float64 result
    bytes_per_entry = 20

    def __init__(self, *, resolution: int | tuple[int, int] | None = None,
                 cols: tuple[int, int] | None = None, chunk_size: int = 4096,
                 matmul_dtype: str = "float32", dead_rtol: float = 1e-12) -> None:
        self.resolution = None if resolution is None else as_size(resolution)
        self.cols = cols
        self.chunk_size = chunk_size
        self.matmul_dtype = matmul_dtype
        self.dead_rtol = dead_rtol
        self._check_params()
        self.n = 0
        self._state: dict[str, torch.Tensor] | None = None

    # -- parameters and state -----------------------------------------------------------------

    def _check_params(self) -> None:
        if self.cols is not None:
            cols = tuple(int(c) for c in self.cols)
            if len(cols) != 2 or not 0 <= cols[0] < cols[1]:
                raise InputError(f"cols: expected (start, stop) with 0 <= start < stop, got "
                                 f"{self.cols!r}")
            self.cols = cols
        if int(self.chunk_size) < 1:
            raise InputError(f"chunk_size: expected a positive integer, got {self.chunk_size!r}")
        if self.matmul_dtype not in ("float32", "float64"):
            raise InputError(f"matmul_dtype: expected 'float32' or 'float64', got "
                             f"{self.matmul_dtype!r}")
        if not self.dead_rtol >= 0:
            raise InputError(f"dead_rtol: expected a non-negative number, got {self.dead_rtol!r}")

    @property
    def _work_dtype(self) -> torch.dtype:
        return torch.float32 if self.matmul_dtype == "float32" else torch.float64

    @property
    def n_a(self) -> int:
        """Number of A units (0 before the first update)."""
        return 0 if self._state is None else int(self._state["sum_a"].shape[0])

    @property
    def n_b(self) -> int:
        """Number of B units accumulated (the block's width when `cols` is set)."""
        return 0 if self._state is None else int(self._state["sum_b"].shape[0])

    @property
    def device(self) -> torch.device | None:
        """Where the sums live (the inputs' device; CPU for MPS inputs)."""
        return None if self._state is None else self._state["cross"].device

    def _allocate(self, n_a: int, n_b: int, shift_a: torch.Tensor, shift_b: torch.Tensor) -> None:
        dev = shift_a.device
        zeros = lambda *s: torch.zeros(s, dtype=torch.float64, device=dev)  # noqa: E731
        self._state = {"sum_a": zeros(n_a), "sumsq_a": zeros(n_a), "sum_b": zeros(n_b),
                       "sumsq_b": zeros(n_b), "cross": zeros(n_a, n_b),
                       "shift_a": shift_a.clone(), "shift_b": shift_b.clone()}

    def _add_sums(self, m: int, s_a, q_a, s_b, q_b, d_a, d_b) -> None:
        """Add sums taken relative to `shift + d` into sums relative to `shift` (float64, exact).

        With y = x - shift and z = x - (shift + d): y = z + d, hence
        sum y = sum z + m d;  sum y^2 = sum z^2 + 2 d sum z + m d^2;
        sum y_a y_b^T = sum z_a z_b^T + d_a (sum z_b + m d_b)^T + (sum z_a) d_b^T.
        The caller adds sum z_a z_b^T into `cross` itself.
        """
        st = self._state
        st["cross"].addr_(d_a, s_b + m * d_b).addr_(s_a, d_b)
        st["sum_a"] += s_a + m * d_a
        st["sumsq_a"] += q_a + 2 * d_a * s_a + m * d_a * d_a
        st["sum_b"] += s_b + m * d_b
        st["sumsq_b"] += q_b + 2 * d_b * s_b + m * d_b * d_b
        self.n += m

    # -- accumulation -------------------------------------------------------------------------

    def update(self, a, b) -> CrossCorrelation:
        """Add one batch of samples.

        Parameters
        ----------
        a : tensor (B, Ca, h, w) or (n, Ca), or a list of such tensors (layers, concatenated
            along units in list order)
        b : tensor (B, Cb, h, w) or (n, Cb), likewise, with the same batch size. With
            `cols=(start, stop)`, B's units start:stop are taken from `b`.

        Without `resolution` every map must share one grid; with it, each layer may have its own
        and counts as resized to `resolution` (`zoolens.resize.resize_maps`). Tensors may live on
        any device; the sums stay there (float64). `a` and `b` may also be groups made once by
        `prepare` and shared by several accumulators with the same settings. Returns self.
        """
        if isinstance(a, Prepared) and isinstance(b, Prepared):
            return self._update_prepared(a, b if self.cols is None else b.columns(*self.cols))
        la = _as_layers(a, "a")
        lb = _as_layers(b, "b", device=la[0].device)
        if len({t.shape[0] for t in la + lb}) != 1:
            raise InputError(f"a and b must have the same batch size; got a "
                             f"{[tuple(t.shape) for t in la]} and b {[tuple(t.shape) for t in lb]}")
        size = self.resolution
        if size is None:
            grids = {tuple(t.shape[-2:]) for t in la + lb}
            if len(grids) != 1:
                raise InputError(f"a and b must share one spatial size, or give "
                                 f"CrossCorrelation(resolution=...) to resize them to one; got a "
                                 f"{[tuple(t.shape) for t in la]} and b "
                                 f"{[tuple(t.shape) for t in lb]}")
            size = grids.pop()
        if self.cols is not None:
            lb = _slice_units(lb, *self.cols)
        return self._update_prepared(self._prepare(la, size, "a"), self._prepare(lb, size, "b"))

    def prepare(self, maps, tag: str) -> Prepared:
        """One group's batch (a list of (B, C_l, h_l, w_l) maps, one per layer), centred and laid
        out for the products with this accumulator's settings, once: several accumulators with
        the same settings update from it (`update(prepared_a, prepared_b)`; those with `cols`
        take their column block of b themselves). Groups alive at once need distinct tags, which
        name their work buffers."""
        if self.resolution is None:
            raise InputError("prepare needs CrossCorrelation(resolution=...)")
        return self._prepare(_as_layers(maps, tag), self.resolution, tag)

    def _prepare(self, layers: list[torch.Tensor], size: tuple[int, int], tag: str) -> Prepared:
        work = self._work_dtype
        if work == torch.float32 and _reduced_precision_matmul(layers[0].device):
            warnings.warn("float32 matmuls may run in TF32/bf16 (torch float32 matmul precision is "
                          "not 'highest'); CrossCorrelation takes its products in float64 instead. "
                          "Set torch.backends.cuda.matmul.fp32_precision = 'ieee' for the faster "
                          "float32 path.", RuntimeWarning, stacklevel=3)
            work = torch.float64
        return Prepared(layers, size, work, int(self.chunk_size), tag)

    def _update_prepared(self, side_a: Prepared, side_b: Prepared) -> CrossCorrelation:
        """Add one batch given as prepared sides (B already cut to `cols`)."""
        n_a, n_b = side_a.s.shape[0], side_b.s.shape[0]
        if self._state is not None and (n_a, n_b) != (self.n_a, self.n_b):
            raise InputError(f"a and b have {n_a} and {n_b} units; this accumulator holds "
                             f"{self.n_a} and {self.n_b}")
        if (side_a.n, side_a.size, side_a.work) != (side_b.n, side_b.size, side_b.work):
            raise InputError("a and b were prepared with different batches or settings")
        sums = torch.stack([side_a.s.sum(), side_a.q.sum(), side_b.s.sum(), side_b.q.sum()])
        if not bool(torch.isfinite(sums).all()):
            raise InputError("a or b contains NaN or infinite values; the batch was not added")

        acc_dev = self.device if self._state is not None else _accumulator_device(side_a.device)
        if self._state is None:
            self._allocate(n_a, n_b, side_a.centre.to(acc_dev), side_b.centre.to(acc_dev))
        st = self._state
        for pa in side_a.parts:
            for pb in side_b.parts:
                if pa.grid is None and pb.grid is None:  # both at the common grid
                    left, right = pa.values, pb.values
                elif pb.area <= pa.area:  # at b's grid, the coarser
                    left, right = side_a.moved(pa, pb.grid), pb.values
                else:  # at a's grid
                    left, right = pa.values, side_b.moved(pb, pa.grid)
                self._add_product(left, right, pa.runs, pb.runs, side_a.step, side_a.work)
        m = side_a.n * side_a.size[0] * side_a.size[1]
        self._add_sums(m, side_a.s.to(acc_dev), side_a.q.to(acc_dev), side_b.s.to(acc_dev),
                       side_b.q.to(acc_dev), side_a.centre.to(acc_dev) - st["shift_a"],
                       side_b.centre.to(acc_dev) - st["shift_b"])
        return self

    def _add_product(self, left: torch.Tensor, right: torch.Tensor, row_runs, col_runs,
                     step: int, work: torch.dtype) -> None:
        """cross[rows, cols] += left @ right^T, in float32 chunks of `step` samples added in
        float64; runs = (start, stop, user_start) map the block's rows/columns to the user's."""
        cross = self._state["cross"]
        buf = _buffer("product", (left.shape[0], right.shape[0]), work, left.device)
        whole = len(row_runs) == 1 and len(col_runs) == 1
        for s in range(0, left.shape[1], step):
            torch.mm(left[:, s:s + step], right[:, s:s + step].T, out=buf)
            chunk = buf.to(cross.device)  # float32 chunk into float64 sums
            for r0, r1, ur in row_runs:
                for c0, c1, uc in col_runs:
                    block = chunk if whole else chunk[r0:r1, c0:c1]
                    cross[ur:ur + r1 - r0, uc:uc + c1 - c0].add_(block)

    def merge(self, other: CrossCorrelation) -> CrossCorrelation:
        """Add another accumulator's samples into this one (in place); returns self.

        Exact whatever the two accumulators' shifts: the other's sums are moved to this one's
        shift in float64 before adding.
        """
        if not isinstance(other, CrossCorrelation):
            raise InputError(f"other: expected a CrossCorrelation, got {type(other).__name__}")
        if self.cols != other.cols:
            raise InputError(f"cannot merge accumulators of different column blocks: {self.cols} "
                             f"and {other.cols}")
        if self.resolution != other.resolution:
            raise InputError(f"cannot merge accumulators of different resolutions: "
                             f"{self.resolution} and {other.resolution}")
        if other._state is None or other.n == 0:
            return self
        if self._state is None or self.n == 0:
            dev = self.device or other.device
            self._state = {k: v.to(dev, copy=True) for k, v in other._state.items()}
            self.n = other.n
            return self
        if (other.n_a, other.n_b) != (self.n_a, self.n_b):
            raise InputError(f"cannot merge accumulators of {other.n_a} x {other.n_b} units into "
                             f"{self.n_a} x {self.n_b}")
        o = {k: v.to(self.device) for k, v in other._state.items()}
        self._state["cross"] += o["cross"]
        self._add_sums(other.n, o["sum_a"], o["sumsq_a"], o["sum_b"], o["sumsq_b"],
                       o["shift_a"] - self._state["shift_a"], o["shift_b"] - self._state["shift_b"])
        return self

    # -- results ------------------------------------------------------------------------------

    def _require(self) -> dict[str, torch.Tensor]:
        if self._state is None or self.n == 0:
            raise NotFittedError("CrossCorrelation has no samples yet; call update() first")
        return self._state

    def _moments(self, group: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean relative to the shift, variance (clamped at 0), and the dead mask of one group."""
        st = self._require()
        mean = st[f"sum_{group}"] / self.n
        var = (st[f"sumsq_{group}"] / self.n - mean * mean).clamp_min_(0.0)
        level = mean + st[f"shift_{group}"]
        dead = var <= self.dead_rtol * (var + level * level)
        return mean, var, dead

    @property
    def mean_a(self) -> np.ndarray:
        """(Ca,) float64 mean of each A unit over all samples."""
        m, _, _ = self._moments("a")
        return (m + self._state["shift_a"]).cpu().numpy()

    @property
    def mean_b(self) -> np.ndarray:
        """(Cb,) float64 mean of each B unit over all samples."""
        m, _, _ = self._moments("b")
        return (m + self._state["shift_b"]).cpu().numpy()

    @property
    def std_a(self) -> np.ndarray:
        """(Ca,) float64 population standard deviation of each A unit."""
        return self._moments("a")[1].sqrt().cpu().numpy()

    @property
    def std_b(self) -> np.ndarray:
        """(Cb,) float64 population standard deviation of each B unit."""
        return self._moments("b")[1].sqrt().cpu().numpy()

    @property
    def dead_a(self) -> np.ndarray:
        """(Ca,) bool: A units with zero variance (their correlations are 0)."""
        return self._moments("a")[2].cpu().numpy()

    @property
    def dead_b(self) -> np.ndarray:
        """(Cb,) bool: B units with zero variance (their correlations are 0)."""
        return self._moments("b")[2].cpu().numpy()

    def correlation(self) -> np.ndarray:
        """(Ca, Cb) float64 Pearson correlation; 0 (never NaN) for zero-variance units (warned)."""
        st = self._require()
        mean_a, var_a, dead_a = self._moments("a")
        mean_b, var_b, dead_b = self._moments("b")
        for group, dead in (("a", dead_a), ("b", dead_b)):
            k = int(dead.sum())
            if k:
                warnings.warn(f"{k} of {dead.numel()} units of group {group} have zero variance "
                              f"over {self.n} samples; their correlations are set to 0",
                              RuntimeWarning, stacklevel=2)
        std_a = torch.where(dead_a, torch.inf, var_a.sqrt())
        std_b = torch.where(dead_b, torch.inf, var_b.sqrt())
        corr = st["cross"] / self.n
        corr.sub_(torch.outer(mean_a, mean_b))
        corr.div_(std_a[:, None]).div_(std_b[None, :]).clamp_(-1.0, 1.0)
        return corr.cpu().numpy()

    # -- persistence --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """All state and parameters as NumPy arrays (what `save` writes)."""
        state = {"format_version": np.array(_FORMAT_VERSION), "n": np.array(self.n, np.int64),
                 "cols": np.array(self.cols if self.cols is not None else (-1, -1), np.int64),
                 "resolution": np.array(self.resolution or (-1, -1), np.int64),
                 "chunk_size": np.array(int(self.chunk_size), np.int64),
                 "matmul_dtype": np.array(self.matmul_dtype),
                 "dead_rtol": np.array(float(self.dead_rtol))}
        for key in _SAVE_KEYS:
            if self._state is None:
                state[key] = np.zeros((0, 0) if key == "cross" else (0,))
            else:
                state[key] = self._state[key].cpu().numpy()
        return state

    def load_state_dict(self, state, *, device: str | torch.device | None = None,
                        ) -> CrossCorrelation:
        """Replace this accumulator's settings and sums by `state_dict()` output; sums go to
        `device` (default CPU). Returns self."""
        try:
            version = int(state["format_version"])
            if version not in (1, _FORMAT_VERSION):  # version 1 had no resolution
                raise InputError(f"state: format version {version}, expected {_FORMAT_VERSION}")
            cols = tuple(int(c) for c in np.asarray(state["cols"]))
            res = tuple(int(r) for r in np.asarray(state.get("resolution", (-1, -1))))
            self.__init__(cols=None if cols == (-1, -1) else cols,
                          resolution=None if res == (-1, -1) else res,
                          chunk_size=int(state["chunk_size"]),
                          matmul_dtype=str(state["matmul_dtype"]),
                          dead_rtol=float(state["dead_rtol"]))
            n = int(state["n"])
            arrays = {k: np.asarray(state[k], dtype=np.float64) for k in _SAVE_KEYS}
        except KeyError as err:
            raise InputError(f"state: missing entry {err}") from None
        if n > 0:
            n_a, n_b = arrays["cross"].shape
            expect = {"sum_a": (n_a,), "sumsq_a": (n_a,), "shift_a": (n_a,),
                      "sum_b": (n_b,), "sumsq_b": (n_b,), "shift_b": (n_b,)}
            for key, shape in expect.items():
                if arrays[key].shape != shape:
                    raise InputError(f"state: {key} has shape {arrays[key].shape}, expected "
                                     f"{shape}")
            dev = torch.device(device) if device is not None else torch.device("cpu")
            self._state = {k: torch.from_numpy(v.copy()).to(dev) for k, v in arrays.items()}
            self.n = n
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write the state to an .npz file, atomically (a crash leaves the old file intact)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **self.state_dict())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device | None = None,
             ) -> CrossCorrelation:
        """Read an accumulator written by `save`."""
        with np.load(path, allow_pickle=False) as data:
            return cls().load_state_dict({k: data[k] for k in data.files}, device=device)

    def __repr__(self) -> str:
        return (f"CrossCorrelation(n={self.n}, units={self.n_a}x{self.n_b}, "
                f"resolution={self.resolution}, cols={self.cols}, "
                f"matmul_dtype={self.matmul_dtype!r})")


def plan_column_blocks(n_a: int, n_b: int, max_memory: int | float, *,
                       bytes_per_entry: int = CrossCorrelation.bytes_per_entry,
                       ) -> list[tuple[int, int]]:
    """Split B's `n_b` units into column blocks whose accumulators fit `max_memory` bytes.

    One block `[(0, n_b)]` when the whole table fits; otherwise equal-width blocks, each to be
    accumulated in its own pass with `CrossCorrelation(cols=block)` and reduced with
    `TopKPartners`. Memory per block is `n_a * width * bytes_per_entry`.
    """
    n_a, n_b = int(n_a), int(n_b)
    if n_a < 1 or n_b < 1:
        raise InputError(f"n_a and n_b must be positive, got {n_a} and {n_b}")
    width = int(max_memory // (n_a * bytes_per_entry))
    if width < 1:
        raise InputError(f"max_memory={max_memory:.0f} bytes is too small for one column of "
                         f"{n_a} units; need at least {n_a * bytes_per_entry} bytes")
    n_blocks = math.ceil(n_b / width)
    width = math.ceil(n_b / n_blocks)  # balance the blocks
    return [(s, min(s + width, n_b)) for s in range(0, n_b, width)]


# ----------------------------------------------------------------------------------------------
# TopKPartners


def _sort_candidates(values: np.ndarray, index: np.ndarray, k: int,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best (value desc, then index asc) of the candidates; -inf/-1 pad."""
    # invalid entries (-inf) go last whatever their index
    idx_key = np.where(np.isneginf(values), np.iinfo(np.int64).max, index)
    order = np.lexsort((idx_key, -values), axis=-1)[:, :k]
    v = np.take_along_axis(values, order, axis=1)
    i = np.take_along_axis(index, order, axis=1)
    i = np.where(np.isneginf(v), -1, i)
    if v.shape[1] < k:
        pad = k - v.shape[1]
        v = np.pad(v, ((0, 0), (0, pad)), constant_values=-np.inf)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return v, i


def _top_k_rows(c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of `c` (r, w), ties broken by lower column index; -inf entries skipped."""
    r, w = c.shape
    if w <= k:
        return _sort_candidates(c, np.broadcast_to(np.arange(w), c.shape), k)
    # argpartition is O(w) but picks arbitrarily among values tied with the k-th: detect those
    # rows and give them the full stable sort, so the result never depends on the algorithm.
    part = np.argpartition(-c, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(c, part, axis=1)
    kth = vals.min(axis=1)
    # rows with fewer than k live entries have kth = -inf and no ambiguity among live ones
    tied = ((c >= kth[:, None]).sum(axis=1) > k) & np.isfinite(kth)
    v, i = _sort_candidates(vals, part, k)
    if tied.any():
        rows = np.flatnonzero(tied)
        v[rows], i[rows] = _sort_candidates(c[rows], np.broadcast_to(np.arange(w), (len(rows), w)),
                                            k)
    return v, i


class TopKPartners:
    """Each unit's K best partners by correlation, merged over column blocks of the table.

    Holds, for every A unit, its K highest-correlated B units (`row_values`, `row_index`, each
    (n_a, K)) and, for every B unit, its K highest-correlated A units (`col_values`, `col_index`,
    (n_b, K)); sorted by correlation descending, ties by lower index; -inf / -1 where fewer than K
    live partners exist. Dead units are never partners and have empty lists.

    Feed it the correlation blocks of `plan_column_blocks` with `update(block, col_offset=start)`;
    blocks from other processes combine with `merge`. Once every B column has been seen
    (`complete`), `zoolens.analyses.rosetta.best_buddies` accepts it in place of the full table.
    """

    def __init__(self, n_a: int, n_b: int, k: int = 5) -> None:
        self.n_a = int(n_a)
        self.n_b = int(n_b)
        self.k = int(k)
        if self.n_a < 1 or self.n_b < 1 or self.k < 1:
            raise InputError(f"TopKPartners needs positive n_a, n_b and k; got {n_a}, {n_b}, {k}")
        self.row_values = np.full((self.n_a, self.k), -np.inf)
        self.row_index = np.full((self.n_a, self.k), -1, dtype=np.int64)
        self.col_values = np.full((self.n_b, self.k), -np.inf)
        self.col_index = np.full((self.n_b, self.k), -1, dtype=np.int64)
        self.dead_a = np.zeros(self.n_a, dtype=bool)
        self.dead_b = np.zeros(self.n_b, dtype=bool)
        self.seen_b = np.zeros(self.n_b, dtype=bool)

    @property
    def complete(self) -> bool:
        """True once every B unit's column has been added."""
        return bool(self.seen_b.all())

    def update(self, corr, *, col_offset: int = 0, dead_a=None, dead_b=None) -> TopKPartners:
        """Add the correlation block `corr` (n_a, w) of B units `col_offset:col_offset + w`.

        `dead_a` (n_a,) and `dead_b` (w,) mark zero-variance units (e.g. `CrossCorrelation.dead_a`);
        returns self.
        """
        c = np.array(corr, dtype=np.float64)  # copy: masked below
        if c.ndim != 2 or c.shape[0] != self.n_a:
            raise InputError(f"corr: expected shape ({self.n_a}, w), got {c.shape}")
        w = c.shape[1]
        start = int(col_offset)
        if start < 0 or start + w > self.n_b:
            raise InputError(f"corr: columns {start}:{start + w} fall outside the {self.n_b} B "
                             f"units")
        if self.seen_b[start:start + w].any():
            raise InputError(f"corr: columns {start}:{start + w} overlap columns already added")
        if np.isnan(c).any():
            raise InputError("corr: contains NaN")
        da = np.zeros(self.n_a, bool) if dead_a is None else np.asarray(dead_a, bool)
        db = np.zeros(w, bool) if dead_b is None else np.asarray(dead_b, bool)
        if da.shape != (self.n_a,) or db.shape != (w,):
            raise InputError(f"dead_a/dead_b: expected shapes ({self.n_a},) and ({w},), got "
                             f"{da.shape} and {db.shape}")
        self.dead_a |= da
        self.dead_b[start:start + w] = db
        c[self.dead_a, :] = -np.inf
        c[:, db] = -np.inf

        v, i = _top_k_rows(c, self.k)
        self._merge_rows(v, np.where(i >= 0, i + start, -1))
        cv, ci = _top_k_rows(c.T, self.k)
        self.col_values[start:start + w] = cv
        self.col_index[start:start + w] = ci
        self.seen_b[start:start + w] = True
        self._drop_dead_a()
        return self

    def _drop_dead_a(self) -> None:
        """Remove A units now known dead from every list (masks normally agree across blocks)."""
        self.row_values[self.dead_a] = -np.inf
        self.row_index[self.dead_a] = -1
        stale = (self.col_index >= 0) & self.dead_a[np.maximum(self.col_index, 0)]
        if stale.any():
            v = np.where(stale, -np.inf, self.col_values)
            self.col_values, self.col_index = _sort_candidates(v, self.col_index, self.k)

    def _merge_rows(self, values: np.ndarray, index: np.ndarray) -> None:
        v = np.concatenate([self.row_values, values], axis=1)
        i = np.concatenate([self.row_index, index], axis=1)
        self.row_values, self.row_index = _sort_candidates(v, i, self.k)

    def merge(self, other: TopKPartners) -> TopKPartners:
        """Combine with partners computed on other (disjoint) column blocks; returns self."""
        if (other.n_a, other.n_b, other.k) != (self.n_a, self.n_b, self.k):
            raise InputError(f"cannot merge TopKPartners of shape ({other.n_a}, {other.n_b}, "
                             f"k={other.k}) into ({self.n_a}, {self.n_b}, k={self.k})")
        if (self.seen_b & other.seen_b).any():
            raise InputError("cannot merge TopKPartners that both hold some of the same columns")
        self.dead_a |= other.dead_a
        cols = other.seen_b
        self.col_values[cols] = other.col_values[cols]
        self.col_index[cols] = other.col_index[cols]
        self.dead_b[cols] = other.dead_b[cols]
        self.seen_b |= cols
        self._merge_rows(other.row_values, other.row_index)
        self._drop_dead_a()
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"row_values": self.row_values, "row_index": self.row_index,
                "col_values": self.col_values, "col_index": self.col_index,
                "dead_a": self.dead_a, "dead_b": self.dead_b, "seen_b": self.seen_b}

    def load_state_dict(self, state) -> TopKPartners:
        """Replace this object's lists by `state_dict()` output; returns self."""
        rv = np.asarray(state["row_values"])
        self.__init__(rv.shape[0], np.asarray(state["col_values"]).shape[0], rv.shape[1])
        for key in self.state_dict():
            setattr(self, key, np.array(state[key], dtype=getattr(self, key).dtype))
        return self

    def __repr__(self) -> str:
        return (f"TopKPartners(n_a={self.n_a}, n_b={self.n_b}, k={self.k}, "
                f"columns_seen={int(self.seen_b.sum())})")
