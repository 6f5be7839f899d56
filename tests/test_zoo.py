"""Every source adapter loads a real architecture (random or locally saved weights), and the
pooled features zoolens writes equal a manual forward pass with hooks written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import zoolens
from zoolens.errors import UnknownLayerError, UnknownModelError


def _photos(photo_dir):
    return sorted(photo_dir.rglob("*.jpg"))


def _manual_output(model, images, layer):
    """The raw output of `layer`, captured by a hook of our own."""
    captured = {}

    def hook(_m, _i, out):
        captured["out"] = (out[0] if isinstance(out, (tuple, list)) else out).detach().clone()

    x = torch.stack([model.preprocess(Image.open(p).convert("RGB")) for p in images])
    handle = dict(model.module.named_modules())[layer].register_forward_hook(hook)
    with torch.no_grad():
        model.forward(x)
    handle.remove()
    out = captured["out"]
    if out.ndim == 3 and out.shape[0] != len(images):  # sequence-first
        out = out.transpose(0, 1)
    return out


def _cases(tiny_cnn_file, open_clip_tiny, hf_dinov2_dir):
    # (spec, pretrained, layer, number of prefix tokens we know the architecture has)
    return [
        ("timm:resnet18", False, "layer3.1", None),
        ("timm:vit_tiny_patch16_224?img_size=64&reg_tokens=4", False, "blocks.1", 5),
        ("torchvision:resnet18", False, "layer2.1", None),
        (f"open_clip:{open_clip_tiny}", False, "visual.transformer.resblocks.1", 1),
        (f"hf:{hf_dinov2_dir}", True, "encoder.layer.1", 5),
        (f"file:{tiny_cnn_file}:tiny_cnn", False, "3", None),
    ]


@pytest.mark.parametrize("case", range(6))
def test_pooled_features_equal_manual_hooks(case, photo_dir, tiny_cnn_file, open_clip_tiny,
                                            hf_dinov2_dir, tmp_path):
    spec, pretrained, layer, prefix = _cases(tiny_cnn_file, open_clip_tiny, hf_dinov2_dir)[case]
    model = zoolens.load(spec, pretrained=pretrained, device="cpu")
    images = _photos(photo_dir)
    raw = _manual_output(model, images, layer)
    if prefix is None:  # a CNN map (B, C, H, W)
        expected_mean = raw.mean(dim=(2, 3))
    else:  # tokens (B, T, D): the mean over patch tokens, prefix tokens dropped
        expected_mean = raw[:, prefix:].mean(dim=1)
    store = zoolens.extract(model, [str(p) for p in images], layers=layer, out=tmp_path / "s",
                            pool="mean", dtype="float32", batch_size=2, num_workers=0,
                            progress=False)
    got = store.features(model.name, layer)
    np.testing.assert_allclose(got, expected_mean.numpy(), rtol=1e-4, atol=1e-5)
    if prefix is not None:
        store = zoolens.extract(model, [str(p) for p in images], layers=layer,
                                out=tmp_path / "cls", pool="cls", dtype="float32",
                                num_workers=0, progress=False)
        np.testing.assert_allclose(store.features(model.name, layer), raw[:, 0].numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_vit_with_registers_token_grid(photo_dir, tmp_path):
    """1 CLS + 4 registers ahead of a 4x4 grid: the full map is the patch tokens, row-major."""
    spec = "timm:vit_tiny_patch16_224?img_size=64&reg_tokens=4"
    model = zoolens.load(spec, pretrained=False, device="cpu")
    info = model.layer("blocks.0")
    assert (info.layout, info.prefix_tokens, info.grid, info.channels) == ("tokens", 5, (4, 4), 192)
    images = _photos(photo_dir)
    raw = _manual_output(model, images, "blocks.0")
    expected = raw[:, 5:].reshape(len(images), 4, 4, 192).permute(0, 3, 1, 2)
    store = zoolens.extract(model, [str(p) for p in images], layers="blocks.0", out=tmp_path,
                            pool="none", dtype="float32", num_workers=0, progress=False)
    got = store.features(spec, "blocks.0")
    assert got.shape == (3, 192, 4, 4)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_hf_registers_detected(hf_dinov2_dir):
    model = zoolens.load(f"hf:{hf_dinov2_dir}", device="cpu")
    info = model.layer("encoder.layer.0")
    assert (info.prefix_tokens, info.grid, info.channels) == (5, (4, 4), 32)
    assert model.blocks == ["encoder.layer.0", "encoder.layer.1"]


def test_inplace_ops_do_not_change_tapped_values(photo_dir, tmp_path):
    """torchvision's Bottleneck applies an in-place ReLU to bn1's output: the tap must keep
    the pre-ReLU values (negative means survive)."""
    model = zoolens.load("torchvision:resnet18", pretrained=False, device="cpu")
    images = _photos(photo_dir)
    captured = {}
    bn1 = dict(model.module.named_modules())["layer1.0.bn1"]
    with torch.no_grad():
        bn1.bias.fill_(-0.3)  # negative pre-activations, which the in-place ReLU would zero

    def hook(_m, _i, out):  # returns None: a hook's return value would replace the output
        captured["o"] = out.clone()

    handle = bn1.register_forward_hook(hook)
    x = torch.stack([model.preprocess(Image.open(p).convert("RGB")) for p in images])
    with torch.no_grad():
        model.forward(x)
    handle.remove()
    expected = captured["o"].mean(dim=(2, 3)).numpy()
    assert (expected < 0).any()  # else this test could not tell
    store = zoolens.extract(model, [str(p) for p in images], layers="layer1.0.bn1", out=tmp_path,
                            dtype="float32", num_workers=0, progress=False)
    np.testing.assert_allclose(store.features(model.name, "layer1.0.bn1"), expected,
                               rtol=1e-4, atol=1e-5)


def test_blocks_as_a_person_would_pick_them():
    resnet50 = zoolens.load("torchvision:resnet50", pretrained=False, device="cpu")
    assert resnet50.blocks == [f"layer{s}.{b}" for s, n in zip(range(1, 5), (3, 4, 6, 3))
                               for b in range(n)]
    vit = zoolens.load("timm:vit_tiny_patch16_224?img_size=32", pretrained=False, device="cpu")
    assert vit.blocks == [f"blocks.{i}" for i in range(12)]
    assert vit.select("blocks[-2:]") == ["blocks.10", "blocks.11"]
    assert vit.select("blocks.*.mlp.act")[:2] == ["blocks.0.mlp.act", "blocks.1.mlp.act"]
    assert vit.layer("blocks.0.mlp.act").channels == 4 * 192  # the GELU output, 4x the width


def test_local_weights_load_through_each_library(tmp_path, open_clip_tiny):
    """Weights saved locally load through timm's, torchvision's and open_clip's own paths."""
    from safetensors.torch import save_file

    for spec in ("timm:resnet18", "torchvision:resnet18", f"open_clip:{open_clip_tiny}"):
        # seed 1: not the seed-0 weights a load that ignored the file would draw
        reference = zoolens.load(spec, pretrained=False, device="cpu", seed=1).module
        state = {k: v.contiguous() for k, v in reference.state_dict().items()}
        if spec.startswith("timm"):
            path = tmp_path / "w.safetensors"
            save_file(state, path)
        else:
            path = tmp_path / "w.pt"
            torch.save(state, path)
        loaded = zoolens.load(spec, weights=str(path), device="cpu").module
        for (k, a), b in zip(reference.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(a, b), (spec, k)


@pytest.mark.parametrize("spec, needle", [
    ("resnet50", "has no source"),
    ("nope:resnet50", "unknown model source 'nope'"),
    ("timm:resnet_5000", "unknown timm model"),
    ("torchvision:resnet", "did you mean"),
    ("file:/does/not/exist.py:make", "no such file"),
])
def test_unknown_specs_name_the_input(spec, needle):
    with pytest.raises(UnknownModelError, match=needle):
        zoolens.load(spec, pretrained=False)


def test_file_factory_missing_lists_what_exists(tiny_cnn_file):
    with pytest.raises(UnknownModelError, match="have .*tiny_cnn"):
        zoolens.load(f"file:{tiny_cnn_file}:nope", pretrained=False)


def test_unknown_layer_lists_what_exists():
    model = zoolens.load("timm:vit_tiny_patch16_224?img_size=32", pretrained=False, device="cpu")
    with pytest.raises(UnknownLayerError) as err:
        model.select("blocks.40")
    msg = str(err.value)
    assert "blocks.40" in msg and "blocks.0..blocks.11" in msg and "timm:vit_tiny" in msg
