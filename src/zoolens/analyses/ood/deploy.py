"""Scoring new images with the choice an `evaluate()` run made.

`score(ood_dir, images)` reloads the best (model, layer, method) of ``ood_dir/ood.json`` (the
model from its spec, checked against the weights fingerprint the run recorded), extracts that
one layer of `images`, and scores it against the run's stored training features: confidences
on the same scale as the run's, and the run's deployment threshold. An image with confidence
below the threshold is flagged out of distribution.

    scores = zoolens.analyses.ood.score("ood_run", "new_images/")
    scores.flagged        # (n,) bool: True = out of distribution
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ... import plan
from ...errors import InputError
from ...sources import open_source
from ...store import Store
from ...zoo.model import Model
from ...zoo.registry import load
from .evaluation import OODResult, _head, _labels, _read, confidences

__all__ = ["score", "OODScores"]


@dataclass
class OODScores:
    """Confidences of new images under an `evaluate()` run's best choice.

    Attributes:
        ids: the images that could be used, in source order.
        confidence: (n,) float64, higher = more in-distribution.
        flagged: (n,) bool, ``confidence < threshold``: out of distribution.
        threshold: the run's deployment threshold (it kept `keep` of its ID test images).
        model, layer, method: the choice scored with.
        keep: the share of ID test images the threshold kept in the run.
        skipped: ``{"index", "id", "reason"}`` of images that could not be used.
    """

    ids: list[str]
    confidence: np.ndarray
    flagged: np.ndarray
    threshold: float
    model: str
    layer: str
    method: str
    keep: float = 0.95
    skipped: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"model": self.model, "layer": self.layer, "method": self.method,
                "threshold": self.threshold, "keep": self.keep,
                "images": [{"id": i, "confidence": float(c), "flagged": bool(f)}
                           for i, c, f in zip(self.ids, self.confidence, self.flagged)],
                "skipped": self.skipped}


def score(ood_dir: str | Path, images, *, model: Model | str | None = None,
          store: str | Path | None = None, batch_size: int = 32, device=None,
          num_workers: int | None = None, progress: bool = True) -> OODScores:
    """Score `images` with the best (model, layer, method) of the `evaluate()` run in `ood_dir`.

    Args:
        ood_dir: the run's output folder (``ood.json`` and ``features/``).
        images: anything `zoolens.open_source` takes (a folder, a CSV, paths, a tensor batch).
        model: the run's model, loaded (a `Model` or a spec); default: loaded from the spec the
            run recorded (the same pretrained setting and seed). Its weights must be the ones
            the run used (their fingerprint is checked).
        store: a folder to keep the new images' features in (a feature store), so scoring
            them again runs no model; default: a temporary folder.
        batch_size, device, num_workers, progress: extraction settings.

    Returns:
        `OODScores`; ``flagged`` marks the images below the run's threshold.
    """
    ood_dir = Path(ood_dir)
    path = ood_dir / "ood.json"
    if not path.is_file():
        raise InputError(f"{str(ood_dir)!r} holds no ood.json; run `zoolens ood ... --out "
                         f"{ood_dir}` (or zoolens.analyses.ood.ood(..., out=...)) first")
    result = OODResult.from_json(path.read_text())
    best, s = result.best, result.settings
    if not best:
        raise InputError(f"{path}: the run scored nothing, so there is no choice to score with")
    name, layer, method = best["model"], best["layer"], best["method"]
    record = s["weights"][name]
    if model is None or isinstance(model, str):
        spec = s["specs"][name] if model is None else model
        model = load(spec, pretrained=record["pretrained"], device=device, name=name,
                     seed=record["seed"])
    if model.weights_fingerprint() != record["weights_fingerprint"]:
        was = record["weights_fingerprint"][:19]
        raise InputError(f"{model.name}: its weights ({model.weights_fingerprint()[:19]}...) are "
                         f"not those {ood_dir} was scored with ({was}..., spec "
                         f"{record['spec']}, seed {record['seed']}); pass model= loaded with "
                         "the run's weights")
    train = Store(ood_dir / s["stores"][name]["train"])
    n_train = int(train.valid.sum())
    source = open_source(images)
    with tempfile.TemporaryDirectory(prefix="zoolens-ood-") as tmp:
        new = plan.extract([model], source, {model.name: {layer: ["mean"]}},
                           Path(store) if store is not None else Path(tmp),
                           batch_size=batch_size, dtype=s.get("dtype", "float16"),
                           num_workers=num_workers, device=device, progress=progress)
        x = np.array(_read(new, model.name, layer))  # a copy: the folder may go away
        ids, skipped = new.valid_ids(), list(new.skipped)
    if not len(x):
        raise InputError(f"images {str(images)!r}: no usable image (all skipped: "
                         f"{skipped[0]['reason'] if skipped else 'none listed'})")
    needs_train = method in ("knn", "mahalanobis", "rmds", "vim")
    conf = confidences(method, [x], train=_read(train, name, layer) if needs_train else None,
                       labels=_labels(train) if s["train_classes"][name] > 1 else None,
                       k=min(s["k"], n_train), head=_head(model) if method == "vim" else None,
                       dim=s["vim_dim"].get(name), device=device)[0]
    t = float(best["threshold"])
    return OODScores(ids=ids, confidence=conf, flagged=conf < t, threshold=t, model=name,
                     layer=layer, method=method, keep=float(best.get("keep", 0.95)),
                     skipped=skipped)
