"""Out-of-distribution scores and metrics on arrays (OpenOOD's conventions).

Scores are confidences, higher = more in-distribution; `metrics` treats OOD as the positive
class. See `scores` and `metrics` for the definitions and the papers.

    conf_id = knn(train_feats, id_test_feats, k=50)
    conf_ood = knn(train_feats, ood_feats, k=50)
    metrics(conf_id, conf_ood).auroc
"""

from .metrics import OODMetrics, metrics
from .scores import (energy, feature_norm, knn, mahalanobis, max_logit, msp, negative_aware_norm,
                     vim)

__all__ = ["knn", "mahalanobis", "energy", "msp", "max_logit", "vim", "feature_norm",
           "negative_aware_norm", "metrics", "OODMetrics"]
