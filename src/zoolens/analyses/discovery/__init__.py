"""Unsupervised object discovery and patch pictures.

- `cuts`: arrays in, arrays out — TokenCut's normalized cut, MaskCut, DINOv2's PCA colours;
- `objects`: `discover(model, images)`, MaskCut on a model's patch features, masks at image
  size through the preprocessing window;
- `pictures`: `visualize(model, images, kind="pca" | "attention")`.
"""

from .objects import (FEATURES, DiscoverySink, ImageObjects, PatchLayer, default_layer, discover,
                       patch_layer)
from .cuts import MaskCutResult, ObjectMask, mask_bbox, maskcut, ncut, ncut_batch, pca_rgb, upsample_mask
from .pictures import KINDS, AttentionSink, PCASink, Visualization, visualize

__all__ = ["discover", "DiscoverySink", "ImageObjects", "PatchLayer", "patch_layer",
           "default_layer", "visualize", "Visualization", "PCASink", "AttentionSink", "ncut",
           "ncut_batch", "maskcut", "pca_rgb", "mask_bbox", "upsample_mask", "ObjectMask",
           "MaskCutResult", "FEATURES", "KINDS"]
