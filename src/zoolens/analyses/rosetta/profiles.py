"""Concepts: Rosetta sets grouped by where their units fire.

`set_profiles` standardises each set unit's maps on a few images and averages them over the set;
`cluster_sets` groups the profiles by average-linkage clustering on correlation distance."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..._validation import as_features
from ...errors import InputError

__all__ = ["set_profiles", "cluster_sets"]


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
