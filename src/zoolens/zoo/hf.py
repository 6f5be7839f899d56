"""`hf:<repo id or local folder>` — Hugging Face transformers vision models (ViT, DINOv2 with or
without registers, MAE, BEiT, the vision tower of CLIP/SigLIP), with their image processor."""

from __future__ import annotations

from pathlib import Path

import torch

from ._fetch import download_reason, hf_cache_dir, hub_access, is_download_failure, weights_unavailable
from ._preprocess import default_transform, output_size
from .registry import AdapterResult, register_source


class _HFPreprocess:
    """PIL image -> (3, H, W) through a transformers image processor (picklable for workers)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image):
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


def _image_features(module, x):
    """The projected image embedding (transformers >= 5 wraps it in `pooler_output`)."""
    out = module.get_image_features(pixel_values=x)
    if isinstance(out, torch.Tensor):
        return out
    embeds = getattr(out, "image_embeds", None)
    return embeds if embeds is not None else out.pooler_output


def _pixel_forward(module, x):
    return module(pixel_values=x)


@register_source("hf")
def hf_source(name: str, *, pretrained: bool = True, weights: str | None = None,
              **kwargs) -> AdapterResult:
    from transformers import (AutoConfig, AutoImageProcessor, AutoModel,
                              AutoModelForImageClassification)

    from ..errors import UnknownModelError

    # Even random weights need the config, which a repo id fetches from the Hub.
    with hub_access(not Path(name).expanduser().is_dir()):
        try:
            config = AutoConfig.from_pretrained(name, **kwargs)
        except (OSError, ValueError) as exc:
            if is_download_failure(exc):
                raise weights_unavailable(
                    f"hf:{name}", cache=hf_cache_dir(), what="model files (config.json, weights)",
                    reason=download_reason(exc), random_ok=False,
                    local="give a local folder saved with save_pretrained: hf:/path/to/folder"
                ) from None
            raise UnknownModelError(f"hf:{name}: no transformers config found ({exc}); give a "
                                    "Hub repo id like facebook/dinov2-small or a local folder") from exc
        if config.model_type == "vit_mae":
            config.mask_ratio = 0.0  # MAE masks 75% of patches at random by default: see them all
        # A checkpoint with an image-classification head keeps it: its output is the logits.
        classifier = any(a.endswith("ForImageClassification")
                         for a in (getattr(config, "architectures", None) or []))
        auto = AutoModelForImageClassification if classifier else AutoModel
        if pretrained or weights:
            model = auto.from_pretrained(weights or name, config=config)
        else:
            model = auto.from_config(config)
        try:
            preprocess = _HFPreprocess(AutoImageProcessor.from_pretrained(name))
        except (OSError, ValueError):  # a bare config (tests, custom models): ImageNet defaults
            vision = getattr(config, "vision_config", config)
            preprocess = default_transform(getattr(vision, "image_size", 224))
    vision = getattr(config, "vision_config", config)
    size = output_size(preprocess)
    patch = getattr(vision, "patch_size", None)
    grid = (size[0] // patch, size[1] // patch) if isinstance(patch, int) else None
    has_cls = config.model_type not in ("siglip", "siglip2", "siglip_vision_model")
    prefix = (1 if has_cls else 0) + int(getattr(vision, "num_register_tokens", 0) or 0)
    is_dual = hasattr(model, "get_image_features")
    return AdapterResult(
        module=model,
        preprocess=preprocess,
        input_size=size,
        forward=_image_features if is_dual else _pixel_forward,
        prefix_tokens=prefix,
        patch_grid=grid,
        classifier=classifier,
        meta={"model_type": config.model_type, "weights": weights or (name if pretrained else None)},
    )
