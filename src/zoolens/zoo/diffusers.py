"""`diffusers:<repo or folder>[?t=100&seed=0]` — a pixel-space diffusion UNet as a zoo member.

The image is scaled to [-1, 1], noised to timestep `t` with the scheduler's forward process
(`add_noise`), and passed through the UNet at that timestep; its blocks are the taps (as in
"Denoising Diffusion Autoencoders are Unified Self-supervised Learners"). The noise is one
fixed map drawn from `seed`, the same for every image, so an image's activations do not depend
on which batch it lands in. Unconditional `UNet2DModel`s (e.g. google/ddpm-cifar10-32) are
supported; latent, text-conditioned UNets need a VAE and a prompt and are not yet."""

from __future__ import annotations

import torch
from torch import nn

from pathlib import Path

from ..errors import UnknownModelError
from ._fetch import download_reason, hf_cache_dir, hub_access, is_download_failure, weights_unavailable
from ._preprocess import default_transform, output_size
from .registry import AdapterResult, register_source


class NoisedUNet(nn.Module):
    """x in [-1, 1] -> UNet(add_noise(x, noise, t), t). Layer names keep the UNet's paths
    under `unet.`."""

    def __init__(self, unet: nn.Module, scheduler, timestep: int, seed: int, size: tuple[int, int]):
        super().__init__()
        self.unet, self.scheduler, self.timestep = unet, scheduler, int(timestep)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("noise", torch.randn(unet.config.in_channels, *size, generator=g))

    def forward(self, x: torch.Tensor):
        t = torch.full((x.shape[0],), self.timestep, dtype=torch.long, device=x.device)
        noisy = self.scheduler.add_noise(x, self.noise.expand_as(x), t.cpu()).to(x.dtype)
        return self.unet(noisy, t).sample


def _with_subfolder(fn, name: str, subfolder: str, **kw):
    """Pipelines keep their parts in subfolders (unet/, scheduler/); bare repos do not."""
    try:
        return fn(name, subfolder=subfolder, **kw)
    except (OSError, EnvironmentError):
        return fn(name, **kw)


@register_source("diffusers")
def diffusers_source(name: str, *, pretrained: bool = True, weights: str | None = None,
                     t: int = 100, seed: int = 0, **kwargs) -> AdapterResult:
    from diffusers import DDPMScheduler, UNet2DModel

    local = Path(name).expanduser().is_dir()
    with hub_access(not local):
        try:
            if pretrained or weights:
                unet = _with_subfolder(UNet2DModel.from_pretrained, weights or name, "unet")
            else:
                unet = UNet2DModel.from_config(_with_subfolder(UNet2DModel.load_config, name, "unet"))
        except (OSError, ValueError) as exc:
            if is_download_failure(exc):
                raise weights_unavailable(
                    f"diffusers:{name}", cache=hf_cache_dir(), reason=download_reason(exc),
                    what="model files (the UNet's config and weights)", random_ok=False,
                    local="give a local pipeline folder: diffusers:/path/to/folder") from None
            raise UnknownModelError(f"diffusers:{name}: no UNet2DModel found ({exc}); give a Hub "
                                    "repo id like google/ddpm-cifar10-32 or a local folder") from exc
        try:
            scheduler = _with_subfolder(DDPMScheduler.from_pretrained, name, "scheduler")
        except (OSError, ValueError):
            scheduler = DDPMScheduler(num_train_timesteps=1000)
    if not 0 <= t < scheduler.config.num_train_timesteps:
        raise UnknownModelError(f"diffusers:{name}: timestep t={t} outside "
                                f"0..{scheduler.config.num_train_timesteps - 1}")
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    preprocess = default_transform(size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    module = NoisedUNet(unet, scheduler, t, seed, size)
    blocks = ([f"unet.down_blocks.{i}" for i in range(len(unet.down_blocks))] + ["unet.mid_block"] +
              [f"unet.up_blocks.{i}" for i in range(len(unet.up_blocks))])
    return AdapterResult(module=module, preprocess=preprocess, input_size=output_size(preprocess),
                         block_names=blocks,
                         meta={"timestep": t, "noise_seed": seed,
                               "weights": weights or (name if pretrained else None)})
