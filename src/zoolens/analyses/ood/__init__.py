"""Out-of-distribution detection (OpenOOD's conventions): scores and metrics on arrays, and the
analysis that runs them over a zoo's layers.

Scores are confidences, higher = more in-distribution; `metrics` treats OOD as the positive
class. See `scores` and `metrics` for the definitions and the papers.

    conf_id = knn(train_feats, id_test_feats, k=50)
    conf_ood = knn(train_feats, ood_feats, k=50)
    metrics(conf_id, conf_ood).auroc

`evaluate(models, train, id, ood, out=...)` scores every model, layer and method from feature
stores and picks the best choice and its deployment threshold (`evaluation`);
`score(out, images)` scores new images with that choice (`deploy`).
"""

from .deploy import OODScores, score
from .evaluation import (FEATURE_METHODS, LOGIT_METHODS, METHODS, OODResult, check_methods,
                         confidences, default_vim_dim, deployment_threshold, evaluate)
from .metrics import OODMetrics, metrics, roc_curve
from .scores import (energy, feature_norm, knn, mahalanobis, max_logit, msp, negative_aware_norm,
                     vim)

__all__ = ["knn", "mahalanobis", "energy", "msp", "max_logit", "vim", "feature_norm",
           "negative_aware_norm", "metrics", "roc_curve", "OODMetrics", "evaluate", "OODResult",
           "score", "OODScores", "confidences", "deployment_threshold", "default_vim_dim",
           "check_methods", "METHODS", "FEATURE_METHODS", "LOGIT_METHODS"]
