"""Curation and dataset comparison on embeddings: the steps DINOv2 used to build LVD-142M, as a
library, exact, in bounded memory and deterministic for a seed.

- `deduplicate` / `near_duplicate_pairs` / `reference_matches` (duplicates.py): every pair above a
  cosine threshold, found exactly with cluster pruning; groups as connected components; one
  image kept per group; decontamination against a reference set.
- `kmeans` / `hierarchical_kmeans` (clustering.py) and `balanced_sample` / `water_fill`
  (sampling.py): ssl-data-curation's hierarchical k-means with resampling and the top-down
  water-filling sampler, seeded.
- `retrieve_nearest` / `retrieve_by_clusters` (retrieval.py): pool images close to a query set.
- `prototypes` (centroids.py): k-means centroids, medoids and sizes.
- `frechet_distance` / `prdc` / `shared_prototypes` / `compare_datasets` (compare.py).
- `contact_sheet` and the result sheets (sheet.py): PNG contact sheets.

Those functions take arrays (NumPy or torch, rows = images) and return dataclasses with
`to_dict()` / `to_json()`; they read no images and run no model. The commands (commands.py)
put them to work on images: `dedup`, `sample`, `retrieve`, `find_prototypes` (``zoolens curate
dedup|sample|retrieve|prototypes``) and `datasets` (``zoolens datasets compare``) embed the
images with one layer of one model through a feature store (features.py), run the array
function, and write ``curate.json`` / ``datasets.json``, CSVs of the ids to keep and a contact
sheet.
"""

from ..._lazy import lazy_exports

# each name is imported from its module on first use: dedup on NumPy embeddings never
# imports torch (`zoolens._lazy`)
_EXPORTS = {
    "PRDC": ".compare", "DatasetComparison": ".compare", "SharedPrototypes": ".compare",
    "compare_datasets": ".compare", "feature_moments": ".compare", "frechet_distance": ".compare",
    "frechet_distance_from_moments": ".compare", "prdc": ".compare",
    "shared_prototypes": ".compare",
    "RETRIEVE_MODES": ".commands", "STEPS": ".commands", "CurateResult": ".commands",
    "DatasetsResult": ".commands", "datasets": ".commands", "dedup": ".commands",
    "find_prototypes": ".commands", "retrieve": ".commands", "sample": ".commands",
    "KEEP_RULES": ".duplicates", "DedupResult": ".duplicates", "DuplicatePairs": ".duplicates",
    "ReferenceMatches": ".duplicates", "cosine_error_bound": ".duplicates", "deduplicate": ".duplicates",
    "duplicate_groups": ".duplicates", "near_duplicate_pairs": ".duplicates", "reference_matches": ".duplicates",
    "HierarchicalKMeans": ".clustering", "KMeansResult": ".clustering", "assign_clusters": ".clustering",
    "hierarchical_kmeans": ".clustering", "kmeans": ".clustering",
    "Prototypes": ".centroids", "medoids": ".centroids", "prototypes": ".centroids",
    "ClusterRetrieval": ".retrieval", "Retrieval": ".retrieval",
    "retrieve_by_clusters": ".retrieval", "retrieve_nearest": ".retrieval",
    "BalancedSample": ".sampling", "balanced_sample": ".sampling", "water_fill": ".sampling",
    "ImageSet": ".features", "default_layer": ".features", "image_set": ".features",
    "contact_sheet": ".sheet", "dedup_sheet": ".sheet", "prototype_sheet": ".sheet",
    "shared_prototype_sheet": ".sheet", "to_pil": ".sheet",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    # dedup
    "deduplicate", "near_duplicate_pairs", "reference_matches", "duplicate_groups",
    "cosine_error_bound", "DedupResult", "DuplicatePairs", "ReferenceMatches", "KEEP_RULES",
    # clustering and sampling
    "kmeans", "assign_clusters", "hierarchical_kmeans", "KMeansResult", "HierarchicalKMeans",
    "water_fill", "balanced_sample", "BalancedSample",
    # retrieval and prototypes
    "retrieve_nearest", "retrieve_by_clusters", "Retrieval", "ClusterRetrieval",
    "prototypes", "medoids", "Prototypes",
    # dataset comparison
    "frechet_distance", "frechet_distance_from_moments", "feature_moments", "prdc", "PRDC",
    "shared_prototypes", "SharedPrototypes", "compare_datasets", "DatasetComparison",
    # sheets
    "contact_sheet", "dedup_sheet", "prototype_sheet", "shared_prototype_sheet", "to_pil",
    # the commands: images in, files out
    "dedup", "sample", "retrieve", "find_prototypes", "datasets", "CurateResult",
    "DatasetsResult", "STEPS", "RETRIEVE_MODES", "ImageSet", "image_set", "default_layer",
]
