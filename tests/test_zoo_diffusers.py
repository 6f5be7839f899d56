"""A diffusion UNet as a zoo member: the image noised to timestep t with fixed noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zoolens
from zoolens.errors import UnknownModelError

from conftest import synthetic


def test_unet_block_features_equal_a_manual_noised_forward(diffusers_unet_dir, tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    spec = f"diffusers:{diffusers_unet_dir}?t=250&seed=3"
    model = zoolens.load(spec, device="cpu")
    assert model.blocks == ["unet.down_blocks.0", "unet.down_blocks.1", "unet.mid_block",
                            "unet.up_blocks.0", "unet.up_blocks.1"]
    store = zoolens.extract(model, synthetic(6, 48), layers="unet.mid_block", out=tmp_path,
                            dtype="float32", num_workers=0, progress=False)
    got = store.features(model.name, "unet.mid_block")

    # independent: the saved UNet, the scheduler's forward process, our own hook
    unet = UNet2DModel.from_pretrained(diffusers_unet_dir / "unet").eval()
    scheduler = DDPMScheduler.from_pretrained(diffusers_unet_dir / "scheduler")
    src = zoolens.open_source(synthetic(6, 48))
    x = torch.stack([model.preprocess(src.decode(i).image) for i in range(6)])
    assert x.min() >= -1.001 and x.max() <= 1.001  # the UNet's [-1, 1] range
    noise = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(3))
    alpha_bar = scheduler.alphas_cumprod[250]
    noisy = alpha_bar.sqrt() * x + (1 - alpha_bar).sqrt() * noise
    captured = {}
    unet.mid_block.register_forward_hook(lambda m, i, o: captured.__setitem__("o", o) and None)
    with torch.no_grad():
        unet(noisy, torch.full((6,), 250))
    np.testing.assert_allclose(got, captured["o"].mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)


def test_timestep_out_of_range(diffusers_unet_dir):
    with pytest.raises(UnknownModelError, match="t=5000"):
        zoolens.load(f"diffusers:{diffusers_unet_dir}?t=5000", device="cpu")
