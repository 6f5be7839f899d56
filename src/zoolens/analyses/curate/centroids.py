"""Prototypes of a dataset: k-means centroids, the real image nearest each, and cluster sizes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from ._result import ResultMixin, _float_array, _int_array, array_field
from .clustering import BLOCK_BYTES, KMeansResult, kmeans

__all__ = ["Prototypes", "prototypes", "medoids"]


@dataclass
class Prototypes(ResultMixin):
    """k-means prototypes of a dataset, largest cluster first.

    Attributes
    ----------
    order : (k,) int64 cluster ids by decreasing size (ties: lower id); the order to show them in.
    sizes : (k,) int64 images per cluster (indexed by cluster id).
    medoids : (k,) int64 per cluster, the member nearest its centroid (-1 if empty).
    examples : (k, e) int64 per cluster, its e members nearest the centroid, medoid first
        (-1 pads clusters with fewer members).
    centroids : (k, d) float64.
    labels : (n,) int64 cluster of every image.
    spherical, seed : settings used.
    """

    order: np.ndarray = array_field(_int_array)
    sizes: np.ndarray = array_field(_int_array)
    medoids: np.ndarray = array_field(_int_array)
    examples: np.ndarray = array_field(_int_array)
    centroids: np.ndarray = array_field(_float_array)
    labels: np.ndarray = array_field(_int_array)
    spherical: bool = True
    seed: int | None = 0


def medoids(clusters: KMeansResult, n_examples: int = 1) -> np.ndarray:
    """(k, n_examples) int64: per cluster its members nearest the centroid (-1 pads).

    Nearness is the clustering's own: cosine for a spherical clustering, else Euclidean
    distance; ties go to the lower id.
    """
    if n_examples < 1:
        raise InputError(f"n_examples: expected >= 1, got {n_examples}")
    out = np.full((len(clusters.centroids), n_examples), -1, dtype=np.int64)
    for c, rows in enumerate(clusters.all_members()):  # nearest first
        take = rows[:n_examples]
        out[c, :len(take)] = take
    return out


def prototypes(x, n_clusters: int, *, spherical: bool = True, n_examples: int = 8,
               n_iter: int = 20, seed: int | None = 0,
               block_bytes: int = BLOCK_BYTES) -> Prototypes:
    """k-means prototypes of a dataset with their medoids (the real image nearest each).

    Parameters
    ----------
    x : (n, d) embeddings.
    n_clusters : k.
    spherical : cosine k-means (the default, as for retrieval and deduplication).
    n_examples : members kept per cluster for display, nearest the centroid first.
    n_iter, seed : the k-means (seeded: the same seed, the same prototypes).

    Returns
    -------
    Prototypes
    """
    km = kmeans(x, n_clusters, spherical=spherical, n_iter=n_iter, seed=seed,
                block_bytes=block_bytes)
    ex = medoids(km, n_examples)
    order = np.lexsort((np.arange(len(km.sizes)), -km.sizes))
    return Prototypes(order=order, sizes=km.sizes, medoids=ex[:, 0], examples=ex,
                      centroids=km.centroids, labels=km.labels, spherical=spherical, seed=seed)
