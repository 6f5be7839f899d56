"""The sink protocol, for every sink: fed the first half of a dataset's batches and merged with
one fed the second half, a sink gives the result of one fed all of them; a state saved and
loaded into a fresh sink gives the same result too.

The batches come from one real engine pass (a tiny ViT, synthetic scenes with a bad image), so
every sink sees the features, sizes, windows and images it would in a run."""

from __future__ import annotations

import functools
import operator

import numpy as np
import pytest
import torch

import zoolens
from zoolens.analyses.discovery import AttentionSink, DiscoverySink, PCASink, patch_layer
from zoolens.analyses.layerstats import LayerStatsSink
from zoolens.analyses.rosetta import CorrelationSink, MapsSink
from zoolens.analyses.similarity.comparison import (FlatCKASink, KNNSink, PooledCKASink,
                                                    _Sides)
from zoolens.attention import find_attention
from zoolens.engine import run
from zoolens.sinks import Need, Sink
from zoolens.sources import TensorSource
from zoolens.store import StoreWriter

VIT = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2"
BATCH = 4


def _stored_need(model) -> Need:  # what the store test writes
    return Need({model.name: {"blocks.0": {"mean", "cls"}, "blocks.1": {"none"}}})


class _Recorder(Sink):
    def __init__(self, need):
        self.need = need
        self.batches = []

    def update(self, batch):
        self.batches.append(batch)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return zoolens.load(VIT, pretrained=False, device="cpu")


@pytest.fixture(scope="module")
def source():
    """16 scenes, one of them too small to use (a skip inside the first half)."""
    scenes = zoolens.open_source("synthetic:scenes?n=16&size=32&seed=4")
    images = [scenes.decode(i).image for i in range(16)]
    images[2] = images[2].resize((4, 4))
    return TensorSource(images, labels=scenes.labels, ids=scenes.ids)


def _sinks(model, n):
    """name -> a function making a fresh sink, and one reading its result as arrays."""
    layers = {model.name: ["blocks.0", "blocks.1"]}
    info = {i.name: i for i in model.layers(layers[model.name])}
    sides = _Sides(model.name, ["blocks.0"], model.name, ["blocks.1"], "mean")
    flat = _Sides(model.name, ["blocks.0"], model.name, ["blocks.1"], "none")
    pl = patch_layer(model)
    attn = find_attention(model.module, "blocks.1")
    settings = {"grid": (4, 4), "input_size": (32, 32), "model": model.name, "layer": pl.layer,
                "feature": pl.feature, "tau": 0.2, "eps": 1e-5, "objects": 2}
    return {
        "correlation": (lambda: CorrelationSink(layers, 4, [(model.name, model.name, None)],
                                                track=True),
                        lambda s: [s.acc[(model.name, model.name, None)].correlation(),
                                   s.top[model.name].values, s.top[model.name].index]),
        "maps": (lambda: MapsSink(layers, (4, 4)),
                 lambda s: [s.result()[model.name], np.asarray(s.indices)]),
        "pooled_cka": (lambda: PooledCKASink(sides, [192], [192]), lambda s: [s.result()[0]]),
        "flat_cka": (lambda: FlatCKASink(flat, BATCH, n), lambda s: [s.result()[0]]),
        "mknn": (lambda: KNNSink(sides, 3), lambda s: [s.result()[0]]),
        "discovery": (lambda: DiscoverySink(model, pl, info["blocks.1"], settings),
                      lambda s: [r.patch_masks for r in s.result()] + [
                          np.asarray([r.index for r in s.result()])]),
        "pca": (lambda: PCASink(model, "blocks.1", slice(0, 192)),
                lambda s: list(s.result()) + [np.asarray(s.indices), np.asarray(s.windows)]),
        "attention": (lambda: AttentionSink(model, attn, 1, (4, 4)), lambda s: [s.result()]),
        "layerstats": (lambda: LayerStatsSink(layers, {model.name: {"blocks.0": 192,
                                                                    "blocks.1": 192}}),
                       lambda s: [x for m in s.result().values()
                                  for x in (m.mean, m.std, m.positive, m.min, m.max)]),
    }


@pytest.fixture(scope="module")
def batches(model, source):
    sinks = [make() for make, _ in _sinks(model, len(source)).values()]
    need = functools.reduce(operator.or_, [s.need for s in sinks], _stored_need(model))
    rec = _Recorder(need)
    run([model], source, need, [rec], batch_size=BATCH, num_workers=0, progress=False)
    assert any(b.skipped for b in rec.batches[:2])  # the bad image falls in the first half
    return rec.batches


@pytest.mark.parametrize("name", ["correlation", "maps", "pooled_cka", "flat_cka", "mknn",
                                  "discovery", "pca", "attention", "layerstats"])
def test_two_halves_merged_equal_the_whole(name, model, source, batches):
    make, read = _sinks(model, len(source))[name]
    whole, first, second = make(), make(), make()
    half = len(batches) // 2
    for b in batches:
        whole.update(b)
    for b in batches[:half]:
        first.update(b)
    for b in batches[half:]:
        second.update(b)
    merged = first.merge(second)
    for got, want in zip(read(merged), read(whole), strict=True):
        np.testing.assert_allclose(np.asarray(got, float), np.asarray(want, float), rtol=1e-9,
                                   atol=1e-12)
    again = make().load_state_dict(whole.state_dict())
    for got, want in zip(read(again), read(whole), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_store_writers_of_two_halves_make_the_store_of_the_whole(tmp_path, model, source,
                                                                 batches):
    infos = {model.name: {i.name: i for i in model.layers(["blocks.0", "blocks.1"])}}
    pools = {model.name: {"blocks.0": ["mean", "cls"], "blocks.1": ["none"]}}

    def writer(out):
        return StoreWriter(out, infos, pools, ids=source.ids, chunk_size=BATCH, dtype="float32")

    whole = writer(tmp_path / "whole")
    for b in batches:
        whole.update(b)
    whole.close()
    half = len(batches) // 2
    first = writer(tmp_path / "halves")
    for b in batches[:half]:
        first.update(b)
    second = writer(tmp_path / "halves")  # another process, the same store folder
    for b in batches[half:]:
        second.update(b)
    first.merge(second)
    first.close()
    a, b = whole.result(), first.result()
    assert a.complete and b.complete
    assert a.manifest["done_chunks"] == b.manifest["done_chunks"] == [0, 1, 2, 3]
    assert a.skipped == b.skipped and len(a.skipped) == 1
    for layer, pool in (("blocks.0", "mean"), ("blocks.0", "cls"), ("blocks.1", "none")):
        np.testing.assert_array_equal(a.features(model.name, layer, pool),
                                      b.features(model.name, layer, pool))
    # the rows are the engine's own reductions
    first_batch = batches[0]
    np.testing.assert_array_equal(a.features(model.name, "blocks.0", "cls")[first_batch.indices],
                                  first_batch.features[model.name]["blocks.0"]["cls"].numpy())


@pytest.mark.parametrize("name", ["correlation", "maps", "pooled_cka", "flat_cka", "mknn",
                                  "discovery", "pca", "attention", "layerstats"])
def test_fresh_is_an_empty_twin(name, model, source, batches):
    """`fresh()` (what a backend's workers feed) is the sink as made, whatever this one holds."""
    make, read = _sinks(model, len(source))[name]
    fed = make()
    for b in batches:
        fed.update(b)
    twin, new = fed.fresh(), make()
    assert type(twin) is type(fed) and twin is not fed
    for b in batches:
        twin.update(b)
        new.update(b)
    for got, want in zip(read(twin), read(new), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
