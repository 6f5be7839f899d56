"""`zoolens demo` end to end on the committed demo zoo (a smaller run than the default): its
scores are recomputed here from the files it wrote, and must beat what chance would give."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from zoolens.demo.run import run_demo
    from zoolens.demo.zoo import WEIGHTS_DIR

    if not (WEIGHTS_DIR / "generator.pt").exists():
        pytest.fail("the demo zoo's weights are missing; run scripts/train_demo_zoo.py")
    out = tmp_path_factory.mktemp("demo")
    report = run_demo(out, images=16, progress=False)
    return out, report, json.loads((out / "demo.json").read_text())


def test_demo_runs_offline_and_writes_every_analysis(demo):
    out, report, summary = demo
    assert report == out / "report.html" and report.stat().st_size > 10_000
    assert set(summary["seconds"]) == {"rosetta", "compare", "probe", "discover", "ood",
                                       "total"}
    rosetta = json.loads((out / "rosetta" / "rosetta.json").read_text())
    assert rosetta["models"][0] == "generator" and rosetta["sets"]
    html = report.read_text()
    for section in ("Rosetta", "probe", "discover", "Out-of-distribution"):
        assert section.lower() in html.lower()


def test_concepts_match_their_scenes_better_than_shuffled_scenes(demo):
    """A concept's heatmaps scored against the ground truth of the images they were drawn on,
    and against other images' ground truth: a concept that means something loses its match."""
    from zoolens.demo.run import _SEEDS
    from zoolens.demo.scoring import score_heatmaps
    from zoolens.sources.synthetic import SyntheticScenes

    out, _, summary = demo
    scenes = SyntheticScenes(n=16, size=64, seed=_SEEDS["rosetta"])
    rosetta = json.loads((out / "rosetta" / "rosetta.json").read_text())
    gains = []
    for concept, row in zip(rosetta["concepts"], summary["concept_scores"]):
        data = np.load(out / "rosetta" / concept["maps"])
        heat = data["heat"].mean(axis=0)
        own = [scenes.scene(int(i)) for i in data["indices"]]
        assert score_heatmaps(heat, own)[row["best_match"]] == pytest.approx(row["iou"], abs=1e-4)
        shifted = own[1:] + own[:1]  # each heatmap against another image's scene
        gains.append(row["iou"] - score_heatmaps(heat, shifted).get(row["best_match"], 0.0))
    assert max(gains) > 0.15, gains


def test_discovered_masks_beat_the_whole_image_on_the_objects(demo):
    """Best IoU per image, recomputed from the mask PNGs and the scenes' instance maps; the
    whole image as the mask (its IoU with an object is the object's share of the image) is
    the baseline a discovery must beat."""
    from zoolens.demo.run import _SEEDS
    from zoolens.sources.synthetic import SyntheticScenes

    out, _, summary = demo
    found = json.loads((out / "discover" / "discover.json").read_text())
    scenes = SyntheticScenes(n=len(found["images"]), size=64, seed=_SEEDS["discover"])
    best, baseline = [], []
    for entry in found["images"]:
        inst = scenes.scene(entry["index"]).instances
        objects = [inst == k for k in range(1, int(inst.max()) + 1)]
        masks = [np.asarray(Image.open(out / "discover" / m["file"])) > 127 for m in entry["masks"]]
        ious = [(m & o).sum() / (m | o).sum() for m in masks for o in objects]
        best.append(max(ious, default=0.0))
        baseline.append(max(o.mean() for o in objects))
    assert summary["discovery"]["best_iou_per_image"] == pytest.approx(best, abs=1e-4)
    assert np.mean(best) > np.mean(baseline) + 0.2, (np.mean(best), np.mean(baseline))


def test_ood_scores_are_recomputed_and_photographs_are_told_apart(demo):
    """Per model, the best layer and method by mean AUROC, recomputed from ood.json's rows;
    photographs (far from any scene) are told apart more easily than scenes with unseen shapes
    (near out-of-distribution)."""
    out, _, summary = demo
    data = json.loads((out / "ood" / "ood.json").read_text())
    pytest.importorskip("skimage")
    assert list(data["settings"]["ood"]) == ["new_shapes", "new_scenes", "photos"]
    means: dict = {}
    for r in data["results"]:
        means.setdefault((r["model"], r["layer"], r["method"]), {})[r["ood"]] = r["auroc"]
    for model, best in summary["ood"]["best"].items():
        mine = {k: v for k, v in means.items() if k[0] == model}
        top = max(mine, key=lambda k: np.mean(list(mine[k].values())))
        assert best["mean_auroc"] == pytest.approx(np.mean(list(mine[top].values())), abs=1e-4)
        assert best["auroc"] == pytest.approx(mine[(model, best["layer"], best["method"])],
                                               abs=1e-4)
        # far OOD is told apart by some layer and method, and more easily than near OOD
        assert max(v["photos"] for v in mine.values()) > 0.9, model
        assert best["auroc"]["photos"] > best["auroc"]["new_shapes"], (model, best)
    assert summary["ood"]["best"]["classifier"]["mean_auroc"] > 0.6
