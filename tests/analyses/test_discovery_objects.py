"""Object discovery with a model: the features it cuts (checked against hooks written here), where
its masks land in the image (against the preprocessing's known geometry), and masks that find
the planted objects of synthetic scenes."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import zoolens
from zoolens.analyses.discovery import mask_bbox, maskcut
from zoolens.analyses.discovery import ImageObjects, PatchLayer, discover, patch_layer
from zoolens.zoo.window import WindowProbe
from zoolens.errors import InputError, UnknownLayerError
from zoolens.sources import open_source

VIT = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2"

# Patch features that tell objects from background by construction: synthetic scenes paint objects
# in saturated colours on muted backgrounds, so a pixel is "object" when max - min of its RGB
# exceeds 0.45; a 4x4 patch's features are (object fraction, background fraction). Object patches
# point one way, background patches the other (cosine 0 < tau), boundary patches in between.
SATURATION_ZOO = '''
import torch
from torch import nn
from torchvision import transforms as T

class Saturation(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(4)
    def forward(self, x):
        sat = x.amax(1, keepdim=True) - x.amin(1, keepdim=True)
        obj = (sat > 0.45).float()
        return self.pool(torch.cat([obj, 1 - obj], 1))

def saturation(pretrained=True):
    return {"module": nn.Sequential(Saturation()),
            "preprocess": T.Compose([T.Resize((64, 64)), T.ToTensor()])}
'''


@pytest.fixture(scope="module")
def saturation_spec(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("satzoo") / "satzoo.py"
    path.write_text(textwrap.dedent(SATURATION_ZOO))
    return f"file:{path}:saturation"


@pytest.fixture(scope="module")
def vit():
    return zoolens.load(VIT, pretrained=False, device="cpu")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# --------------------------------------------------------------------------------------------------
# which features


def test_patch_layer_per_family(vit, tiny_cnn_file, hf_dinov2_dir, open_clip_tiny):
    # timm: the fused qkv Linear of the last block, its middle third (192 = embed dim)
    assert patch_layer(vit) == PatchLayer("blocks.1.attn.qkv", slice(192, 384), "keys")
    assert patch_layer(vit, "blocks.0") == PatchLayer("blocks.0.attn.qkv", slice(192, 384), "keys")
    assert patch_layer(vit, features="tokens") == PatchLayer("blocks.1", slice(0, 192), "tokens")
    name, channels, feature = patch_layer(vit)  # unpacks as (layer_name, channel_slice, kind)
    assert feature == "keys"
    # Hugging Face DINOv2 (transformers 5.x): a k_proj Linear of its own
    hf = zoolens.load(f"hf:{hf_dinov2_dir}", pretrained=True, device="cpu")
    assert patch_layer(hf) == PatchLayer("encoder.layer.1.attention.k_proj", slice(0, 32), "keys")
    # open_clip: nn.MultiheadAttention outputs no keys -> the block's output tokens
    oc = zoolens.load(f"open_clip:{open_clip_tiny}", pretrained=False, device="cpu")
    assert patch_layer(oc) == PatchLayer("visual.transformer.resblocks.1", slice(0, 64), "tokens")
    # a CNN: the last block's map
    cnn = zoolens.load(f"file:{tiny_cnn_file}:tiny_cnn", pretrained=False, device="cpu")
    assert patch_layer(cnn) == PatchLayer("3", slice(0, 16), "map")
    with pytest.raises(UnknownLayerError, match="blocks.9"):
        patch_layer(vit, "blocks.9")
    with pytest.raises(InputError, match="no patch grid"):
        patch_layer(vit, "head")
    with pytest.raises(InputError, match="features"):
        patch_layer(vit, features="values")


def test_open_clip_fallback_is_announced(open_clip_tiny):
    scenes = "synthetic:scenes?n=2&size=64&seed=0"
    model = zoolens.load(f"open_clip:{open_clip_tiny}", pretrained=False, device="cpu")
    with pytest.warns(UserWarning, match="MultiheadAttention"):
        res = discover(model, scenes, progress=False)
    assert res[0].feature == "tokens" and res[0].layer == "visual.transformer.resblocks.1"


def test_discover_cuts_the_keys_and_places_masks_in_the_crop(vit):
    """discover == maskcut on keys taken by a hook written here; masks at image size follow the
    geometry of timm's eval transform (Resize(35) + CenterCrop(32) for crop_pct 0.9 at 32 px)."""
    source = open_source("synthetic:scenes?n=5&size=64&seed=1")
    res = discover(vit, source, objects=3, batch_size=2, progress=False)
    images = [source.decode(i).image for i in range(len(source))]
    x = torch.stack([vit.preprocess(im) for im in images])
    captured = {}
    hook = vit.module.blocks[1].attn.qkv.register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("qkv", out.detach().clone()))
    with torch.no_grad():
        vit.module(x)
    hook.remove()
    keys = captured["qkv"][:, 1:, 192:384].numpy()  # drop the class token, keep k of q|k|v
    # Resize(35) maps 64 px to 35; CenterCrop(32) starts at round(1.5) = 2: input pixel c spans
    # image coordinates [(c + 2) * 64 / 35, (c + 3) * 64 / 35).
    a, b = 64 / 35, 2 * 64 / 35
    for r, k in zip(res, keys):
        ref = maskcut(k, (4, 4), 3, 0.2, 1e-5)
        assert len(r) == len(ref) >= 1
        np.testing.assert_array_equal(r.patch_masks, np.stack(ref.masks))
        np.testing.assert_allclose(r.ncut, [o.score for o in ref.objects])
        np.testing.assert_allclose(r.scores, 1 - r.ncut / 2)
        # PIL's bicubic kernel bends a ramp by a few hundredths of a pixel: 0.1 px is plenty
        np.testing.assert_allclose(r.window, (a, b, a, b), atol=0.1)
        assert (r.layer, r.feature, r.size, r.grid) == ("blocks.1.attn.qkv", "keys", (64, 64), (4, 4))
        # image pixel centre i + 0.5 -> input coordinate -> patch (8 input pixels each)
        u = (np.arange(64) + 0.5 - b) / a
        cell = np.where((u >= 0) & (u < 32), np.floor(u / 8), -1).astype(int)
        clear = np.abs(u / 8 - np.round(u / 8)) > 0.02  # pixels not on a patch boundary
        expected = r.patch_masks[:, np.maximum(cell, 0)][:, :, np.maximum(cell, 0)]
        expected &= (cell >= 0)[:, None] & (cell >= 0)[None, :]
        sure = clear[:, None] & clear[None, :]
        np.testing.assert_array_equal(r.masks[:, sure], expected[:, sure])
        # the crop spans image coordinates [3.66, 62.17): pixel centres 0.5..3.5 lie before it,
        # 62.5 and 63.5 after
        assert (cell[:4] == -1).all() and (cell[4:62] >= 0).all() and (cell[62:] == -1).all()
        assert not r.masks[:, :4].any() and not r.masks[:, :, -2:].any()
        for m, area, box in zip(r.masks, r.areas, r.boxes):
            assert area == m.sum() and tuple(box) == mask_bbox(m)


@pytest.mark.parametrize("transform, size, expected", [
    # (preprocessing, image (H, W), (ay, by, ax, bx)): image coordinate = a * input + b
    (T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor(), T.Normalize((.5, .4, .3), (.2, .3, .25))]),
     (48, 64), (4 / 3, 2 * 4 / 3, 4 / 3, 8 * 4 / 3)),  # 64x48 -> 48x36, crop at (8, 2)
    (T.Compose([T.Resize((32, 32)), T.ToTensor()]), (48, 64), (1.5, 0.0, 2.0, 0.0)),
    (T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                T.ToTensor()]), (100, 300), (100 / 224, 0.0, 100 / 224, 100.0)),
    (T.Compose([T.Resize(64), T.CenterCrop(64), T.ToTensor()]), (64, 64), (1.0, 0.0, 1.0, 0.0)),
])
def test_window_probe_recovers_resize_and_crop(transform, size, expected):
    out = transform(Image.new("RGB", (size[1], size[0])))
    window = WindowProbe(transform, tuple(out.shape[1:]))(size)
    assert window.fitted
    ay, by, ax, bx = expected
    # well within a tenth of an input pixel at either end of the input
    n = out.shape[1]
    np.testing.assert_allclose([window.ay * n, window.by, window.ax * n, window.bx],
                               [ay * n, by, ax * n, bx], atol=0.1 * max(ay, ax))


def test_window_probe_falls_back_to_stretching():
    """A preprocessing that is not an affine resampling (a gamma curve on the values) -> stretch."""
    transform = T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Lambda(lambda t: t ** 3)])
    window = WindowProbe(transform, (32, 32))((48, 64))
    assert not window.fitted and window.to_list() == [1.5, 0.0, 2.0, 0.0]


# --------------------------------------------------------------------------------------------------
# planted objects


def oracle_iou(gt: np.ndarray, patch: int) -> float:
    """IoU of the best mask the patch grid can draw (majority vote per patch) with the truth."""
    h, w = gt.shape
    frac = gt.reshape(h // patch, patch, w // patch, patch).mean(axis=(1, 3))
    return iou(np.kron(frac > 0.5, np.ones((patch, patch), dtype=bool)), gt)


def test_single_objects_match_ground_truth(saturation_spec):
    """One object per scene, 16x16 grid of 4 px patches on 64 px images.

    Threshold: the grid cannot draw a shape's outline, so the best patch mask (majority vote) of
    these scenes has IoU 0.73-0.90 with the truth; the cut decides the boundary patches by the
    graph, which costs a few more. A mask one patch ring too large or too small around the smallest
    main object (radius 12.8 px) would score about (12.8 - 4)^2 / 12.8^2 = 0.47, and the complement
    of the object under 0.2. So: IoU >= 0.6 and within 0.12 of the best the grid allows.
    """
    source = open_source("synthetic:scenes?n=8&size=64&seed=0&objects=1")
    res = discover(saturation_spec, source, objects=1, progress=False)
    assert [r.index for r in res] == list(range(8))
    for r in res:
        gt = source.scene(r.index).instances > 0
        assert len(r) == 1 and r.masks.shape == (1, 64, 64)
        got, best = iou(r.masks[0], gt), oracle_iou(gt, 4)
        assert got >= 0.6 and got >= best - 0.12, (r.index, got, best)


def test_several_objects_are_disjoint_and_distinct(saturation_spec):
    """Up to 3 objects per scene: masks never share a pixel, each falls on a different planted
    object. Small objects (radius 6-10 px, two to five 4 px patches across) lose more to the grid:
    IoU >= 0.4 with the object they fall on (one patch ring around a 10 px object: 0.36)."""
    source = open_source("synthetic:scenes?n=6&size=64&seed=0&objects=3")
    res = discover(saturation_spec, source, objects=3, batch_size=4, progress=False)
    several = 0
    for r in res:
        scene = source.scene(r.index)
        masks = r.masks
        assert masks.sum(axis=0).max() <= 1 and r.patch_masks.sum(axis=0).max() <= 1  # disjoint
        matched = []
        for m in masks:
            scores = [iou(m, scene.instances == k + 1) for k in range(len(scene.shapes))]
            matched.append(int(np.argmax(scores)))
            assert max(scores) >= 0.4, (r.index, scores)
        assert len(set(matched)) == len(matched), (r.index, matched)  # one object per mask
        several += len(r) >= 2
        assert np.all((r.scores > 0) & (r.scores <= 1))
    assert several >= 3  # the multi-object case is exercised


def test_bad_images_are_skipped_and_reported(saturation_spec, messy_dir):
    source = open_source(messy_dir)
    res = discover(saturation_spec, source, progress=False)
    assert [r.id for r in res] == source.ids
    skipped = [r for r in res if r.skipped]
    assert skipped and all(len(r) == 0 for r in skipped)
    for r in res:
        if not r.skipped:
            image = source.decode(r.index).image
            assert r.size == (image.height, image.width)
            assert r.masks.shape[1:] == r.size
            # Resize((64, 64)) stretches: the input window is the whole image
            np.testing.assert_allclose(r.window, (image.height / 64, 0, image.width / 64, 0),
                                       atol=0.05 * max(image.size) / 64)


def test_discover_visits_the_given_indices_in_order(saturation_spec):
    source = open_source("synthetic:scenes?n=5&size=64&seed=2")
    res = discover(saturation_spec, source, indices=[4, 1], progress=False)
    assert [r.index for r in res] == [4, 1]
    for r in res:
        assert r.id == source.ids[r.index] and r.size == (64, 64)


def test_image_objects_json_roundtrip(saturation_spec):
    res = discover(saturation_spec, "synthetic:scenes?n=2&size=64&seed=0&objects=3",
                   progress=False)
    for r in res:
        back = ImageObjects.from_json(r.to_json())
        np.testing.assert_array_equal(back.masks, r.masks)
        np.testing.assert_array_equal(back.boxes, r.boxes)
        assert (back.tau, back.objects, back.layer) == (r.tau, r.objects, r.layer)


def test_bad_arguments(saturation_spec):
    with pytest.raises(InputError, match="objects"):
        discover(saturation_spec, "synthetic:scenes?n=1&size=64", objects=0, progress=False)
    with pytest.raises(InputError, match="tau"):
        discover(saturation_spec, "synthetic:scenes?n=1&size=64", tau=1.5, progress=False)
    with pytest.raises(InputError, match="model"):
        discover(42, "synthetic:scenes?n=1&size=64", progress=False)
