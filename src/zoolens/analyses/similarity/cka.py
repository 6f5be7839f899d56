"""Linear CKA: exact, streaming, and minibatch-unbiased.

- `linear_cka` (Kornblith et al. 2019), exact in float64:
  ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred features.
- `CKAAccumulator` / `LayerCKA`: the same value from streaming float64 sums (sum x, X^T X, X^T Y, n),
  batch by batch, exactly mergeable across batches, processes or machines.
- `unbiased_cka` / `MinibatchCKA` / `LayerMinibatchCKA` (Nguyen et al. 2021): the unbiased HSIC
  estimator (Song et al. 2012) averaged over minibatches, for flattened maps too wide for X^T X.

All are scale-invariant (no additive epsilon), and a constant representation gives 0.0 with a
warning instead of NaN.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

from ..._validation import as_features, as_tensor64 as _as_tensor64
from ...errors import InputError, NotFittedError

__all__ = [
    "linear_cka",
    "CKAAccumulator",
    "LayerCKA",
    "unbiased_cka",
    "MinibatchCKA",
    "LayerMinibatchCKA",
]


# ----------------------------------------------------------------------------- input helpers

def _as_numpy64(x, name: str, *, min_samples: int = 1) -> np.ndarray:
    """Validate `x` as a 2D float64 NumPy array (torch float64 input keeps its precision)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return as_features(x, name=name, min_samples=min_samples)


def _centre(x: np.ndarray) -> np.ndarray:
    """Column-centre; subtracting a sample first makes a constant column exactly zero."""
    x = x - x[0]
    return x - x.mean(axis=0)


def _pow2_normalise(x: np.ndarray) -> np.ndarray:
    """Scale by a power of two (exact) so that products of huge or tiny features cannot overflow."""
    peak = float(np.abs(x).max())
    return np.ldexp(x, -np.frexp(peak)[1]) if peak > 0 else x


def _check_same_n(x, y, names=("x", "y")) -> None:
    if x.shape[0] != y.shape[0]:
        raise InputError(f"{names[0]} and {names[1]} must hold the same samples: "
                         f"got {x.shape[0]} and {y.shape[0]} rows")


def _warn_constant(which: str) -> None:
    warnings.warn(f"{which} is constant over the samples; its CKA is set to 0.0", RuntimeWarning,
                  stacklevel=3)


# ----------------------------------------------------------------------------- exact linear CKA

def linear_cka(x, y) -> float:
    """Exact linear CKA (Kornblith et al. 2019) between two representations of the same samples.

    Args:
        x: (n_samples, d1) features, NumPy or torch.
        y: (n_samples, d2) features of the same samples.

    Returns:
        ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` in float64, Xc, Yc column-centred.
        Computed in feature space, or through the equivalent centred Gram matrices when n is the
        smaller side. 0.0 (with a RuntimeWarning) when either representation is constant.
    """
    x = _as_numpy64(x, "x")
    y = _as_numpy64(y, "y")
    _check_same_n(x, y)
    xc, yc = _centre(x), _centre(y)
    x_const, y_const = not xc.any(), not yc.any()
    if x_const or y_const:
        _warn_constant("x" if x_const else "y")
        return 0.0
    xc, yc = _pow2_normalise(xc), _pow2_normalise(yc)
    n, d1 = xc.shape
    d2 = yc.shape[1]
    if n * (d1 + d2) < d1 * d1 + d2 * d2 + d1 * d2:
        # tr(Kc Lc) = ||Yc^T Xc||_F^2 and ||Kc||_F = ||Xc^T Xc||_F with Kc = Xc Xc^T.
        k, l_ = xc @ xc.T, yc @ yc.T
        num = float(np.vdot(k, l_))
        den = float(np.linalg.norm(k) * np.linalg.norm(l_))
    else:
        num = float(np.linalg.norm(yc.T @ xc) ** 2)
        den = float(np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    return num / den


# ----------------------------------------------------------------------------- streaming exact CKA

class LayerCKA:
    """Streaming exact linear CKA for every (layer of A, layer of B) pair of pooled features.

    Keeps float64 sums over samples: per layer the sum and X^T X, and the cross-products X_a^T X_b
    of every pair (one (sum d_a) x (sum d_b) matrix). Memory is independent of the number of
    samples; `merge` adds accumulators from other batches, processes or machines exactly. The
    result equals `linear_cka` on the concatenated data (to rounding) for any batch split.

    Sums are taken of ``x - x_ref`` with ``x_ref`` the first sample seen, which avoids cancellation
    when means are large and makes a constant layer exactly zero.

    Args:
        dims_a: feature width of each layer of model A.
        dims_b: feature width of each layer of model B.
        device: where the sums live and the float64 matmuls run (default CPU).
    """

    def __init__(self, dims_a: Sequence[int], dims_b: Sequence[int], *, device=None):
        self.dims_a = [int(d) for d in dims_a]
        self.dims_b = [int(d) for d in dims_b]
        self.device = device
        for name, dims in (("dims_a", self.dims_a), ("dims_b", self.dims_b)):
            if not dims or min(dims) < 1:
                raise InputError(f"{name}: expected a non-empty list of positive widths, got {dims}")
        self.reset()

    # -- state
    def reset(self) -> "LayerCKA":
        """Forget all samples."""
        dev = torch.device(self.device) if self.device is not None else torch.device("cpu")
        self._dev = dev
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=dev)  # noqa: E731
        da, db = sum(self.dims_a), sum(self.dims_b)
        self.n_ = 0
        self.ref_a_, self.ref_b_ = z(da), z(db)
        self.sum_a_, self.sum_b_ = z(da), z(db)
        self.gram_a_ = [z(d, d) for d in self.dims_a]
        self.gram_b_ = [z(d, d) for d in self.dims_b]
        self.cross_ = z(da, db)
        return self

    def _label(self, side: int, i: int) -> str:
        """How errors and warnings name layer i of side 0 (A) or 1 (B)."""
        return f"{('feats_a', 'feats_b')[side]}[{i}]"

    @staticmethod
    def _slices(dims):
        ends = np.cumsum(dims)
        return [slice(int(e - d), int(e)) for d, e in zip(dims, ends)]

    def _stack(self, feats, side: int) -> torch.Tensor:
        dims, name = (self.dims_a, self.dims_b)[side], ("feats_a", "feats_b")[side]
        if isinstance(feats, (np.ndarray, torch.Tensor)) or len(feats) != len(dims):
            got = "an array" if isinstance(feats, (np.ndarray, torch.Tensor)) else f"{len(feats)}"
            raise InputError(f"{name}: expected a list of {len(dims)} arrays, got {got}")
        ts = [_as_tensor64(f, self._label(side, i), self._dev) for i, f in enumerate(feats)]
        for i, (t, d) in enumerate(zip(ts, dims)):
            if t.shape[1] != d:
                raise InputError(f"{self._label(side, i)}: expected {d} features, got shape "
                                 f"{tuple(t.shape)}")
            if t.shape[0] != ts[0].shape[0]:
                raise InputError(f"{self._label(side, i)}: has {t.shape[0]} rows, "
                                 f"{self._label(side, 0)} has {ts[0].shape[0]}")
        return torch.cat(ts, dim=1)

    # -- accumulate
    def update(self, feats_a: Sequence, feats_b: Sequence) -> "LayerCKA":
        """Add a batch: `feats_a[i]` is (batch, dims_a[i]), `feats_b[j]` is (batch, dims_b[j])."""
        xa = self._stack(feats_a, 0)
        xb = self._stack(feats_b, 1)
        _check_same_n(xa, xb, (self._label(0, 0), self._label(1, 0)))
        if xa.shape[0] == 0:
            return self
        if self.n_ == 0:
            self.ref_a_, self.ref_b_ = xa[0].clone(), xb[0].clone()
        xa = xa - self.ref_a_
        xb = xb - self.ref_b_
        self.sum_a_ += xa.sum(0)
        self.sum_b_ += xb.sum(0)
        for g, sl in zip(self.gram_a_, self._slices(self.dims_a)):
            g.addmm_(xa[:, sl].T, xa[:, sl])
        for g, sl in zip(self.gram_b_, self._slices(self.dims_b)):
            g.addmm_(xb[:, sl].T, xb[:, sl])
        self.cross_.addmm_(xa.T, xb)
        self.n_ += int(xa.shape[0])
        return self

    def merge(self, other: "LayerCKA") -> "LayerCKA":
        """Add the samples of `other` (same dims) to this accumulator, exactly."""
        if not isinstance(other, LayerCKA) or other.dims_a != self.dims_a or other.dims_b != self.dims_b:
            raise InputError(f"merge: expected an accumulator with dims_a={self.dims_a}, "
                             f"dims_b={self.dims_b}, got {other!r}")
        if other.n_ == 0:
            return self
        if self.n_ == 0:
            return self.load_state_dict(other.state_dict())
        to = lambda t: t.to(self._dev)  # noqa: E731
        n_o = float(other.n_)
        sa, sb = to(other.sum_a_), to(other.sum_b_)
        # Re-reference other's sums from its first sample to ours:
        # sum (x - r) = sum (x - r_o) + n_o (r_o - r), and likewise for the products.
        da = to(other.ref_a_) - self.ref_a_
        db = to(other.ref_b_) - self.ref_b_
        for g, g_o, sl in zip(self.gram_a_, other.gram_a_, self._slices(self.dims_a)):
            g += to(g_o) + _outer_sym(da[sl], sa[sl], n_o)
        for g, g_o, sl in zip(self.gram_b_, other.gram_b_, self._slices(self.dims_b)):
            g += to(g_o) + _outer_sym(db[sl], sb[sl], n_o)
        self.cross_ += (to(other.cross_) + torch.outer(da, sb) + torch.outer(sa, db)
                        + n_o * torch.outer(da, db))
        self.sum_a_ += sa + n_o * da
        self.sum_b_ += sb + n_o * db
        self.n_ += other.n_
        return self

    # -- read out
    def result(self) -> np.ndarray:
        """(len(dims_a), len(dims_b)) float64 array of exact linear CKA values."""
        if self.n_ == 0:
            raise NotFittedError(f"{type(self).__name__}: no samples yet; call update() first")
        n = float(self.n_)
        sl_a, sl_b = self._slices(self.dims_a), self._slices(self.dims_b)
        norm_a = torch.stack([torch.linalg.norm(g - torch.outer(self.sum_a_[s], self.sum_a_[s]) / n)
                              for g, s in zip(self.gram_a_, sl_a)])
        norm_b = torch.stack([torch.linalg.norm(g - torch.outer(self.sum_b_[s], self.sum_b_[s]) / n)
                              for g, s in zip(self.gram_b_, sl_b)])
        sq = (self.cross_ - torch.outer(self.sum_a_, self.sum_b_) / n).square_()
        # Block sums of the squared centred cross-products: squared Frobenius norm per layer pair.
        ids_a = torch.repeat_interleave(torch.arange(len(self.dims_a), device=self._dev),
                                        torch.tensor(self.dims_a, device=self._dev))
        ids_b = torch.repeat_interleave(torch.arange(len(self.dims_b), device=self._dev),
                                        torch.tensor(self.dims_b, device=self._dev))
        rows = torch.zeros(len(self.dims_a), sq.shape[1], dtype=torch.float64, device=self._dev)
        rows.index_add_(0, ids_a, sq)
        num = torch.zeros(len(self.dims_a), len(self.dims_b), dtype=torch.float64, device=self._dev)
        num.index_add_(1, ids_b, rows)
        den = torch.outer(norm_a, norm_b)
        out = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
        const_a = [i for i in range(len(self.dims_a)) if norm_a[i] == 0]
        const_b = [j for j in range(len(self.dims_b)) if norm_b[j] == 0]
        if const_a or const_b:
            what = ", ".join([self._label(0, i) for i in const_a] + [self._label(1, j) for j in const_b])
            _warn_constant(what if len(const_a) + len(const_b) == 1 else f"each of {what}")
        return out.cpu().numpy()

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain NumPy arrays (savable with `np.savez(path, **state)`)."""
        st = {
            "dims_a": np.asarray(self.dims_a, dtype=np.int64),
            "dims_b": np.asarray(self.dims_b, dtype=np.int64),
            "n": np.asarray(self.n_, dtype=np.int64),
            "ref_a": self.ref_a_, "ref_b": self.ref_b_,
            "sum_a": self.sum_a_, "sum_b": self.sum_b_,
            "cross": self.cross_,
        }
        st.update({f"gram_a.{i}": g for i, g in enumerate(self.gram_a_)})
        st.update({f"gram_b.{j}": g for j, g in enumerate(self.gram_b_)})
        return {k: (v.cpu().numpy().copy() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}

    def load_state_dict(self, state) -> "LayerCKA":
        """Restore sums saved by `state_dict` (dims must match)."""
        if list(np.asarray(state["dims_a"]).tolist()) != self.dims_a or \
                list(np.asarray(state["dims_b"]).tolist()) != self.dims_b:
            raise InputError(f"load_state_dict: state has dims_a={np.asarray(state['dims_a']).tolist()}, "
                             f"dims_b={np.asarray(state['dims_b']).tolist()}; this accumulator has "
                             f"dims_a={self.dims_a}, dims_b={self.dims_b}")
        def t(key):
            return torch.as_tensor(np.array(state[key], dtype=np.float64), device=self._dev)

        self.n_ = int(np.asarray(state["n"]))
        self.ref_a_, self.ref_b_ = t("ref_a"), t("ref_b")
        self.sum_a_, self.sum_b_ = t("sum_a"), t("sum_b")
        self.cross_ = t("cross")
        self.gram_a_ = [t(f"gram_a.{i}") for i in range(len(self.dims_a))]
        self.gram_b_ = [t(f"gram_b.{j}") for j in range(len(self.dims_b))]
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dims_a={self.dims_a}, dims_b={self.dims_b}, n={self.n_})"


def _outer_sym(d: torch.Tensor, s: torch.Tensor, n: float) -> torch.Tensor:
    """d s^T + s d^T + n d d^T: the change of sum (x - r)(x - r)^T when r moves by -d."""
    o = torch.outer(d, s)
    return o + o.T + n * torch.outer(d, d)


class CKAAccumulator(LayerCKA):
    """Streaming exact linear CKA between two pooled representations x (n, d1) and y (n, d2).

    `update(x, y)` per batch, `merge(other)`, `result() -> float`, `state_dict()` /
    `load_state_dict()`. Equals `linear_cka` on the concatenated batches to rounding.
    """

    def __init__(self, d1: int, d2: int, *, device=None):
        self.d1, self.d2 = int(d1), int(d2)
        super().__init__([self.d1], [self.d2], device=device)

    def _label(self, side: int, i: int) -> str:
        return ("x", "y")[side]

    def update(self, x, y) -> "CKAAccumulator":
        """Add a batch: x (batch, d1), y (batch, d2), NumPy or torch."""
        return super().update([x], [y])

    def result(self) -> float:
        """Exact linear CKA of all samples seen."""
        return float(super().result()[0, 0])

    def __repr__(self) -> str:
        return f"CKAAccumulator(d1={self.d1}, d2={self.d2}, n={self.n_})"


# ----------------------------------------------------------------------------- minibatch unbiased CKA

class LayerMinibatchCKA:
    """Minibatch CKA with the unbiased HSIC estimator (Nguyen et al. 2021), every layer pair.

    For each minibatch of n >= 4 samples and each layer, K = X X^T with the diagonal zeroed, and
    HSIC_1(K, L) = [tr(K L) + 1^T K 1 1^T L 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K L 1] / (n(n-3))
    (Song et al. 2012). HSIC(K, L), HSIC(K, K), HSIC(L, L) are averaged over minibatches and
    CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)). Each minibatch should be a random subset of
    the data (shuffle first). Memory: one (n, n) Gram per layer per minibatch.

    Args:
        n_layers_a: number of layers of model A.
        n_layers_b: number of layers of model B.
        device: where the float64 Gram matrices are formed (default CPU).
    """

    def __init__(self, n_layers_a: int, n_layers_b: int, *, device=None):
        self.n_layers_a = int(n_layers_a)
        self.n_layers_b = int(n_layers_b)
        self.device = device
        if self.n_layers_a < 1 or self.n_layers_b < 1:
            raise InputError(f"need at least one layer per side, got {n_layers_a} and {n_layers_b}")
        self.reset()

    def reset(self) -> "LayerMinibatchCKA":
        """Forget all minibatches."""
        self._dev = torch.device(self.device) if self.device is not None else torch.device("cpu")
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=self._dev)  # noqa: E731
        self.n_batches_ = 0
        self.n_samples_ = 0
        self.hsic_ab_ = z(self.n_layers_a, self.n_layers_b)
        self.hsic_aa_ = z(self.n_layers_a)
        self.hsic_bb_ = z(self.n_layers_b)
        return self

    def _label(self, side: int, i: int) -> str:
        """How errors and warnings name layer i of side 0 (A) or 1 (B)."""
        return f"{('feats_a', 'feats_b')[side]}[{i}]"

    def _grams(self, feats, side: int):
        count, name = (self.n_layers_a, self.n_layers_b)[side], ("feats_a", "feats_b")[side]
        if isinstance(feats, (np.ndarray, torch.Tensor)) or len(feats) != count:
            raise InputError(f"{name}: expected a list of {count} arrays")
        grams = []
        for i, f in enumerate(feats):
            x = _as_tensor64(f, self._label(side, i), self._dev, flatten=True)
            # The estimator is invariant to a shift of x; centring only improves rounding, and
            # subtracting a sample first makes a constant layer exactly zero.
            x = x - x[:1]
            x = x - x.mean(0, keepdim=True)
            k = x @ x.T
            k.fill_diagonal_(0.0)
            grams.append(k)
        sizes = {int(k.shape[0]) for k in grams}
        if len(sizes) != 1:
            raise InputError(f"{name}: layers have different numbers of rows {sorted(sizes)}")
        return torch.stack(grams)

    def update(self, feats_a: Sequence, feats_b: Sequence) -> "LayerMinibatchCKA":
        """Add one minibatch: `feats_a[i]` (n, ...) and `feats_b[j]` (n, ...), n >= 4, flattened."""
        ka = self._grams(feats_a, 0)
        kb = self._grams(feats_b, 1)
        n = ka.shape[1]
        if kb.shape[1] != n:
            raise InputError(f"{self._label(0, 0)} and {self._label(1, 0)} must hold the same "
                             f"samples: got {n} and {kb.shape[1]} rows")
        if n < 4:
            raise InputError(f"minibatch of {n} samples: the unbiased HSIC estimator needs at least 4")
        fa, fb = ka.reshape(ka.shape[0], -1), kb.reshape(kb.shape[0], -1)
        ra, rb = ka.sum(-1), kb.sum(-1)            # K 1, per layer: (L, n)
        ta, tb = ra.sum(-1), rb.sum(-1)            # 1^T K 1
        c1, c2, c3 = 1.0 / ((n - 1) * (n - 2)), 2.0 / (n - 2), 1.0 / (n * (n - 3))
        self.hsic_ab_ += (fa @ fb.T + c1 * torch.outer(ta, tb) - c2 * (ra @ rb.T)) * c3
        self.hsic_aa_ += (fa.square().sum(-1) + c1 * ta * ta - c2 * ra.square().sum(-1)) * c3
        self.hsic_bb_ += (fb.square().sum(-1) + c1 * tb * tb - c2 * rb.square().sum(-1)) * c3
        self.n_batches_ += 1
        self.n_samples_ += int(n)
        return self

    def merge(self, other: "LayerMinibatchCKA") -> "LayerMinibatchCKA":
        """Add the minibatches of `other` (same layer counts)."""
        if not isinstance(other, LayerMinibatchCKA) or \
                (other.n_layers_a, other.n_layers_b) != (self.n_layers_a, self.n_layers_b):
            raise InputError(f"merge: expected an accumulator with {self.n_layers_a} x "
                             f"{self.n_layers_b} layers, got {other!r}")
        self.hsic_ab_ += other.hsic_ab_.to(self._dev)
        self.hsic_aa_ += other.hsic_aa_.to(self._dev)
        self.hsic_bb_ += other.hsic_bb_.to(self._dev)
        self.n_batches_ += other.n_batches_
        self.n_samples_ += other.n_samples_
        return self

    def result(self) -> np.ndarray:
        """(n_layers_a, n_layers_b) float64 array of minibatch unbiased CKA values."""
        if self.n_batches_ == 0:
            raise NotFittedError(f"{type(self).__name__}: no minibatches yet; call update() first")
        # The 1/n_batches of the mean cancels in the ratio.
        aa, bb = self.hsic_aa_, self.hsic_bb_
        den2 = torch.outer(aa, bb)
        ok = (aa[:, None] > 0) & (bb[None, :] > 0)
        out = torch.where(ok, self.hsic_ab_ / torch.sqrt(torch.where(ok, den2, 1.0)), 0.0)
        bad = [self._label(0, i) for i in range(len(aa)) if not aa[i] > 0] + \
              [self._label(1, j) for j in range(len(bb)) if not bb[j] > 0]
        if bad:
            warnings.warn(f"unbiased HSIC of {', '.join(bad)} is not positive (constant features?); "
                          "its CKA is set to 0.0", RuntimeWarning, stacklevel=2)
        return out.cpu().numpy()

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain NumPy arrays (savable with `np.savez`)."""
        return {
            "n_layers": np.asarray([self.n_layers_a, self.n_layers_b], dtype=np.int64),
            "n_batches": np.asarray(self.n_batches_, dtype=np.int64),
            "n_samples": np.asarray(self.n_samples_, dtype=np.int64),
            "hsic_ab": self.hsic_ab_.cpu().numpy().copy(),
            "hsic_aa": self.hsic_aa_.cpu().numpy().copy(),
            "hsic_bb": self.hsic_bb_.cpu().numpy().copy(),
        }

    def load_state_dict(self, state) -> "LayerMinibatchCKA":
        """Restore sums saved by `state_dict`."""
        layers = np.asarray(state["n_layers"]).tolist()
        if layers != [self.n_layers_a, self.n_layers_b]:
            raise InputError(f"load_state_dict: state has {layers[0]} x {layers[1]} layers, this "
                             f"accumulator {self.n_layers_a} x {self.n_layers_b}")
        def t(key):
            return torch.as_tensor(np.array(state[key], dtype=np.float64), device=self._dev)

        self.n_batches_ = int(np.asarray(state["n_batches"]))
        self.n_samples_ = int(np.asarray(state["n_samples"]))
        self.hsic_ab_, self.hsic_aa_, self.hsic_bb_ = t("hsic_ab"), t("hsic_aa"), t("hsic_bb")
        return self

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n_layers_a={self.n_layers_a}, n_layers_b={self.n_layers_b}, "
                f"n_batches={self.n_batches_})")


class MinibatchCKA(LayerMinibatchCKA):
    """Minibatch unbiased CKA between two representations: `update(x, y)` per minibatch (n >= 4,
    trailing dimensions flattened), `merge`, `result() -> float`."""

    def __init__(self, *, device=None):
        super().__init__(1, 1, device=device)

    def _label(self, side: int, i: int) -> str:
        return ("x", "y")[side]

    def update(self, x, y) -> "MinibatchCKA":
        """Add a minibatch: x (n, ...), y (n, ...), n >= 4."""
        return super().update([x], [y])

    def result(self) -> float:
        """Minibatch unbiased CKA over all minibatches seen."""
        return float(super().result()[0, 0])

    def __repr__(self) -> str:
        return f"MinibatchCKA(n_batches={self.n_batches_})"


def unbiased_cka(x, y, *, batch_size: int | None = None, device=None) -> float:
    """Unbiased (minibatch) linear CKA of Nguyen et al. 2021.

    Args:
        x: (n_samples, ...) features; trailing dimensions are flattened.
        y: (n_samples, ...) features of the same samples.
        batch_size: None for one full batch (the unbiased full-data estimate, an (n, n) Gram);
            otherwise the rows are cut, in the given order, into n // batch_size consecutive
            minibatches of about equal size (each >= batch_size >= 4). Shuffle rows first.
        device: where the float64 Gram matrices are formed.

    Returns:
        CKA = mean HSIC_1(K, L) / sqrt(mean HSIC_1(K, K) mean HSIC_1(L, L)); 0.0 with a warning for
        a constant representation. Being unbiased, it can fall slightly outside [0, 1].
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    x = _as_tensor64(x, "x", dev, flatten=True)
    y = _as_tensor64(y, "y", dev, flatten=True)
    _check_same_n(x, y)
    n = int(x.shape[0])
    if batch_size is None:
        n_batches = 1
    else:
        if int(batch_size) < 4:
            raise InputError(f"batch_size: the unbiased HSIC estimator needs at least 4, "
                             f"got {batch_size}")
        n_batches = max(1, n // int(batch_size))
    if n < 4:
        raise InputError(f"x: the unbiased HSIC estimator needs at least 4 samples, got {n}")
    acc = MinibatchCKA(device=device)
    bounds = np.linspace(0, n, n_batches + 1).round().astype(int)
    for s, e in zip(bounds[:-1], bounds[1:]):
        acc.update(x[s:e], y[s:e])
    return acc.result()
