"""Preprocessing helpers shared by adapters: a default transform and picklable wrappers.

Preprocessing runs in DataLoader workers, so every callable here must pickle."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "default_transform", "output_size"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_transform(size: int | tuple[int, int] = 224, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, crop_pct: float = 1.0) -> T.Compose:
    """Resize the shorter side to size / crop_pct, centre-crop `size`, scale to [0, 1], normalise."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    resize = int(round(min(size) / crop_pct))
    return T.Compose([
        T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def output_size(preprocess) -> tuple[int, int]:
    """(H, W) a preprocessing callable produces, read off one blank image."""
    x = preprocess(Image.new("RGB", (320, 256), (127, 127, 127)))
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise TypeError(f"preprocessing must return a (3, H, W) tensor, got {type(x).__name__} "
                        f"{getattr(x, 'shape', '')}")
    return int(x.shape[1]), int(x.shape[2])
