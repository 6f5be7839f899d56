"""Rosetta neurons (Dravid et al., ICCV 2023): units of different models that encode the same thing.

The array-level part of the method, independent of models and extraction:

1. `resize_maps` / `concat_resized` bring every tapped layer to one common resolution, recorded in
   the result; `zoolens.stats.CrossCorrelation` streams the Pearson correlation of every unit pair
   over all (image, position) samples (exact whatever the batch size, unlike per-batch cosines).
2. `best_buddies` finds mutual nearest neighbours in a correlation table (or in per-unit top-K
   partners, `zoolens.stats.TopKPartners`, when the table does not fit the memory budget).
3. `rosetta_sets` builds multi-model sets anchored on one model (the generative one in the paper).
4. `set_profiles` + `cluster_sets` group sets into concepts by their activation patterns.
5. `RosettaResult` records all of it, with the settings used, as JSON.

Units are identified by `UnitIndex`: a model's tapped layers, concatenated in order, give each
channel a global index; its id string is `<model>/<layer>:<channel>`. Model specs may contain '/'
and ':' (`open_clip:ViT-B-32/laion2b_s34b_b79k`); layer names (module paths) may not contain '/',
so an id splits unambiguously at its last ':' and the last '/' before it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .._validation import as_features
from ..errors import InputError, UnknownLayerError
from ..resize import as_size, concat_resized, resize_maps
from ..stats import TopKPartners

__all__ = ["resize_maps", "concat_resized", "UnitIndex", "best_buddies", "label_buddies",
           "rosetta_sets", "set_profiles", "cluster_sets", "RosettaResult"]

MODES = ("strict", "relaxed")


# ----------------------------------------------------------------------------------------------
# unit identity


class UnitIndex:
    """Global channel index <-> (layer, channel) <-> unit id for one model's concatenated layers.

    Parameters
    ----------
    model : str
        The model's name as used in unit ids (its spec, e.g. `timm:resnet50`).
    layers : sequence of (layer name, channels)
        In concatenation order. `TapInfo` records work too (`UnitIndex.from_taps`).
    """

    def __init__(self, model: str, layers: Sequence[tuple[str, int]]) -> None:
        self.model = str(model)
        self.layers = tuple((str(name), int(c)) for name, c in layers)
        if not self.model:
            raise InputError("model: expected a non-empty name")
        if not self.layers:
            raise InputError(f"layers of {self.model}: expected at least one (name, channels)")
        names = [name for name, _ in self.layers]
        for name, c in self.layers:
            if not name or "/" in name:
                raise InputError(f"layer {name!r} of {self.model}: layer names must be non-empty "
                                 f"and contain no '/'")
            if c < 1:
                raise InputError(f"layer {name!r} of {self.model}: has {c} channels")
        if len(set(names)) != len(names):
            raise InputError(f"layers of {self.model}: duplicate names in {names}")
        self._offsets = np.concatenate([[0], np.cumsum([c for _, c in self.layers])])
        self._by_name = {name: i for i, name in enumerate(names)}

    @classmethod
    def from_taps(cls, model: str, taps: Sequence) -> UnitIndex:
        """From records with `.name` and `.channels` (e.g. `zoolens.taps.TapInfo`)."""
        return cls(model, [(t.name, t.channels) for t in taps])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return f"UnitIndex({self.model!r}, {list(self.layers)})"

    def __eq__(self, other) -> bool:
        return isinstance(other, UnitIndex) and (self.model, self.layers) == (other.model,
                                                                              other.layers)

    def layer_slice(self, layer: str) -> slice:
        """The global indices of one layer's channels."""
        i = self._layer_pos(layer)
        return slice(int(self._offsets[i]), int(self._offsets[i + 1]))

    def _layer_pos(self, layer: str) -> int:
        try:
            return self._by_name[layer]
        except KeyError:
            have = ", ".join(self._by_name)
            raise UnknownLayerError(f"unknown layer {layer!r} in {self.model}; have {have}",
                                    ) from None

    def locate(self, i: int) -> tuple[str, int]:
        """Global index -> (layer, channel)."""
        i = int(i)
        if not 0 <= i < len(self):
            raise InputError(f"unit index {i} is outside 0..{len(self) - 1} of {self.model}")
        pos = int(np.searchsorted(self._offsets, i, side="right")) - 1
        return self.layers[pos][0], i - int(self._offsets[pos])

    def index(self, layer: str, channel: int) -> int:
        """(layer, channel) -> global index."""
        pos = self._layer_pos(layer)
        c = self.layers[pos][1]
        if not 0 <= int(channel) < c:
            raise InputError(f"channel {channel} is outside 0..{c - 1} of {self.model}/{layer}")
        return int(self._offsets[pos]) + int(channel)

    def unit_id(self, i: int) -> str:
        """Global index -> `<model>/<layer>:<channel>`."""
        layer, channel = self.locate(i)
        return f"{self.model}/{layer}:{channel}"

    def unit_ids(self, indices=None) -> list[str]:
        """Ids of `indices` (default: all units, in order)."""
        idx = range(len(self)) if indices is None else indices
        return [self.unit_id(i) for i in idx]

    def index_of(self, unit_id: str) -> int:
        """`<model>/<layer>:<channel>` -> global index (the model must be this one)."""
        model, layer, channel = self.parse(unit_id)
        if model != self.model:
            raise InputError(f"unit {unit_id!r} belongs to {model!r}, not {self.model!r}")
        return self.index(layer, channel)

    @staticmethod
    def parse(unit_id: str) -> tuple[str, str, int]:
        """`<model>/<layer>:<channel>` -> (model, layer, channel)."""
        try:
            rest, channel = str(unit_id).rsplit(":", 1)
            model, layer = rest.rsplit("/", 1)
            if not model or not layer:
                raise ValueError
            return model, layer, int(channel)
        except ValueError:
            raise InputError(f"unit id {unit_id!r}: expected '<model>/<layer>:<channel>'") from None


# ----------------------------------------------------------------------------------------------
# best buddies


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


# ----------------------------------------------------------------------------------------------
# concepts


def set_profiles(maps, *, mean=None, std=None) -> np.ndarray:
    """Activation profile of each set: its units' standardised maps, averaged over the set.

    Parameters
    ----------
    maps : (n_sets, n_models, n_images, H, W)
        Each set unit's maps on a small common set of images, at the common resolution.
    mean, std : (n_sets, n_models), optional
        Each unit's dataset mean and standard deviation (e.g. `CrossCorrelation.mean_a/std_a`);
        default: taken over `maps` itself. Zero std gives a zero map (with a warning).

    Returns
    -------
    (n_sets, n_images * H * W) float64
    """
    x = maps.detach().cpu().double().numpy() if isinstance(maps, torch.Tensor) else \
        np.asarray(maps, dtype=np.float64)
    if x.ndim != 5:
        raise InputError(f"maps: expected (n_sets, n_models, n_images, H, W), got {x.shape}")
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    mu = flat.mean(axis=2) if mean is None else np.asarray(mean, dtype=np.float64)
    sd = flat.std(axis=2) if std is None else np.asarray(std, dtype=np.float64)
    if mu.shape != x.shape[:2] or sd.shape != x.shape[:2]:
        raise InputError(f"mean/std: expected shape {x.shape[:2]}, got {mu.shape} and {sd.shape}")
    flat_sd = sd > 0
    if not flat_sd.all():
        warnings.warn(f"{int((~flat_sd).sum())} set units have zero variance; their maps count "
                      f"as 0",
                      RuntimeWarning, stacklevel=2)
    z = (flat - mu[..., None]) / np.where(flat_sd, sd, 1.0)[..., None]
    z[~flat_sd] = 0.0
    return z.mean(axis=1)


def cluster_sets(set_activation_profiles, n_concepts: int, seed: int = 0, *,
                 method: str = "average") -> np.ndarray:
    """Group Rosetta sets into concepts by the similarity of their activation profiles.

    Parameters
    ----------
    set_activation_profiles : (n_sets, n_features)
        E.g. `set_profiles(...)`: each set's mean standardised maps over a few images, flattened.
    n_concepts : int
        Number of concepts; capped at n_sets (with a warning).
    seed : int
        Seed of the k-means initialisation (`method="kmeans"`); average linkage needs none.
    method : "average" or "kmeans"
        "average" (default): agglomerative clustering, average linkage on the correlation distance
        1 - r between profiles; scale- and offset-free, so a set that fires weakly but on the
        same places joins its concept. "kmeans": k-means (n_init=10) on the profiles standardised
        and L2-normalised per row, for which Euclidean distance is a function of r.

    Returns
    -------
    (n_sets,) int64 labels in 0..n_concepts-1, numbered by first appearance (set 0 is concept 0).
    Constant profiles correlate 0 with everything (no NaN).
    """
    from scipy.cluster.hierarchy import cut_tree, linkage
    from scipy.spatial.distance import squareform

    x = set_activation_profiles
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = as_features(x, "set_activation_profiles", min_samples=0)
    n = x.shape[0]
    if method not in ("average", "kmeans"):
        raise InputError(f"method: expected 'average' or 'kmeans', got {method!r}")
    if int(n_concepts) < 1:
        raise InputError(f"n_concepts: expected a positive integer, got {n_concepts!r}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    n_clusters = int(n_concepts)
    if n_clusters > n:
        warnings.warn(f"n_concepts={n_concepts} exceeds the {n} sets; using {n}", stacklevel=2)
        n_clusters = n
    centred = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1, keepdims=True)
    z = np.divide(centred, norm, out=np.zeros_like(centred), where=norm > 0)
    if n_clusters == n or n == 1:
        labels = np.arange(n)
    elif method == "average":
        dist = np.clip(1.0 - z @ z.T, 0.0, 2.0)
        np.fill_diagonal(dist, 0.0)
        dist = (dist + dist.T) / 2  # exact symmetry for squareform
        tree = linkage(squareform(dist, checks=False), method="average")
        labels = cut_tree(tree, n_clusters=n_clusters).ravel()
    else:
        from sklearn.cluster import KMeans

        labels = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(z)
    # number concepts by first appearance so equal partitions get equal labels
    _, first = np.unique(labels, return_index=True)
    renumber = {int(labels[f]): i for i, f in enumerate(sorted(first))}
    return np.array([renumber[int(v)] for v in labels], dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# result


def _pair_key_str(pair) -> list[str]:
    return [str(pair[0]), str(pair[1])]


@dataclass
class RosettaResult:
    """Everything a Rosetta run found, with the settings that produced it.

    Attributes
    ----------
    models : model names, in set-unit order
    images : number of images used
    resolution : (H, W) common grid all maps were resized to
    units : {model: number of units tapped}
    pairs : {(model_a, model_b): [{"units": [id_a, id_b], "correlation": r}, ...]} sorted by r desc
    sets : [{"units": [id per model], "mean_correlation": r}, ...]
    concepts : [{"id": int, "sets": [set indices]}, ...]
    dead_units : {model: [unit ids with zero variance]}
    skipped : [{"item": ..., "reason": ...}, ...] images or layers left out, and why
    settings : {"mode", "k", "anchor", "min_correlation", "pairwise", ...}
    """

    models: list[str]
    images: int
    resolution: tuple[int, int]
    units: dict[str, int]
    pairs: dict[tuple[str, str], list[dict]] = field(default_factory=dict)
    sets: list[dict] = field(default_factory=list)
    concepts: list[dict] = field(default_factory=list)
    dead_units: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.resolution = tuple(int(v) for v in as_size(self.resolution))
        self.pairs = {tuple(k): [dict(p) for p in v] for k, v in self.pairs.items()}
        for key, items in self.pairs.items():
            if len(key) != 2:
                raise InputError(f"pairs: keys must be (model_a, model_b), got {key!r}")
            items.sort(key=lambda p: -p["correlation"])

    @staticmethod
    def pair_records(buddies: Sequence[tuple[str, str, float]]) -> list[dict]:
        """`label_buddies` output -> the `pairs` entries of one model pair."""
        return [{"units": [u, v], "correlation": float(r)} for u, v, r in buddies]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resolution"] = list(self.resolution)
        # JSON keys are strings and model specs contain ':' and '/': list the pairs instead
        d["pairs"] = [{"models": _pair_key_str(k), "buddies": v} for k, v in self.pairs.items()]
        return {"analysis": "rosetta", "version": 1, **d}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, s: str | dict) -> RosettaResult:
        d = json.loads(s) if isinstance(s, (str, bytes)) else dict(s)
        if d.pop("analysis", "rosetta") != "rosetta":
            raise InputError("from_json: not a Rosetta result")
        d.pop("version", None)
        d["pairs"] = {tuple(p["models"]): p["buddies"] for p in d.get("pairs", [])}
        d["resolution"] = tuple(d["resolution"])
        return cls(**d)
