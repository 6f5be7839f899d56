"""The feature store: resumable after an interruption, identical files, clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

import zoolens
import zoolens.engine
from zoolens.errors import InputError

from conftest import synthetic

SPEC = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2"


def _extract(out, **kw):
    return zoolens.extract(SPEC, synthetic(20, 32), layers="blocks", out=out, pretrained=False,
                           batch_size=4, chunk_size=8, num_workers=0, progress=False,
                           dtype="float32", **kw)


def _model():
    import torch

    torch.manual_seed(0)
    return zoolens.load(SPEC, pretrained=False, device="cpu")


def test_resume_after_interruption_gives_identical_files(tmp_path, monkeypatch):
    model = _model()
    full = zoolens.extract(model, synthetic(20, 32), layers="blocks", out=tmp_path / "full",
                           batch_size=4, chunk_size=8, num_workers=0, progress=False)
    real_forward = zoolens.engine._forward
    calls = {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # batch 4 = the second half of chunk 1
            raise KeyboardInterrupt
        return real_forward(*args, **kw)

    monkeypatch.setattr(zoolens.engine, "_forward", flaky)
    with pytest.raises(KeyboardInterrupt):
        zoolens.extract(model, synthetic(20, 32), layers="blocks", out=tmp_path / "cut",
                        batch_size=4, chunk_size=8, num_workers=0, progress=False)
    partial = zoolens.open_store(tmp_path / "cut")
    assert partial.manifest["done_chunks"] == [0] and not partial.complete
    assert partial.valid.tolist() == [True] * 8 + [False] * 12
    np.testing.assert_array_equal(partial.features(model.name, "blocks.1")[:8],
                                  full.features(model.name, "blocks.1")[:8])

    calls["n"] = -100  # no more interruptions; count the batches the resumed run needs
    resumed = zoolens.extract(model, synthetic(20, 32), layers="blocks", out=tmp_path / "cut",
                              batch_size=4, chunk_size=8, num_workers=0, progress=False)
    assert calls["n"] == -100 + 3  # 12 images left = 3 batches; chunk 0 was not redone
    assert resumed.complete and resumed.valid.all()
    for layer in ("blocks.0", "blocks.1"):
        a = (tmp_path / "full" / full.info(model.name, layer)["file"]).read_bytes()
        b = (tmp_path / "cut" / resumed.info(model.name, layer)["file"]).read_bytes()
        assert a == b


def test_store_refuses_other_settings_and_reads_back_memmapped(tmp_path):
    store = _extract(tmp_path)
    arr = store.features(SPEC, "blocks.0")
    assert isinstance(arr, np.memmap) and arr.shape == (20, 192) and arr.dtype == np.float32
    assert store.labels and len(store.ids) == 20
    with pytest.raises(InputError, match="holds another extraction"):
        zoolens.extract(SPEC, synthetic(20, 32), layers="blocks", out=tmp_path, pretrained=False,
                        batch_size=4, chunk_size=8, num_workers=0, progress=False, pool="cls")
    again = _extract(tmp_path)  # same settings: nothing left to do
    assert again.complete
    with pytest.raises(InputError, match="no layer 'blocks.9'"):
        store.features(SPEC, "blocks.9")
    with pytest.raises(InputError, match="no zoolens store"):
        zoolens.open_store(tmp_path / "nowhere")


def test_float16_and_full_maps(tmp_path):
    store = zoolens.extract(SPEC, synthetic(6, 32), layers="blocks.1", maps="blocks.0",
                            out=tmp_path, pretrained=False, num_workers=0, progress=False)
    assert store.features(SPEC, "blocks.1").dtype == np.float16
    assert store.features(SPEC, "blocks.0").shape == (6, 192, 4, 4)
    assert store.info(SPEC, "blocks.0")["pool"] == "none"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["config"]["models"][SPEC]["pretrained"] is False


def test_memory_does_not_hold_activations_of_all_images(tmp_path):
    """The writer's resident state is independent of the number of images: rows go to disk."""
    import tracemalloc

    peaks = []
    for n in (8, 40):
        tracemalloc.start()
        zoolens.extract(SPEC, synthetic(n, 32), layers="blocks", maps="blocks.1",
                        out=tmp_path / str(n), pretrained=False, batch_size=4, num_workers=0,
                        progress=False, dtype="float32")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] * 1.5, peaks


def test_random_weights_are_the_same_every_run_and_a_resume_refuses_others(tmp_path):
    """Issue: two `--no-pretrained` runs gave different features, and a resume mixed them."""
    a = _extract(tmp_path / "a")
    b = _extract(tmp_path / "b")
    np.testing.assert_array_equal(a.features(SPEC, "blocks.1"), b.features(SPEC, "blocks.1"))
    record = a.config["models"][SPEC]
    assert record["seed"] == 0 and record["weights_fingerprint"].startswith("sha256:")
    # an interrupted store resumed with other random weights is refused, naming the weights
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest["done_chunks"], manifest["complete"] = [0], False
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    other = zoolens.load(SPEC, pretrained=False, device="cpu", seed=1)
    with pytest.raises(InputError, match="other weights.*seed 0 then, 1 now"):
        zoolens.extract(other, synthetic(20, 32), layers="blocks", out=tmp_path / "a",
                        batch_size=4, chunk_size=8, num_workers=0, progress=False,
                        dtype="float32")


def test_an_image_replaced_under_its_name_is_computed_again(tmp_path, photo_dir):
    import shutil

    from PIL import Image

    folder = tmp_path / "photos"
    shutil.copytree(photo_dir, folder)
    kw = dict(layers="blocks.1", batch_size=1, chunk_size=1, num_workers=0, progress=False,
              dtype="float32", pretrained=False)
    first = zoolens.extract(SPEC, folder, out=tmp_path / "s", **kw)
    before = np.array(first.features(SPEC, "blocks.1"))
    target = folder / "cup" / "coffee.jpg"  # the same name, other pixels, other size
    Image.open(folder / "cat" / "chelsea.jpg").transpose(Image.FLIP_LEFT_RIGHT).save(target)
    again = zoolens.extract(SPEC, folder, out=tmp_path / "s", **kw)
    fresh = zoolens.extract(SPEC, folder, out=tmp_path / "fresh", **kw)
    after = np.array(again.features(SPEC, "blocks.1"))
    row = again.ids.index("cup/coffee.jpg")
    assert np.abs(after[row] - before[row]).max() > 1e-3  # recomputed from the new pixels
    np.testing.assert_array_equal(after, np.array(fresh.features(SPEC, "blocks.1")))
    assert again.fingerprints == fresh.fingerprints


def test_decoded_sizes_are_kept_and_replayed(tmp_path):
    """A store keeps each image's decoded (height, width), and its replay hands them to sinks
    as a live pass does (a sink deciding by resolution works from the store)."""
    from PIL import Image

    from zoolens.sinks import Need

    root = tmp_path / "imgs"
    root.mkdir()
    shapes = {"a.png": (30, 40), "b.png": (70, 50), "c.png": (20, 33)}  # (height, width)
    for name, (h, w) in shapes.items():
        Image.new("RGB", (w, h), (h, w, 7)).save(root / name)
    (root / "bad.png").write_bytes(b"not an image")
    store = zoolens.extract(SPEC, root, layers="blocks.1", out=tmp_path / "s", pretrained=False,
                            batch_size=2, num_workers=0, progress=False)
    expected = [shapes.get(i, (0, 0)) for i in store.ids]
    assert store.sizes.tolist() == [list(e) for e in expected] and store.sizes.dtype == np.int32
    live = []

    class Sizes(zoolens.Sink):
        def __init__(self):
            self.need = Need({SPEC: {"blocks.1": {"mean"}}})

        def update(self, batch):
            live.extend(batch.sizes)

    from zoolens import plan

    plan.run([_model()], zoolens.open_source(root), [Sizes()], num_workers=0, progress=False)
    replayed = [s for b in store.batches(Sizes().need, batch_size=2) for s in b.sizes]
    assert live == replayed == [shapes[i] for i in store.ids if i in shapes]

    # a store written before sizes were kept: no sizes, and resuming it does not make some up
    (tmp_path / "s" / "sizes.npy").unlink()
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest.update(done_chunks=[], complete=False)
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    old = zoolens.extract(SPEC, root, layers="blocks.1", out=tmp_path / "s", pretrained=False,
                          batch_size=2, num_workers=0, progress=False)
    assert old.complete and old.sizes is None
    assert all(b.sizes == [] for b in old.batches(Sizes().need))
