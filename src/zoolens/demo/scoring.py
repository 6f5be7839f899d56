"""Scoring mined concepts against ground-truth masks (synthetic scenes), NetDissect-style.

A concept's heatmap (its sets' standardised unit maps, averaged over sets and models) is
upsampled to each image, thresholded at one quantile over all its images (default: the top
20% of pixels), and compared with every ground-truth mask the scenes define: each shape, each
colour, the background, any object, and object edges. The score of a label is the dataset-level
IoU (intersections summed over images / unions summed), and each concept's best match is the
label with the highest IoU. A concept that means something has a clear best match; a random
one sits near the IoU of a random mask of the same area."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..sources.synthetic import Scene, SyntheticScenes

__all__ = ["ground_truth_masks", "score_heatmaps", "score_concepts"]


def ground_truth_masks(scene: Scene) -> dict[str, np.ndarray]:
    """Named boolean (H, W) masks of one scene: shape:<s>, color:<c>, background, object, edges."""
    inst = scene.instances
    masks = {f"shape:{s}": scene.shape_mask(s) for s in set(scene.shapes)}
    masks.update({f"color:{c}": scene.color_mask(c) for c in set(scene.colors)})
    masks["background"] = inst == 0
    masks["object"] = inst > 0
    edge = np.zeros_like(inst, dtype=bool)
    edge[1:, :] |= inst[1:, :] != inst[:-1, :]
    edge[:-1, :] |= inst[1:, :] != inst[:-1, :]
    edge[:, 1:] |= inst[:, 1:] != inst[:, :-1]
    edge[:, :-1] |= inst[:, 1:] != inst[:, :-1]
    grown = edge.copy()  # one pixel either side: edges are thin, maps are coarse
    grown[1:] |= edge[:-1]
    grown[:-1] |= edge[1:]
    grown[:, 1:] |= edge[:, :-1]
    grown[:, :-1] |= edge[:, 1:]
    masks["edges"] = grown
    return masks


def _upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(heat.astype(np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float64)


def score_heatmaps(heat: np.ndarray, scenes: list[Scene], quantile: float = 0.8) -> dict[str, float]:
    """heat: (n_images, h, w) for `scenes`; returns {label: dataset-level IoU}."""
    big = [_upsample(h, s.instances.shape) for h, s in zip(heat, scenes)]
    threshold = np.quantile(np.concatenate([b.ravel() for b in big]), quantile)
    inter: dict[str, float] = {}
    union: dict[str, float] = {}
    for b, scene in zip(big, scenes):
        pred = b > threshold
        for label, gt in ground_truth_masks(scene).items():
            inter[label] = inter.get(label, 0.0) + float((pred & gt).sum())
            union[label] = union.get(label, 0.0) + float((pred | gt).sum())
    return {label: inter[label] / union[label] for label in sorted(inter) if union[label] > 0}


def score_concepts(result, source: SyntheticScenes, out: str | Path, *,
                   quantile: float = 0.8) -> list[dict]:
    """Best ground-truth match of every concept of a Rosetta result written to `out`."""
    rows = []
    for concept in result.concepts:
        if "maps" not in concept:
            continue
        data = np.load(Path(out) / concept["maps"])
        heat = data["heat"].mean(axis=0)  # over models: (images, R, R)
        scenes = [source.scene(int(i)) for i in data["indices"]]
        scores = score_heatmaps(heat, scenes, quantile)
        best = max(scores, key=scores.get)
        rows.append({"concept": concept["id"], "best_match": best, "iou": round(scores[best], 4),
                     "runner_up": sorted(scores, key=scores.get)[-2] if len(scores) > 1 else None,
                     "scores": {k: round(v, 4) for k, v in scores.items()}})
    return rows
