"""Representation similarity between models, layer by layer.

- `cka`: linear CKA (Kornblith et al. 2019) exact and streaming, and the minibatch unbiased
  estimator (Nguyen et al. 2021), as functions on arrays and as mergeable accumulators;
- `mknn`: mutual k-NN alignment (Huh et al. 2024);
- `comparison`: the model-driving part, `compare(model_a, model_b, images)`: one sink per
  estimator, fed by the planner, a layer x layer `CompareResult` and its heatmap.
"""

from .cka import (CKAAccumulator, LayerCKA, LayerMinibatchCKA, MinibatchCKA, linear_cka,
                  unbiased_cka)
from .comparison import (FEATURES, METRICS, CompareResult, FlatCKASink, KNNSink, PooledCKASink,
                      compare, plot_matrix)
from .mknn import mutual_knn, mutual_knn_matrix

__all__ = ["compare", "CompareResult", "plot_matrix", "linear_cka", "CKAAccumulator", "LayerCKA",
           "unbiased_cka", "MinibatchCKA", "LayerMinibatchCKA", "mutual_knn", "mutual_knn_matrix",
           "PooledCKASink", "FlatCKASink", "KNNSink", "METRICS", "FEATURES"]
