"""Figures shared by analyses: heatmaps overlaid on images, drawn with matplotlib (Agg)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

__all__ = ["overlay", "concept_figure", "save_png", "file_stem"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """A (h, w) heatmap upsampled to the image and blended over it -> (H, W, 3) uint8.
    The heatmap is scaled to its own [min, max] (one image at a time)."""
    from matplotlib import colormaps

    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    lo, hi = float(heat.min()), float(heat.max())
    unit = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    big = np.asarray(Image.fromarray((unit * 255).astype(np.uint8)).resize(
        image.size, Image.BILINEAR), dtype=np.float64) / 255
    colour = colormaps["inferno"](big)[..., :3]
    return (((1 - alpha) * rgb + alpha * colour).clip(0, 1) * 255).astype(np.uint8)


def concept_figure(images: Sequence[Image.Image], heat: np.ndarray, model_names: Sequence[str],
                   path: str | Path, *, title: str = "") -> Path:
    """Rows of images; per row the image, then one heatmap per model overlaid on it.
    heat: (n_models, n_images, h, w)."""
    plt = _plt()
    n_img, n_mod = len(images), len(model_names)
    fig, axes = plt.subplots(n_img, n_mod + 1, figsize=(1.9 * (n_mod + 1), 1.9 * n_img + 0.5),
                             squeeze=False)
    for r, img in enumerate(images):
        axes[r, 0].imshow(img)
        for m in range(n_mod):
            axes[r, m + 1].imshow(overlay(img, heat[m, r]))
            if r == 0:
                axes[r, m + 1].set_title(_short(model_names[m]), fontsize=7)
        if r == 0:
            axes[r, 0].set_title("image", fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """An (H, W) or (H, W, 3) uint8 array -> a PNG file (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def file_stem(id_: str, index: int) -> str:
    """A file-name stem for an image id: index-prefixed (unique), no path separators."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(id_)).strip("._")[-80:] or "image"
    return f"{index:06d}_{stem}"
