"""In-memory images: a tensor or array batch, or a list of PIL images."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from .base import Decoded, ImageSource, pixels_hash
from .decode import to_rgb

__all__ = ["TensorSource"]


class TensorSource(ImageSource):
    """Images as (N, 3, H, W) floats in [0, 1] or uint8, (N, H, W, 3) uint8 arrays, or PIL images."""

    def __init__(self, images, labels=None, ids=None):
        if isinstance(images, (torch.Tensor, np.ndarray)):
            arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
            if arr.ndim != 4:
                raise InputError(f"images: expected a 4D batch, got shape {arr.shape}")
            if arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
                arr = arr.transpose(0, 2, 3, 1)
            if arr.dtype != np.uint8:
                arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
            self._images = list(arr)
        else:
            self._images = list(images)
        if not self._images:
            raise InputError("images: the batch is empty")
        ids = ids or [f"image_{i:06d}" for i in range(len(self._images))]
        super().__init__(ids=list(ids), labels=None if labels is None else list(labels),
                         description=f"memory:{len(self._images)}")

    def item_fingerprint(self, index: int) -> str:
        """`"pixels:<hash>"` of the item as held: the array's shape and bytes, or a PIL
        image's mode, size and bytes (no conversion, so this is cheap)."""
        img = self._images[index]
        if isinstance(img, np.ndarray):
            h = hashlib.blake2b(digest_size=8)
            h.update(f"{img.dtype}:{img.shape}:".encode())
            h.update(np.ascontiguousarray(img).tobytes())
            return "pixels:" + h.hexdigest()
        return "pixels:" + pixels_hash(img)

    def decode(self, index: int) -> Decoded:
        img = self._images[index]
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img)
        return to_rgb(img)
