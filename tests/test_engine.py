"""The engine: one pass, per-image facts in every batch, a drawing model run first like any
other, the forward output and module inputs as taps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import zoolens
from zoolens.engine import plan_batches, run
from zoolens.sinks import Need, Sink
from zoolens.sources import TensorSource
from zoolens.sources.generated import GeneratedImages
from zoolens.taps import OUTPUT, PENULTIMATE


class Keep(Sink):
    def __init__(self, need):
        self.need, self.batches = need, []

    def update(self, batch):
        self.batches.append(batch)


def _photos():
    from skimage import data

    sizes = [(40, 56), (64, 48), (33, 33)]  # (H, W), none square but one
    return [Image.fromarray(data.astronaut()).resize((w, h)) for h, w in sizes]


def test_batches_carry_sizes_windows_images_and_skips():
    model = zoolens.load("timm:resnet18", pretrained=False, device="cpu")
    photos = _photos() + [Image.new("RGB", (3, 3))]  # the last is too small: skipped
    source = TensorSource(photos)
    sink = Keep(Need({model.name: {"layer1": {"mean"}}}, images=True, windows=True))
    summary = run([model], source, sink.need, [sink], indices=[3, 2, 0, 1], batch_size=2,
                  num_workers=0, progress=False)
    assert [b.indices for b in sink.batches] == [[2], [0, 1]]  # the given order, 3 skipped
    assert sink.batches[0].skipped[0]["index"] == 3 and summary.skipped == sink.batches[0].skipped
    assert summary.images == 3 and summary.forwards == 2
    for b in sink.batches:
        for k, i in enumerate(b.indices):
            w, h = photos[i].size
            assert b.sizes[k] == (h, w)
            np.testing.assert_array_equal(b.images[k], np.asarray(photos[i]))
            # timm's eval transform: resize the shorter side to 224 / crop_pct, centre crop 224
            win = b.windows[model.name][k]
            scale = min(h, w) / (224 / model.adapter.meta["data_config"]["crop_pct"])
            assert win.ay == pytest.approx(scale, rel=0.02) and win.ax == pytest.approx(scale, rel=0.02)
            assert win.by == pytest.approx((h - 224 * scale) / 2, abs=0.6)
            assert win.bx == pytest.approx((w - 224 * scale) / 2, abs=0.6)


def test_output_tap_is_the_forward_and_features_equal_manual_forward():
    torch.manual_seed(0)
    model = zoolens.load("timm:resnet18", pretrained=False, device="cpu")
    photos = _photos()
    sink = Keep(Need({model.name: {OUTPUT: {"mean"}, "layer4": {"none", "mean"}}}))
    run([model], TensorSource(photos), sink.need, [sink], batch_size=3, num_workers=0,
        progress=False)
    x = torch.stack([model.preprocess(p) for p in photos])
    with torch.no_grad():
        logits = model.module(x)
        maps = model.module.forward_features(x)
    (b,) = sink.batches
    torch.testing.assert_close(b.features[model.name][OUTPUT]["mean"], logits)
    torch.testing.assert_close(b.features[model.name]["layer4"]["none"], maps)
    torch.testing.assert_close(b.features[model.name]["layer4"]["mean"], maps.mean((2, 3)))
    assert model.layer(OUTPUT).channels == 1000 and model.layer(OUTPUT).layout == "vector"


GEN_ZOO = '''
import torch
from torch import nn

class Gen(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc = nn.Linear(8, 3 * 16 * 16)
        self.act = nn.Tanh()
    def forward(self, z):
        return self.act(self.fc(z)).view(-1, 3, 16, 16)

def generator(pretrained=True):
    return {"module": Gen(), "latent_shape": (8,), "output_range": (-1, 1)}
'''


def test_a_drawing_model_runs_first_and_the_others_see_what_it_drew(tmp_path):
    (tmp_path / "gen.py").write_text(GEN_ZOO)
    gen = zoolens.load(f"file:{tmp_path / 'gen.py'}:generator", device="cpu")
    torch.manual_seed(0)
    viewer = zoolens.load("timm:resnet18", pretrained=False, device="cpu")
    source = GeneratedImages(gen, n=5, seed=7)
    sink = Keep(Need({gen.name: {"act": {"none"}}, viewer.name: {"layer1": {"mean"}}},
                     images=True, windows=True))
    summary = run([viewer], source, sink.need, [sink], batch_size=3, num_workers=0,
                  progress=False)
    assert summary.forwards == 2 * 2  # generator and viewer, two batches
    z = source.latents(range(5))
    with torch.no_grad():
        drawn = gen.to_images(gen.forward(z))
        x = torch.stack([viewer.preprocess(im) for im in drawn])
        feats = viewer.module.layer1(viewer.module.maxpool(viewer.module.act1(
            viewer.module.bn1(viewer.module.conv1(x))))).mean((2, 3))
    got = torch.cat([b.features[viewer.name]["layer1"]["mean"] for b in sink.batches])
    torch.testing.assert_close(got, feats)
    taps = torch.cat([b.features[gen.name]["act"]["none"] for b in sink.batches])
    with torch.no_grad():
        torch.testing.assert_close(taps, torch.tanh(gen.module.fc(z)))  # (B, 768): a vector
    images = [im for b in sink.batches for im in b.images]
    for im, ref in zip(images, drawn):
        np.testing.assert_array_equal(im, np.asarray(ref))
    assert all(b.sizes == [(16, 16)] * len(b) for b in sink.batches)
    assert set(sink.batches[0].windows) == {viewer.name}


def test_plan_batches_never_straddle_a_chunk():
    assert plan_batches(range(10), 4, chunk_size=6) == [[0, 1, 2, 3], [4, 5], [6, 7, 8, 9]]
    assert plan_batches([5, 1, 2], 2) == [[5, 1], [2]]


@pytest.mark.parametrize("spec, head", [("timm:resnet18", "fc"),
                                        ("timm:vit_tiny_patch16_224?img_size=32&patch_size=8"
                                         "&depth=1", "head"),
                                        ("torchvision:resnet18", "fc")])
def test_a_classifier_head_gives_logits_and_its_input_the_penultimate_features(spec, head):
    model = zoolens.load(spec, pretrained=False, device="cpu")
    assert model.is_classifier and model.head == head
    photos = _photos()
    sink = Keep(Need({model.name: {OUTPUT: {"mean"}, PENULTIMATE: {"mean"},
                                   head: {"input:none"}}}))
    run([model], TensorSource(photos), sink.need, [sink], batch_size=3, num_workers=0,
        progress=False)
    (b,) = sink.batches
    penultimate = b.features[model.name][PENULTIMATE]["mean"]
    torch.testing.assert_close(penultimate, b.features[model.name][head]["input:none"])
    assert [i.name for i in model.layers()][-2:] == [PENULTIMATE, OUTPUT]
    fc = dict(model.module.named_modules())[head]
    with torch.no_grad():
        torch.testing.assert_close(fc(penultimate), b.features[model.name][OUTPUT]["mean"])
    assert penultimate.shape == (3, fc.in_features)
    headless = zoolens.load("timm:resnet18?num_classes=0", pretrained=False, device="cpu")
    assert not headless.is_classifier and headless.head is None


def test_an_hf_image_classifier_keeps_its_head(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=8,
                                    num_labels=3, architectures=["ViTForImageClassification"])
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path)
    model = zoolens.load(f"hf:{tmp_path}", device="cpu")
    assert model.is_classifier and model.head == "classifier"
    photos = _photos()
    sink = Keep(Need({model.name: {OUTPUT: {"mean"}}}))
    run([model], TensorSource(photos), sink.need, [sink], num_workers=0, progress=False)
    x = torch.stack([model.preprocess(p) for p in photos])
    with torch.no_grad():
        torch.testing.assert_close(sink.batches[0].features[model.name][OUTPUT]["mean"],
                                   model.module(pixel_values=x).logits)
