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
  sample (~6e-8 of the unit's spread) remains.
  Sums are kept relative to `shift`, so the final `cov = cross / n - mean_a mean_b` has no
  catastrophic cancellation either.
* Chunking. A float32 dot product over m samples has a relative error that grows like sqrt(m)
  (measured: 4e-8 at 4096 samples, 1.8e-6 at 200 000 for units correlated at 0.99), so the product
  is summed over chunks of `chunk_size` samples (default 4096) and each chunk's float32 result is
  added into float64. The float64 additions cost Ca x Cb per chunk, against 2 x Ca x Cb x 4096
  flops for the chunk's product. Per-unit sums are float32 cascade sums per chunk, added in
  float64 (a float64-dtype torch reduction is ~40x slower on CPU).

Cost: besides the product, `update` makes one centred, units-first copy of each batch and reads it
twice for the sums, all memory-bound: measured at 60% of bare torch.mm's rate for 256 x 512 units
on one CPU core (benchmarks/bench_rosetta_corr.py), less overhead for wider tables.

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

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, NotFittedError

__all__ = ["CrossCorrelation", "TopKPartners", "plan_column_blocks"]

_FORMAT_VERSION = 1
_SAVE_KEYS = ("sum_a", "sumsq_a", "sum_b", "sumsq_b", "cross", "shift_a", "shift_b")


# ----------------------------------------------------------------------------------------------
# helpers


def _as_maps(x, name: str, device: torch.device | None = None,
             ) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Return `x` as one (B, C, H, W) or (n, C) tensor, and its non-unit shape.

    Accepts one tensor (B, C, H, W) or (n, C), or a sequence of such tensors to concatenate along C.
    """
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise InputError(f"{name}: got an empty list of activation maps")
        parts = [_as_tensor(p, f"{name}[{i}]") for i, p in enumerate(x)]
        rest = {tuple(p.shape[:1]) + tuple(p.shape[2:]) for p in parts}
        if len(rest) != 1 or len({p.ndim for p in parts}) != 1:
            raise InputError(f"{name}: maps to concatenate must agree in all but the channel "
                             f"axis; got shapes {[tuple(p.shape) for p in parts]}")
        x = torch.cat([p.to(parts[0].device, torch.promote_types(p.dtype, torch.float32))
                       for p in parts], dim=1)
    else:
        x = _as_tensor(x, name)
    if device is not None and x.device != device:
        x = x.to(device)
    if x.ndim not in (2, 4):
        raise InputError(f"{name}: expected (B, C, H, W) maps or (n, C) samples, got shape "
                         f"{tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0 or x[0, 0].numel() == 0:
        raise InputError(f"{name}: has no samples or no units, shape {tuple(x.shape)}")
    other = (x.shape[0],) + tuple(x.shape[2:])
    return x, other


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


def _centre(x: torch.Tensor, step: int,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre samples on their per-unit mean, units first.

    x : (B, C, H, W) or (n, C) in the work dtype.
    Returns z (C, m) = x - centre, centre (C,) and sums of z and z^2 over samples (all float64
    except z). The centre is any value near the mean (its rounding does not matter: the sums of
    z are taken after the subtraction); the sums are float32 cascade sums over `step` samples,
    added in float64 (a float64-dtype reduction is ~40x slower on CPU).
    """
    n_units = x.shape[1]
    m = x.numel() // n_units
    dims = (0,) + tuple(range(2, x.ndim))
    centre = x.sum(dim=dims) / m
    z = torch.empty((n_units, x.shape[0]) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
    torch.sub(x.transpose(0, 1), centre.view(-1, *([1] * (x.ndim - 1))), out=z)  # one copy
    z = z.view(n_units, m)
    acc = _accumulator_device(x.device)
    s = torch.zeros(n_units, dtype=torch.float64, device=acc)
    q = torch.zeros(n_units, dtype=torch.float64, device=acc)
    sq = torch.empty((n_units, min(step, m)), dtype=x.dtype, device=x.device)  # reused scratch
    for i in range(0, m, step):
        chunk = z[:, i:i + step]
        s += chunk.sum(dim=1).to(acc)
        q += torch.mul(chunk, chunk, out=sq[:, :chunk.shape[1]]).sum(dim=1).to(acc)
    return z, centre.to(acc).to(torch.float64), s, q


# ----------------------------------------------------------------------------------------------
# CrossCorrelation


class CrossCorrelation:
    """Streaming, exactly mergeable Pearson correlation between the units of two groups.

    Group A and group B are sets of units (channels, concatenated over a model's tapped layers);
    samples are (image, position) pairs, so both groups' maps must already share one resolution
    (see `zoolens.analyses.rosetta.resize_maps`).

    Parameters
    ----------
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
    >>> acc = CrossCorrelation()
    >>> for a, b in batches:            # a: (B, Ca, H, W), b: (B, Cb, H, W)
    ...     acc.update(a, b)
    >>> r = acc.correlation()          # (Ca, Cb) float64 NumPy
    """

    #: bytes per (A unit, B unit) pair at peak: float64 sums, float32 chunk product, float64 result
    bytes_per_entry = 20

    def __init__(self, *, cols: tuple[int, int] | None = None, chunk_size: int = 4096,
                 matmul_dtype: str = "float32", dead_rtol: float = 1e-12) -> None:
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
        a : tensor (B, Ca, H, W) or (n, Ca), or a list of such tensors concatenated along units
        b : tensor (B, Cb, H, W) or (n, Cb), likewise; same batch and spatial size as `a`.
            With `cols=(start, stop)`, B's units start:stop are taken from `b`.

        Tensors may live on any device; the sums stay there (float64). Returns self.
        """
        xa, other_a = _as_maps(a, "a")
        xb, other_b = _as_maps(b, "b", device=xa.device)
        if other_a != other_b:
            raise InputError(f"a and b must have the same batch and spatial size (resize the maps "
                             f"to a common resolution first); got a {tuple(xa.shape)} and b "
                             f"{tuple(xb.shape)}")
        if self.cols is not None:
            start, stop = self.cols
            if stop > xb.shape[1]:
                raise InputError(f"cols={self.cols} is outside b's {xb.shape[1]} units")
            xb = xb[:, start:stop]
        n_a, n_b = xa.shape[1], xb.shape[1]
        if self._state is not None and (n_a, n_b) != (self.n_a, self.n_b):
            raise InputError(f"a and b have {n_a} and {n_b} units; this accumulator holds "
                             f"{self.n_a} and {self.n_b}")
        work = self._work_dtype
        if work == torch.float32 and _reduced_precision_matmul(xa.device):
            warnings.warn("float32 matmuls may run in TF32/bf16 (torch float32 matmul precision is "
                          "not 'highest'); CrossCorrelation takes its products in float64 instead. "
                          "Set torch.backends.cuda.matmul.fp32_precision = 'ieee' for the faster "
                          "float32 path.", RuntimeWarning, stacklevel=2)
            work = torch.float64
        xa, xb = xa.to(work), xb.to(work)
        step = int(self.chunk_size)
        # units first, (C, samples), centred: the one copy of the batch that update makes
        za, ca, sa, qa = _centre(xa, step)
        zb, cb, sb, qb = _centre(xb, step)
        m = za.shape[1]
        finite = torch.isfinite(torch.stack([sa.sum(), qa.sum(), sb.sum(), qb.sum()])).all()
        if not bool(finite):
            raise InputError("a or b contains NaN or infinite values; the batch was not added")

        acc_dev = self.device if self._state is not None else _accumulator_device(xa.device)
        if self._state is None:
            self._allocate(n_a, n_b, ca.to(acc_dev), cb.to(acc_dev))
        st = self._state
        cross = st["cross"]
        buf = torch.empty((n_a, n_b), dtype=work, device=xa.device)
        for s in range(0, m, step):
            torch.mm(za[:, s:s + step], zb[:, s:s + step].T, out=buf)
            cross.add_(buf.to(acc_dev))  # float32 chunk into float64 sums
        d_a = ca.to(acc_dev) - st["shift_a"]
        d_b = cb.to(acc_dev) - st["shift_b"]
        self._add_sums(m, sa.to(acc_dev), qa.to(acc_dev), sb.to(acc_dev), qb.to(acc_dev),
                       d_a, d_b)
        return self

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
                 "chunk_size": np.array(int(self.chunk_size), np.int64),
                 "matmul_dtype": np.array(self.matmul_dtype),
                 "dead_rtol": np.array(float(self.dead_rtol))}
        for key in _SAVE_KEYS:
            if self._state is None:
                state[key] = np.zeros((0, 0) if key == "cross" else (0,))
            else:
                state[key] = self._state[key].cpu().numpy()
        return state

    @classmethod
    def from_state_dict(cls, state, *, device: str | torch.device | None = None,
                        ) -> CrossCorrelation:
        """Rebuild an accumulator from `state_dict()` output; sums go to `device` (default CPU)."""
        try:
            version = int(state["format_version"])
            if version != _FORMAT_VERSION:
                raise InputError(f"state: format version {version}, expected {_FORMAT_VERSION}")
            cols = tuple(int(c) for c in np.asarray(state["cols"]))
            acc = cls(cols=None if cols == (-1, -1) else cols,
                      chunk_size=int(state["chunk_size"]), matmul_dtype=str(state["matmul_dtype"]),
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
            acc._state = {k: torch.from_numpy(v.copy()).to(dev) for k, v in arrays.items()}
            acc.n = n
        return acc

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
            return cls.from_state_dict({k: data[k] for k in data.files}, device=device)

    def __repr__(self) -> str:
        return (f"CrossCorrelation(n={self.n}, units={self.n_a}x{self.n_b}, cols={self.cols}, "
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

    @classmethod
    def from_state_dict(cls, state) -> TopKPartners:
        rv = np.asarray(state["row_values"])
        out = cls(rv.shape[0], np.asarray(state["col_values"]).shape[0], rv.shape[1])
        for key in out.state_dict():
            setattr(out, key, np.array(state[key], dtype=getattr(out, key).dtype))
        return out

    def __repr__(self) -> str:
        return (f"TopKPartners(n_a={self.n_a}, n_b={self.n_b}, k={self.k}, "
                f"columns_seen={int(self.seen_b.sum())})")
