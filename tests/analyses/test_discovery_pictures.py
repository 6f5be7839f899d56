"""CLS attention maps against each library's own attention weights; PCA colours against
`pca_rgb` on features hooked here, and against planted objects."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

import zoolens
from zoolens.analyses.discovery import pca_rgb
from zoolens.analyses.discovery import Visualization, visualize
from zoolens.errors import InputError
from zoolens.sources import open_source

SCENES = "synthetic:scenes?n=3&size=64&seed=0"


def _batch(model, source):
    return torch.stack([model.preprocess(source.decode(i).image) for i in range(len(source))])


@pytest.mark.parametrize("qk_norm", [False, True])
def test_timm_attention_equals_the_softmax_weights(qk_norm):
    """timm computes fused attention; switched to its plain path, the weights after softmax are
    the input of attn_drop: their class-token row over the patches is what we must return."""
    spec = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2" + \
        ("&qk_norm=true" if qk_norm else "")
    model = zoolens.load(spec, pretrained=False, device="cpu")
    if qk_norm:  # random LayerNorm weights, so the norms really change q and k
        torch.manual_seed(1)
        for mod in (model.module.blocks[-1].attn.q_norm, model.module.blocks[-1].attn.k_norm):
            mod.weight.data.uniform_(0.5, 2.0)
            mod.bias.data.normal_()
    source = open_source(SCENES)
    vis = visualize(model, source, kind="attention", batch_size=2, progress=False)
    attn = model.module.blocks[-1].attn
    attn.fused_attn = False
    got = {}
    hook = attn.attn_drop.register_forward_hook(lambda _m, inp, _o: got.__setitem__("w", inp[0]))
    with torch.no_grad():
        model.module(_batch(model, source))
    hook.remove()
    attn.fused_attn = True
    expected = got["w"][:, :, 0, 1:].reshape(3, 3, 4, 4).numpy()  # 1 class token, 4x4 patches
    assert vis.attention.shape == (3, 3, 4, 4) and vis.heads == 3
    np.testing.assert_allclose(vis.attention, expected, rtol=1e-5, atol=1e-7)
    assert (vis.layer, vis.feature) == ("blocks.1.attn", "cls_attention")


def test_hf_dinov2_registers_attention(hf_dinov2_dir):
    """Hugging Face's eager attention returns its weights; 1 class token + 4 registers precede
    the 4x4 patches and take part in the softmax."""
    model = zoolens.load(f"hf:{hf_dinov2_dir}", pretrained=True, device="cpu")
    source = open_source(SCENES)
    vis = visualize(model, source, kind="attention", progress=False)
    model.module.set_attn_implementation("eager")
    with torch.no_grad():
        out = model.module(pixel_values=_batch(model, source), output_attentions=True)
    expected = out.attentions[-1][:, :, 0, 5:].reshape(3, 2, 4, 4).numpy()
    np.testing.assert_allclose(vis.attention, expected, rtol=1e-5, atol=1e-7)
    assert vis.attention.sum(axis=(2, 3)).max() < 1.0  # the prefix tokens take a share


def test_open_clip_multihead_attention(open_clip_tiny):
    """nn.MultiheadAttention asked for its per-head weights on the inputs the block gives it."""
    model = zoolens.load(f"open_clip:{open_clip_tiny}", pretrained=False, device="cpu")
    source = open_source(SCENES)
    vis = visualize(model, source, kind="attention", progress=False)
    mha = model.module.visual.transformer.resblocks[-1].attn
    got = {}
    hook = mha.register_forward_pre_hook(lambda _m, args: got.__setitem__("x", args[0]))
    with torch.no_grad():
        model.forward(_batch(model, source))
        hook.remove()
        x = got["x"]
        _, w = mha(x, x, x, need_weights=True, average_attn_weights=False)
    expected = w[:, :, 0, 1:].reshape(3, 2, 4, 4).numpy()
    np.testing.assert_allclose(vis.attention, expected, rtol=1e-5, atol=1e-7)
    assert vis.layer == "visual.transformer.resblocks.1.attn"


def test_pca_equals_pca_rgb_on_hooked_features(tiny_cnn_file):
    model = zoolens.load(f"file:{tiny_cnn_file}:tiny_cnn", pretrained=False, device="cpu")
    source = open_source("synthetic:scenes?n=4&size=48&seed=3")
    vis = visualize(model, source, kind="pca", batch_size=3, progress=False)
    got = {}
    hook = model.module[3].register_forward_hook(lambda _m, _i, out: got.__setitem__("f", out))
    with torch.no_grad():
        model.forward(_batch(model, source))
    hook.remove()
    f = got["f"]  # (4, 16, 16, 16) map of the last block
    feats = f.flatten(2).transpose(1, 2).numpy()
    rgb, fg = pca_rgb(feats, (16, 16))
    np.testing.assert_allclose(vis.rgb, rgb, atol=1e-6)
    np.testing.assert_array_equal(vis.foreground, fg)
    assert (vis.layer, vis.feature, vis.grid) == ("3", "map", (16, 16))
    # default_transform(32) on 48 px: Resize(32) + CenterCrop(32) = a plain 1.5x downscale
    picture = vis.at_image(0)
    assert picture.shape == (48, 48, 3)
    np.testing.assert_array_equal(picture[::3, ::3], vis.rgb[0])  # 3 px per patch


def test_pca_foreground_is_the_planted_objects(tmp_path):
    """Features (f, 1 - f) per 4 px patch, f its fraction of saturated pixels: the first principal
    component is (1, -1) / sqrt(2), so the foreground (its minority side) is exactly the patches
    with f above the mean of f over all patches of all images. Those are the planted objects:
    patches clearly inside or outside an object (|fraction - 1/2| > 0.3) agree with the ground
    truth but for the few where a striped or noisy background is itself saturated."""
    path = tmp_path / "satzoo.py"
    path.write_text(textwrap.dedent('''
        import torch
        from torch import nn
        from torchvision import transforms as T

        class Saturation(nn.Module):
            def forward(self, x):
                obj = ((x.amax(1, keepdim=True) - x.amin(1, keepdim=True)) > 0.45).float()
                return nn.functional.avg_pool2d(torch.cat([obj, 1 - obj], 1), 4)

        def saturation():
            return {"module": nn.Sequential(Saturation()),
                    "preprocess": T.Compose([T.Resize((64, 64)), T.ToTensor()])}
    '''))
    source = open_source("synthetic:scenes?n=4&size=64&seed=0&objects=1")
    with pytest.warns(UserWarning, match="constant"):  # 2 feature dims: colours 2 and 3 are flat
        vis = visualize(f"file:{path}:saturation", source, kind="pca", progress=False)
    images = np.stack([np.asarray(source.decode(i).image, dtype=np.float32) / 255 for i in range(4)])
    saturated = (images.max(axis=-1) - images.min(axis=-1)) > 0.45
    f = saturated.reshape(4, 16, 4, 16, 4).mean(axis=(2, 4))
    np.testing.assert_array_equal(vis.foreground, f > f.mean())
    agree = total = 0
    for n in range(4):
        gt = (source.scene(n).instances > 0).reshape(16, 4, 16, 4).mean(axis=(1, 3))
        clear = np.abs(gt - 0.5) > 0.3
        agree += int((vis.foreground[n][clear] == (gt > 0.5)[clear]).sum())
        total += int(clear.sum())
    assert agree >= 0.97 * total, (agree, total)


def test_attention_maps_at_image_size_and_json():
    model = zoolens.load("timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2",
                         pretrained=False, device="cpu")
    vis = visualize(model, SCENES, kind="attention", progress=False)
    up = vis.at_image(1)
    assert up.shape == (3, 64, 64)
    # timm's crop (crop_pct 0.9) leaves the image's outer pixels outside the input: zero there
    assert (up[:, :, :3] == 0).all() and (up[:, 10:50, 10:50] > 0).all()
    back = Visualization.from_json(vis.to_json())
    np.testing.assert_allclose(back.attention, vis.attention)
    np.testing.assert_array_equal(back.at_image(1), up)


def test_errors(tiny_cnn_file):
    cnn = zoolens.load(f"file:{tiny_cnn_file}:tiny_cnn", pretrained=False, device="cpu")
    with pytest.raises(InputError, match="no attention module"):
        visualize(cnn, SCENES, kind="attention", progress=False)
    with pytest.raises(InputError, match="kind"):
        visualize(cnn, SCENES, kind="saliency", progress=False)
    vit = zoolens.load("timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2&class_token=false"
                       "&global_pool=avg", pretrained=False, device="cpu")
    with pytest.raises(InputError, match="class token"):
        visualize(vit, SCENES, kind="attention", progress=False)
