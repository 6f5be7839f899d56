"""The planner: one pass for the sinks' merged needs, a feature store read instead of running the
models when it holds them (counted: zero forward_calls), a store written on the way, checkpoints
any sink can resume from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zoolens
import zoolens.engine
import zoolens.plan
from zoolens.analyses.similarity import compare
from zoolens.engine import RunSummary

from conftest import synthetic

VIT = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2"


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = zoolens.load(VIT, pretrained=False, device="cpu")
    model.layers()  # the dry run describing the layers, done before forward_calls are counted
    return model


def test_a_store_that_holds_the_need_is_read_with_no_forward(tmp_path, vit, forward_calls):
    images = synthetic(12, 32)
    kw = dict(layers_a="blocks", metric="cka", batch_size=4, num_workers=0, progress=False)
    first = compare(vit, vit, images, store=tmp_path / "feats", **kw)
    assert sum(forward_calls) == 12 and (tmp_path / "feats" / "manifest.json").exists()
    forward_calls.clear()
    second = compare(vit, vit, images, store=tmp_path / "feats", **kw)
    assert forward_calls == []  # read from the store the first run wrote
    np.testing.assert_allclose(second.array, first.array, atol=2e-3)  # float16 on disk
    third = compare(vit, vit, images, store=tmp_path / "feats", **kw)
    np.testing.assert_array_equal(third.array, second.array)
    # a store extracted by `zoolens extract` serves too
    store = zoolens.extract(vit, images, layers="blocks", out=tmp_path / "x", batch_size=4,
                            num_workers=0, progress=False, dtype="float32")
    forward_calls.clear()
    fourth = compare(vit, vit, images, store=store.path, **kw)
    assert forward_calls == [] and np.abs(fourth.array - first.array).max() < 1e-6


def test_a_store_of_other_images_or_weights_is_not_read(tmp_path, vit, forward_calls):
    kw = dict(layers_a="blocks", batch_size=4, num_workers=0, progress=False)
    compare(vit, vit, synthetic(8, 32), store=tmp_path / "feats", **kw)
    forward_calls.clear()
    compare(vit, vit, "synthetic:scenes?n=8&size=32&seed=1", store=tmp_path / "feats", **kw)
    assert sum(forward_calls) == 8  # other images: the models run (and the store is left as it is)
    other = zoolens.load(VIT, pretrained=False, device="cpu")
    with torch.no_grad():
        for p in other.module.parameters():
            p.add_(0.1)
    other.layers()  # its weights fingerprint tells the store these are other weights
    forward_calls.clear()
    compare(other, other, synthetic(8, 32), store=tmp_path / "feats", **kw)
    assert sum(forward_calls) == 8


def test_checkpoints_resume_any_sink(tmp_path, vit, monkeypatch):
    from zoolens.analyses.layerstats import LayerStatsSink

    source = zoolens.open_source(synthetic(10, 32))
    layers = {vit.name: ["blocks.0", "blocks.1"]}
    channels = {vit.name: {"blocks.0": 192, "blocks.1": 192}}
    whole = LayerStatsSink(layers, channels)
    zoolens.plan.run([vit], source, [whole], batch_size=2, num_workers=0, progress=False)

    real, calls = zoolens.engine._forward, []

    def flaky(*args, **kw):  # the 5th batch never finishes: 8 images are done
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(zoolens.engine, "_forward", flaky)
    ckpt = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        zoolens.plan.run([vit], source, [LayerStatsSink(layers, channels)], checkpoint=ckpt,
                         key="k", every=4, batch_size=2, num_workers=0, progress=False)
    assert torch.load(ckpt, weights_only=False)["done"] == list(range(8))  # saved at 4 and 8
    monkeypatch.setattr(zoolens.engine, "_forward", real)
    resumed = LayerStatsSink(layers, channels)
    summary = zoolens.plan.run([vit], source, [resumed], checkpoint=ckpt, key="k", every=4,
                               batch_size=2, num_workers=0, progress=False)
    assert isinstance(summary, RunSummary) and summary.images == 2  # only 8 and 9 were left
    assert resumed.images == whole.images == 10
    for key, mo in whole.moments.items():
        np.testing.assert_allclose(resumed.moments[key].mean, mo.mean, rtol=1e-12)
        np.testing.assert_allclose(resumed.moments[key].std, mo.std, rtol=1e-9)
    # another key (other settings): the checkpoint is not used
    fresh = LayerStatsSink(layers, channels)
    summary = zoolens.plan.run([vit], source, [fresh], checkpoint=ckpt, key="other", every=4,
                               batch_size=2, num_workers=0, progress=False)
    assert summary.images == 10
