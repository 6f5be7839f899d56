"""Frozen-feature evaluation, one protocol per module (as DINOv2's eval code):

- `knn`: the DINO weighted k-NN rule;
- `linear`: a grid of linear heads trained in one pass, chosen on a validation split;
- `logme`: the LogME evidence (exact log-determinant);
- `zeroshot`: class-name prompts for image-text models;
- `evaluation`: the model-driving part, `probe(models, train, test)`: features extracted once
  into a store per model and split, every method reads them, a leaderboard and curves.
"""

from .evaluation import ACCURACY_METHODS, METHODS, PROBE_POOLS, ProbeResult, plot_curves, probe
from .knn import KNNProbe, evaluate_knn, knn_classify, knn_scores, top_k_accuracy
from .linear import LinearProbe
from .logme import logme
from .zeroshot import DEFAULT_TEMPLATES, is_image_text, zeroshot_classifier, zeroshot_scores

__all__ = ["probe", "ProbeResult", "plot_curves", "knn_classify", "knn_scores", "evaluate_knn",
           "top_k_accuracy", "KNNProbe", "LinearProbe", "logme", "zeroshot_classifier",
           "zeroshot_scores", "is_image_text", "DEFAULT_TEMPLATES", "METHODS", "PROBE_POOLS",
           "ACCURACY_METHODS"]
