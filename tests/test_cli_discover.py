"""`zoolens discover` and `zoolens visualize`: the files they write hold what the library returns."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

import zoolens
from zoolens.analyses.discovery import mask_bbox
from zoolens.analyses.discovery import discover
from zoolens.analyses.discovery import visualize
from zoolens.cli import app

runner = CliRunner()
VIT = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2"
SCENES = "synthetic:scenes?n=4&size=64&seed=0&objects=3"


def _random_vit():
    """The command's model: the same random weights (timm draws them from torch's generator)."""
    torch.manual_seed(0)
    return zoolens.load(VIT, pretrained=False, device="cpu")


def test_discover_writes_masks_overlays_and_json(tmp_path):
    out = tmp_path / "d"
    torch.manual_seed(0)
    res = runner.invoke(app, ["discover", "--model", VIT, "--images", SCENES, "--out", str(out),
                              "--objects", "3", "--tau", "0.2", "--no-pretrained", "--workers",
                              "0", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert json.loads((out / "discover.json").read_text()) == summary
    assert (summary["layer"], summary["feature"], summary["tau"], summary["objects"]) == \
        ("blocks.1.attn.qkv", "keys", 0.2, 3)
    assert summary["complete"] and summary["skipped"] == []
    expected = discover(_random_vit(), SCENES, progress=False)
    assert [e["id"] for e in summary["images"]] == [r.id for r in expected]
    for entry, ref in zip(summary["images"], expected):
        assert len(entry["masks"]) == len(ref) and entry["size"] == [64, 64]
        overlay = np.asarray(Image.open(out / entry["overlay"]))
        assert overlay.shape == (64, 64, 3)
        for k, m in enumerate(entry["masks"]):
            png = np.asarray(Image.open(out / m["file"]))
            assert set(np.unique(png)) <= {0, 255}
            mask = png == 255
            np.testing.assert_array_equal(mask, ref.masks[k])
            assert m["area"] == int(mask.sum()) and tuple(m["bbox"]) == mask_bbox(mask)
            assert abs(m["score"] - (1 - m["ncut"] / 2)) < 1e-12
    assert any(len(e["masks"]) for e in summary["images"])


def test_discover_skips_bad_files_and_keeps_names_safe(tmp_path, messy_dir, photo_dir,
                                                       tiny_cnn_file):
    spec = f"file:{tiny_cnn_file}:tiny_cnn"
    out = tmp_path / "messy"
    res = runner.invoke(app, ["discover", "-m", spec, "-i", str(messy_dir), "-o", str(out),
                              "--no-pretrained", "--workers", "0"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "discover.json").read_text())
    assert summary["feature"] == "map" and summary["layer"] == "3"
    skipped = {s["id"] for s in summary["skipped"]}
    assert {"f_truncated.jpg", "g_empty.png", "h_fake.jpg", "i_tiny.png"} <= skipped
    assert len(summary["images"]) == 5
    # ids with folders ('cat/chelsea.jpg') become flat, unique file names inside DIR
    out = tmp_path / "photos"
    res = runner.invoke(app, ["discover", "-m", spec, "-i", str(photo_dir), "-o", str(out),
                              "--no-pretrained", "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    files = [m["file"] for e in summary["images"] for m in e["masks"]] + \
        [e["overlay"] for e in summary["images"]]
    assert files and all(f.count("/") == 1 and (out / f).is_file() for f in files)
    assert len(set(files)) == len(files)
    for e in summary["images"]:
        assert "/" in e["id"]  # class subfolders
        h, w = e["size"]
        for m in e["masks"]:
            assert np.asarray(Image.open(out / m["file"])).shape == (h, w)


def test_discover_errors_are_one_line(tmp_path):
    res = runner.invoke(app, ["discover", "-m", VIT, "-i", SCENES, "-o", str(tmp_path),
                              "--no-pretrained", "--layer", "blocks.7", "--workers", "0"])
    assert res.exit_code == 2 and "unknown layer 'blocks.7'" in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_visualize_pca_and_attention(tmp_path):
    for kind in ("pca", "attention"):
        out = tmp_path / kind
        torch.manual_seed(0)
        res = runner.invoke(app, ["visualize", "-m", VIT, "-i", SCENES, "-o", str(out),
                                  "--kind", kind, "--no-pretrained", "--workers", "0", "--json"])
        assert res.exit_code == 0, res.output
        summary = json.loads(res.stdout)
        assert json.loads((out / "visualize.json").read_text()) == summary
        ref = visualize(_random_vit(), SCENES, kind=kind, progress=False)
        arrays = np.load(out / "visualize.npz")
        assert list(arrays["ids"]) == ref.ids
        if kind == "pca":
            assert summary["layer"] == "blocks.1" and summary["feature"] == "tokens"
            np.testing.assert_allclose(arrays["rgb"], ref.rgb, atol=1e-6)
            np.testing.assert_array_equal(arrays["foreground"], ref.foreground)
            panels = 2
        else:
            assert summary["layer"] == "blocks.1.attn" and summary["heads"] == 3
            np.testing.assert_allclose(arrays["attention"], ref.attention, rtol=1e-5)
            panels = 1 + 3
        for e in summary["images"]:
            png = np.asarray(Image.open(out / e["file"]))
            assert png.shape == (64, 64 * panels, 3)
        if kind == "pca":  # the second panel is the PCA picture at image size
            png = np.asarray(Image.open(out / summary["images"][0]["file"]))
            np.testing.assert_array_equal(png[:, 64:], np.round(ref.at_image(0) * 255))


def test_visualize_attention_needs_a_vit(tmp_path, tiny_cnn_file):
    res = runner.invoke(app, ["visualize", "-m", f"file:{tiny_cnn_file}:tiny_cnn", "-i", SCENES,
                              "-o", str(tmp_path), "--kind", "attention", "--no-pretrained",
                              "--workers", "0"])
    assert res.exit_code == 2 and "no attention module" in " ".join(res.output.split())
