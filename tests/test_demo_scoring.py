"""Concept scoring against ground truth: a planted heatmap finds its label."""

from __future__ import annotations

import numpy as np

from zoolens.demo.scoring import ground_truth_masks, score_heatmaps
from zoolens.sources.synthetic import render_scene


def test_ground_truth_masks_partition_the_scene():
    scene = render_scene(3, size=48, seed=0)
    m = ground_truth_masks(scene)
    assert np.array_equal(m["object"], ~m["background"])
    shapes = sum(m[f"shape:{s}"].astype(int) for s in set(scene.shapes))
    assert np.array_equal(shapes > 0, m["object"])
    edges = m["edges"]  # a thin band on both sides of every object boundary
    assert (edges & m["object"]).any() and (edges & m["background"]).any()
    inst = np.pad(scene.instances, 2, mode="edge")
    for y, x in zip(*np.nonzero(edges)):  # each edge pixel sees two labels within 2 px
        assert len(np.unique(inst[y:y + 5, x:x + 5])) > 1
    interior = ~edges & m["object"]
    assert interior.any()  # and the band is thin enough to leave object interiors


def test_a_heatmap_equal_to_a_label_scores_it_best():
    scenes = [render_scene(i, size=48, seed=2) for i in range(12)]
    colour = scenes[0].colors[0]
    # the heatmap is exactly the colour mask (at image resolution): IoU 1 for that colour
    heat = np.stack([s.color_mask(colour).astype(float) for s in scenes])
    scores = score_heatmaps(heat, scenes, quantile=1 - np.mean(heat))
    assert max(scores, key=scores.get) == f"color:{colour}"
    assert scores[f"color:{colour}"] > 0.95
    noise = np.random.default_rng(0).random(heat.shape)
    assert max(score_heatmaps(noise, scenes).values()) < 0.5
