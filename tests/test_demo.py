"""`zoolens demo` end to end on the committed demo zoo (a smaller run than the default)."""

from __future__ import annotations

import json

import pytest


def test_demo_runs_offline_and_scores_its_concepts(tmp_path):
    from zoolens.demo.run import run_demo
    from zoolens.demo.zoo import WEIGHTS_DIR

    if not (WEIGHTS_DIR / "generator.pt").exists():
        pytest.fail("the demo zoo's weights are missing; run scripts/train_demo_zoo.py")
    report = run_demo(tmp_path, images=16, progress=False)
    assert report == tmp_path / "report.html" and report.stat().st_size > 10_000
    demo = json.loads((tmp_path / "demo.json").read_text())
    assert set(demo["seconds"]) == {"rosetta", "compare", "probe", "discover", "total"}
    rosetta = json.loads((tmp_path / "rosetta" / "rosetta.json").read_text())
    assert rosetta["models"][0] == "generator" and rosetta["sets"]
    assert rosetta["concept_scores"] == demo["concept_scores"]
    for row in demo["concept_scores"]:
        assert row["best_match"] in row["scores"]
        assert row["iou"] == max(row["scores"].values()) and 0 <= row["iou"] <= 1
    assert 0 < demo["discovery"]["mean_best_iou"] <= 1
    html = report.read_text()
    for section in ("Rosetta", "probe", "discover"):
        assert section.lower() in html.lower()
