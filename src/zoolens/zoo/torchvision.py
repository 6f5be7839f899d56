"""`torchvision:<name>` — torchvision classification models with their weights' transforms."""

from __future__ import annotations

import torch

from ._preprocess import default_transform, output_size
from .registry import AdapterResult, register_source, unknown_model


def _list() -> list[str]:
    from torchvision import models

    return models.list_models(module=models)


def _cache(name: str) -> str:
    """The file torch.hub looks for: TORCH_HOME/hub/checkpoints/<the weights URL's file name>."""
    import os

    from torchvision import models

    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    try:
        url = models.get_model_weights(name).DEFAULT.url
    except (ValueError, AttributeError):
        return folder
    return os.path.join(folder, os.path.basename(url))


@register_source("torchvision", lister=_list, cache=_cache)
def torchvision_source(name: str, *, pretrained: bool = True, weights: str | None = None,
                       **kwargs) -> AdapterResult:
    from torchvision import models

    known = _list()
    if name not in known:
        raise unknown_model("torchvision", name, known)
    try:
        default_weights = models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        default_weights = None
    use_hub = pretrained and not weights and default_weights is not None
    model = models.get_model(name, weights=default_weights if use_hub else None, **kwargs)
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    # The weights' own transforms even for random weights: the same input either way.
    preprocess = default_weights.transforms() if default_weights is not None else default_transform()
    prefix, grid = 0, None
    if hasattr(model, "class_token"):  # torchvision ViT
        prefix = 1
        side = model.image_size // model.patch_size
        grid = (side, side)
    return AdapterResult(
        module=model,
        preprocess=preprocess,
        input_size=output_size(preprocess),
        prefix_tokens=prefix,
        patch_grid=grid,
        channels_last=name.startswith("swin"),  # torchvision Swin stages are (B, H, W, C)
        classifier=True,  # the classification models: the forward output is the logits
        meta={"weights": weights or (str(default_weights) if use_hub else None)},
    )
