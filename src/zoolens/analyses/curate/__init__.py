"""Curation and dataset comparison on embeddings: the steps DINOv2 used to build LVD-142M, as a
library, exact, in bounded memory and deterministic for a seed.

- `deduplicate` / `near_duplicate_pairs` / `reference_matches` (dedup.py): every pair above a
  cosine threshold, found exactly with cluster pruning; groups as connected components; one
  image kept per group; decontamination against a reference set.
- `kmeans` / `hierarchical_kmeans` (kmeans.py) and `balanced_sample` / `water_fill`
  (sample.py): ssl-data-curation's hierarchical k-means with resampling and the top-down
  water-filling sampler, seeded.
- `retrieve_nearest` / `retrieve_by_clusters` (retrieve.py): pool images close to a query set.
- `prototypes` (prototypes.py): k-means centroids, medoids and sizes.
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

from .compare import (PRDC, DatasetComparison, SharedPrototypes, compare_datasets,
                      feature_moments, frechet_distance, frechet_distance_from_moments, prdc,
                      shared_prototypes)
from .commands import (RETRIEVE_MODES, STEPS, CurateResult, DatasetsResult, datasets, dedup,
                       find_prototypes, retrieve, sample)
from .dedup import (KEEP_RULES, DedupResult, DuplicatePairs, ReferenceMatches,
                    cosine_error_bound, deduplicate, duplicate_groups, near_duplicate_pairs,
                    reference_matches)
from .kmeans import (HierarchicalKMeans, KMeansResult, assign_clusters, hierarchical_kmeans,
                     kmeans)
from .prototypes import Prototypes, medoids, prototypes
from .retrieve import ClusterRetrieval, Retrieval, retrieve_by_clusters, retrieve_nearest
from .sample import BalancedSample, balanced_sample, water_fill
from .features import ImageSet, default_layer, image_set
from .sheet import (contact_sheet, dedup_sheet, prototype_sheet, shared_prototype_sheet,
                    to_pil)

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
