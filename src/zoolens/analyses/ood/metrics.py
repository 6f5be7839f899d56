"""OOD detection metrics with OpenOOD's definitions (``openood/evaluators/metrics.py``, v1.5).

Inputs are confidences (higher = more in-distribution), as every `scores` function returns.
The choices, each as OpenOOD's ``auc_and_fpr_recall`` makes it:

- **OOD is the positive class** ("following convention in ML we treat OOD as positive"): the
  ROC curve and FPR@95 rank samples by ``-conf``. The k-NN paper's code (Sun et al. 2022) and
  OpenOOD v1.0 used the opposite convention (ID positive, FPR of OOD at 95% TPR of ID); their
  FPR@95 numbers are not comparable with these. AUROC is the same either way.
- **FPR@95** = the share of ID samples flagged as OOD at the first threshold (walking from the
  most OOD-looking score down) at which at least 95% of OOD samples are flagged:
  ``fpr[argmax(tpr >= 0.95)]`` on the ROC curve. A sample is flagged when ``-conf >= t``, so
  tied scores are flagged together. One difference on purpose: OpenOOD calls
  ``sklearn.metrics.roc_curve`` with its default ``drop_intermediate=True``, which removes ROC
  points lying inside straight runs of the curve; when the first point reaching 95% is such a
  point (possible only with a run of equal steps of tied ID and OOD scores), OpenOOD reports the
  FPR of a later threshold. Here every distinct threshold is kept, which is the definition.
- **AUROC**: trapezoidal area under the ROC curve from (0, 0), i.e. the probability that an OOD
  sample scores below an ID one, ties counting one half (equal to ``roc_auc_score``).
- **AUPR-In**: ID positive, ranked by ``conf``; **AUPR-Out**: OOD positive, ranked by
  ``-conf``. Both are the *trapezoidal* area (``sklearn.metrics.auc(recall, precision)``) under
  the precision-recall curve of ``precision_recall_curve``: one point per distinct threshold
  plus the end point (recall 0, precision 1). This is not average precision (a step sum), and it
  is higher than AP when the curve has few points.

All counts are exact integers; areas are summed in float64.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from ..._validation import as_features
from ...errors import InputError

__all__ = ["OODMetrics", "metrics", "roc_curve"]


@dataclass(frozen=True)
class OODMetrics:
    """AUROC, AUPR-In, AUPR-Out and FPR at `recall` TPR on OOD (OOD positive; module notes).

    All values are fractions in [0, 1] (OpenOOD prints them times 100).
    """

    auroc: float
    aupr_in: float
    aupr_out: float
    fpr: float
    recall: float
    n_id: int
    n_ood: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, s: str) -> "OODMetrics":
        return cls(**json.loads(s))


def _scores(x, name: str) -> np.ndarray:
    arr = as_features(x, name, ndim=1)
    return arr.astype(np.float64, copy=False)


def _counts_at_thresholds(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tps, fps): positives and negatives with score >= t for each distinct score t, from the
    highest t down (a sample is predicted positive when its score reaches the threshold)."""
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(len(pos), dtype=np.int64), np.zeros(len(neg), np.int64)])
    order = np.argsort(-scores, kind="stable")
    scores, is_pos = scores[order], is_pos[order]
    # Last position of each run of equal scores: tied samples cross the threshold together.
    last = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), len(scores) - 1]
    tps = np.cumsum(is_pos)[last]
    return tps, last + 1 - tps


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def _aupr(pos: np.ndarray, neg: np.ndarray) -> float:
    """Trapezoidal area under the precision-recall curve, with the (recall 0, precision 1) end
    point, as ``auc(recall, precision)`` of ``precision_recall_curve`` computes it."""
    tps, fps = _counts_at_thresholds(pos, neg)
    recall = np.r_[0.0, tps / len(pos)]
    precision = np.r_[1.0, tps / (tps + fps)]
    return _trapezoid(recall, precision)


def roc_curve(conf_id, conf_ood) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve `metrics` integrates, OOD positive: (fpr, tpr), each (n_thresholds + 1,),
    from (0, 0); fpr = share of ID flagged, tpr = share of OOD flagged, a sample being flagged
    when ``-conf >= t``, for every distinct t from the most OOD-looking score down."""
    s_id = _scores(conf_id, "conf_id")
    s_ood = _scores(conf_ood, "conf_ood")
    tps, fps = _counts_at_thresholds(-s_ood, -s_id)
    return np.r_[0.0, fps / len(s_id)], np.r_[0.0, tps / len(s_ood)]


def metrics(conf_id, conf_ood, *, recall: float = 0.95) -> OODMetrics:
    """OpenOOD's AUROC, AUPR-In, AUPR-Out and FPR@95 of ID vs OOD confidences.

    Which class is positive, which threshold FPR@95 takes and how AUPR is integrated are stated
    in the module notes: OOD positive (ranked by -conf) for the ROC curve, FPR@95 and AUPR-Out;
    ID positive (ranked by conf) for AUPR-In; trapezoidal AUPR with the (0, 1) end point.

    Args:
        conf_id: (n_id,) confidences of in-distribution samples (higher = more ID).
        conf_ood: (n_ood,) confidences of out-of-distribution samples.
        recall: the TPR on OOD at which the FPR is read (0.95 for FPR@95).

    Returns:
        `OODMetrics`. Tied and constant scores are fine: all scores equal gives AUROC 0.5,
        FPR 1.0 and AUPR = (1 + prevalence) / 2.
    """
    s_id = _scores(conf_id, "conf_id")
    s_ood = _scores(conf_ood, "conf_ood")
    r = float(recall)
    if not (0.0 < r <= 1.0 and math.isfinite(r)):
        raise InputError(f"recall: expected a number in (0, 1], got {recall!r}")

    # ROC with OOD positive, ranked by -conf; the curve starts at (0, 0) as sklearn's does.
    fpr, tpr = roc_curve(s_id, s_ood)
    # The first threshold catching >= recall of OOD; tpr ends at 1, so one always exists.
    fpr_at = float(fpr[np.argmax(tpr >= r)])
    return OODMetrics(auroc=_trapezoid(fpr, tpr), aupr_in=_aupr(s_id, s_ood),
                      aupr_out=_aupr(-s_ood, -s_id), fpr=fpr_at, recall=r, n_id=len(s_id),
                      n_ood=len(s_ood))
