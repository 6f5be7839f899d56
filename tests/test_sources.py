"""Sources: order, labels, conversions, and every kind of bad input reported, never dropped."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

import zoolens
from zoolens.errors import InputError
from zoolens.sources import SyntheticScenes, open_source
from zoolens.sources.synthetic import render_scene

from conftest import MESSY_CONVERTED, MESSY_SKIPPED


def test_folder_order_labels_and_listing_skips(photo_dir, messy_dir):
    src = open_source(photo_dir)
    assert src.ids == ["cat/chelsea.jpg", "cup/coffee.jpg", "person/astronaut.jpg"]
    assert src.labels == ["cat", "cup", "person"]
    messy = open_source(messy_dir)
    assert messy.labels is None
    assert [s["id"] for s in messy.skipped_at_listing] == ["j_notes.txt"]
    assert "j_notes.txt" not in messy.ids


def test_natural_order(tmp_path):
    for name in ("img10.png", "img2.png", "img1.png"):
        Image.new("RGB", (16, 16)).save(tmp_path / name)
    assert open_source(tmp_path).ids == ["img1.png", "img2.png", "img10.png"]


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    decoded = open_source(tmp_path).decode(0).image
    assert decoded.size == (20, 40)


def test_every_bad_file_is_skipped_with_its_reason_and_the_run_goes_on(messy_dir, tiny_cnn_file,
                                                                       tmp_path):
    store = zoolens.extract(f"file:{tiny_cnn_file}:tiny_cnn", messy_dir, layers="3",
                            out=tmp_path / "s", pretrained=False, batch_size=3, num_workers=2,
                            progress=False)
    reasons = {s["id"]: s["reason"] for s in store.skipped}
    assert set(reasons) == MESSY_SKIPPED
    assert "truncated" in reasons["f_truncated.jpg"] or "decode" in reasons["f_truncated.jpg"]
    assert "empty" in reasons["g_empty.png"]
    assert "not an image" in reasons["h_fake.jpg"]
    assert "too small (1x1" in reasons["i_tiny.png"]
    assert "not an image file" in reasons["j_notes.txt"]
    notes = {n["id"]: n["note"] for n in store.manifest["notes"]}
    assert {k: v.split()[2] for k, v in notes.items()} == MESSY_CONVERTED
    good = {"a_good.jpg", "b_good.png", *MESSY_CONVERTED}
    assert set(store.valid_ids()) == good
    feats = store.features(store.models[0], "3")
    ok = store.valid
    assert np.abs(feats[ok]).sum(axis=1).min() > 0  # every good image has features
    assert not np.asarray(feats[~ok]).any()  # skipped rows stay zero


def test_alpha_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.save(tmp_path / "clear.png")
    decoded = open_source(tmp_path).decode(0)
    assert np.asarray(decoded.image).min() == 255 and "RGBA" in decoded.note


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(InputError, match="holds no images"):
        open_source(tmp_path)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="found 1 other file$"):
        open_source(tmp_path)
    with pytest.raises(InputError, match="no such file or folder"):
        open_source(tmp_path / "missing")


def test_csv_and_txt_lists(photo_dir, tmp_path):
    paths = sorted(photo_dir.rglob("*.jpg"))
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in paths))
    src = open_source(tmp_path / "list.csv")
    assert src.labels == ["cat", "cup", "person"] and len(src) == 3
    (tmp_path / "list.txt").write_text("\n".join(map(str, paths)))
    assert len(open_source(tmp_path / "list.txt")) == 3


def test_synthetic_scenes_are_deterministic_and_have_ground_truth():
    a, b = render_scene(5, size=48, seed=3), render_scene(5, size=48, seed=3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.instances, b.instances)
    assert not np.array_equal(a.image, render_scene(6, size=48, seed=3).image)
    src = SyntheticScenes(n=12, size=48, seed=3)
    assert len(src) == 12 and len(set(src.labels)) > 1
    for i in range(12):
        scene = src.scene(i)
        areas = [(scene.instances == k + 1).sum() for k in range(len(scene.shapes))]
        assert scene.label == scene.shapes[int(np.argmax(areas))]
        assert all(area > 0 for area in areas)
        # the object pixels carry the object's colour, not the background's
        rgb = scene.image[scene.instances == 1].mean(axis=0)
        from zoolens.sources.synthetic import COLORS
        assert np.abs(rgb - COLORS[scene.colors[0]]).max() < 40
    with pytest.raises(InputError, match="unknown synthetic source"):
        open_source("synthetic:clouds")


def test_tensor_batches(tmp_path, tiny_cnn_file):
    batch = np.random.default_rng(0).random((5, 3, 32, 32)).astype(np.float32)
    store = zoolens.extract(f"file:{tiny_cnn_file}:tiny_cnn", batch, layers="3", out=tmp_path,
                            pretrained=False, num_workers=0, progress=False)
    assert store.features(store.models[0], "3").shape == (5, 16)
    with pytest.raises(InputError, match="4D"):
        open_source(np.zeros((3, 32, 32)))
