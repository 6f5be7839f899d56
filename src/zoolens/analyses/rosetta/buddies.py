"""Best buddies (mutual nearest neighbours between two models' units) and multi-model Rosetta
sets anchored on one model (the generative one in the paper).

`best_buddies` works on a full correlation table or, when the table did not fit the memory
budget, on each unit's top-K partners (`zoolens.stats.TopKPartners`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..._validation import as_features
from ...errors import InputError
from ...stats import TopKPartners
from .units import UnitIndex

__all__ = ["MODES", "best_buddies", "label_buddies", "rosetta_sets"]

MODES = ("strict", "relaxed")


def _as_table(corr) -> np.ndarray:
    if isinstance(corr, torch.Tensor):  # keep float64 tensors' digits (as_features casts to f32)
        corr = corr.detach().cpu().double().numpy()
    return as_features(corr, "corr")


def _mask(mask, n: int, name: str, default: np.ndarray) -> np.ndarray:
    if mask is None:
        return default
    m = np.asarray(mask, dtype=bool)
    if m.shape != (n,):
        raise InputError(f"{name}: expected shape ({n},), got {m.shape}")
    return m


def best_buddies(corr, mode: str = "strict", k: int = 5, dead_a=None, dead_b=None, *,
                 min_correlation: float | None = None) -> list[tuple[int, int, float]]:
    """Mutual nearest neighbours between the units of two models.

    Parameters
    ----------
    corr : (Ca, Cb) array or tensor of correlations, or a complete `zoolens.stats.TopKPartners`
    mode : "strict" or "relaxed"
        strict: i's best B unit is j and j's best A unit is i (mutual argmax).
        relaxed (Dravid et al.): i's best B unit is j and i is among j's k best A units. Several A
        units can then claim the same j; each j keeps only its highest-correlated claimant (ties:
        the lower index), so no unit is ever matched twice.
    k : int
        relaxed mode's neighbourhood, capped at the number of live A units (so a layer with fewer
        than k units works). With `TopKPartners`, k must not exceed its K.
    dead_a, dead_b : (Ca,), (Cb,) bool, optional
        Zero-variance units, never matched. Default for a table: rows/columns that are all zero
        (what `CrossCorrelation.correlation` gives dead units). `TopKPartners` carries its own.
    min_correlation : float, optional
        Drop pairs whose correlation is below this floor (after matching).

    Returns
    -------
    list of (i, j, r): A index, B index, correlation; sorted by r descending, then i, then j.
    Ties in an argmax go to the lower index, so the result is deterministic.
    """
    if mode not in MODES:
        raise InputError(f"mode: expected one of {MODES}, got {mode!r}")
    if int(k) < 1:
        raise InputError(f"k: expected a positive integer, got {k!r}")
    k = int(k)
    if isinstance(corr, TopKPartners):
        if dead_a is not None or dead_b is not None:
            raise InputError("dead_a/dead_b: TopKPartners carries its own dead-unit masks")
        pairs = _buddies_topk(corr, mode, k)
    else:
        c = _as_table(corr)
        da = _mask(dead_a, c.shape[0], "dead_a", ~c.any(axis=1))
        db = _mask(dead_b, c.shape[1], "dead_b", ~c.any(axis=0))
        pairs = _buddies_table(c, mode, k, da, db)
    if min_correlation is not None:
        pairs = [p for p in pairs if p[2] >= min_correlation]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))


def _buddies_table(c: np.ndarray, mode: str, k: int, dead_a: np.ndarray, dead_b: np.ndarray,
                   ) -> list[tuple[int, int, float]]:
    live_a, live_b = ~dead_a, ~dead_b
    if not live_a.any() or not live_b.any():
        return []
    if dead_a.any() or dead_b.any():  # the caller's table stays untouched
        c = c.copy()
        c[dead_a, :] = -np.inf
        c[:, dead_b] = -np.inf
    rows = np.flatnonzero(live_a)
    best_b = np.argmax(c[rows], axis=1)  # argmax takes the first maximum: lowest index on ties
    r = c[rows, best_b]
    if mode == "strict":
        best_a = np.argmax(c, axis=0)
        keep = best_a[best_b] == rows
        return [(int(i), int(j), float(v)) for i, j, v in zip(rows[keep], best_b[keep], r[keep])]
    # relaxed: rank of i in column j = #(strictly larger) + #(equal with a lower index)
    k_eff = min(k, int(live_a.sum()))
    rank = np.empty(len(rows), dtype=np.int64)
    step = max(1, (1 << 24) // c.shape[0])  # bounds the (Ca, step) comparison temporaries
    for s in range(0, len(rows), step):
        cols = c[:, best_b[s:s + step]]
        v = r[s:s + step]
        below = np.arange(c.shape[0])[:, None] < rows[None, s:s + step]
        rank[s:s + step] = (cols > v).sum(axis=0) + ((cols == v) & below).sum(axis=0)
    keep = rank < k_eff
    return _one_per_column(rows[keep], best_b[keep], r[keep])


def _one_per_column(rows, cols, vals) -> list[tuple[int, int, float]]:
    """Keep, for each B unit, only its highest-correlated claimant (ties: lower A index)."""
    order = np.lexsort((rows, -vals))
    taken: set[int] = set()
    out = []
    for t in order:
        j = int(cols[t])
        if j not in taken:
            taken.add(j)
            out.append((int(rows[t]), j, float(vals[t])))
    return out


def _buddies_topk(tp: TopKPartners, mode: str, k: int) -> list[tuple[int, int, float]]:
    if not tp.complete:
        missing = int((~tp.seen_b).sum())
        raise InputError(f"corr: TopKPartners is missing {missing} of {tp.n_b} B columns")
    rows = np.flatnonzero(tp.row_index[:, 0] >= 0)
    best_b = tp.row_index[rows, 0]
    r = tp.row_values[rows, 0]
    if mode == "strict":
        keep = tp.col_index[best_b, 0] == rows
        return [(int(i), int(j), float(v)) for i, j, v in zip(rows[keep], best_b[keep], r[keep])]
    k_eff = min(k, int((~tp.dead_a).sum()))
    if k_eff > tp.k:
        raise InputError(f"k={k}: TopKPartners keeps only K={tp.k} partners per unit; relaxed "
                         f"best buddies need K >= k")
    keep = (tp.col_index[best_b, :k_eff] == rows[:, None]).any(axis=1)
    return _one_per_column(rows[keep], best_b[keep], r[keep])


def label_buddies(buddies: Sequence[tuple[int, int, float]], index_a: UnitIndex,
                  index_b: UnitIndex) -> list[tuple[str, str, float]]:
    """Replace the global indices of `best_buddies` output by unit ids."""
    return [(index_a.unit_id(i), index_b.unit_id(j), float(r)) for i, j, r in buddies]


# ----------------------------------------------------------------------------------------------
# multi-model sets


def _pair_lookup(pair_buddies: Mapping, m1: str, m2: str, floor: float | None,
                 ) -> dict:
    """{unit of m1: (unit of m2, r)} from the buddies of (m1, m2) or of (m2, m1)."""
    if (m1, m2) in pair_buddies:
        items = [(u, v, r) for u, v, r in pair_buddies[(m1, m2)]]
    elif (m2, m1) in pair_buddies:
        items = [(v, u, r) for u, v, r in pair_buddies[(m2, m1)]]
    else:
        have = ", ".join(f"({a}, {b})" for a, b in pair_buddies) or "none"
        raise InputError(f"pair_buddies: no best buddies for the pair ({m1}, {m2}); have {have}")
    out: dict = {}
    for u, v, r in items:
        r = float(r)
        if floor is not None and r < floor:
            continue
        # buddies are one-to-one; if a caller's list is not, the strongest pair wins
        if u not in out or r > out[u][1]:
            out[u] = (v, r)
    return out


def rosetta_sets(pair_buddies: Mapping[tuple[str, str], Sequence[tuple]], models: Sequence[str],
                 anchor: str, pairwise: bool = False, min_correlation: float | None = None,
                 ) -> list[dict]:
    """Multi-model Rosetta neuron sets, anchored on one model.

    Parameters
    ----------
    pair_buddies : {(model_a, model_b): [(unit_a, unit_b, r), ...]}
        Best buddies per model pair (unit ids or indices), either key order. Needs every
        (anchor, other) pair, and with `pairwise` every pair of non-anchor models.
    models : the models of a set, in the order its units are listed; must include `anchor`
    anchor : the model every set is built around (the generative model in the paper)
    pairwise : also require the non-anchor units to be pairwise best buddies
    min_correlation : pairs below this floor do not count as best buddies

    Returns
    -------
    list of {"units": [unit per model, in `models` order], "mean_correlation": r}, where r is the
    mean over the pairs checked (anchor-other, plus other-other when `pairwise`); sorted by r
    descending, then by the anchor unit's order of appearance.
    """
    models = [str(m) for m in models]
    if len(set(models)) != len(models):
        raise InputError(f"models: duplicate names in {models}")
    if anchor not in models:
        raise InputError(f"anchor {anchor!r} is not among models {models}")
    if len(models) < 2:
        raise InputError(f"models: need at least two models, got {models}")
    others = [m for m in models if m != anchor]
    from_anchor = {m: _pair_lookup(pair_buddies, anchor, m, min_correlation) for m in others}
    between = {}
    if pairwise:
        for i, m1 in enumerate(others):
            for m2 in others[i + 1:]:
                between[(m1, m2)] = _pair_lookup(pair_buddies, m1, m2, min_correlation)

    sets = []
    first = others[0]
    for order, (u, (v0, r0)) in enumerate(from_anchor[first].items()):
        chosen = {anchor: u, first: v0}
        corrs = [r0]
        for m in others[1:]:
            hit = from_anchor[m].get(u)
            if hit is None:
                break
            chosen[m] = hit[0]
            corrs.append(hit[1])
        else:
            ok = True
            for (m1, m2), lookup in between.items():
                hit = lookup.get(chosen[m1])
                if hit is None or hit[0] != chosen[m2]:
                    ok = False
                    break
                corrs.append(hit[1])
            if ok:
                sets.append((order, {"units": [chosen[m] for m in models],
                                     "mean_correlation": float(np.mean(corrs))}))
    sets.sort(key=lambda t: (-t[1]["mean_correlation"], t[0]))
    return [s for _, s in sets]
