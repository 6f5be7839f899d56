"""`timm:<arch>[.<tag>][?kwarg=value]` — any timm model, with timm's own data config."""

from __future__ import annotations

from ._fetch import hf_cache_dir, hub_access
from ._preprocess import output_size
from .registry import AdapterResult, register_source, unknown_model


def _list() -> list[str]:
    """Architectures and their pretrained tags: `resnet18` and `resnet18.a1_in1k` both match."""
    import timm

    return sorted(set(timm.list_models()) | set(timm.list_models(pretrained=True)))


def _cache(name: str) -> str:
    """timm fetches weights from the Hugging Face Hub; a few older ones from a URL (torch hub)."""
    import os

    import torch

    return (f"{hf_cache_dir()} (or, for weights timm fetches by URL, "
            f"{os.path.join(torch.hub.get_dir(), 'checkpoints')})")


@register_source("timm", lister=_list, cache=_cache)
def timm_source(name: str, *, pretrained: bool = True, weights: str | None = None,
                **kwargs) -> AdapterResult:
    import timm
    from timm.data import create_transform, resolve_data_config

    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        raise unknown_model("timm", name, timm.list_models())
    if weights:  # timm's own loading path, pointed at a local file
        kwargs["pretrained_cfg_overlay"] = dict(file=str(weights))
    with hub_access(bool(pretrained and not weights)):  # offline: the cache only, failing fast
        model = timm.create_model(name, pretrained=bool(pretrained or weights), **kwargs)
    args = {}
    if "img_size" in kwargs:  # the model was built for another size than its default config
        size = kwargs["img_size"]
        args["input_size"] = (3, *((size, size) if isinstance(size, int) else size))
    config = resolve_data_config(args, model=model)
    preprocess = create_transform(**config, is_training=False)
    patch_embed = getattr(model, "patch_embed", None)
    grid = getattr(patch_embed, "grid_size", None)
    return AdapterResult(
        module=model,
        preprocess=preprocess,
        input_size=output_size(preprocess),
        prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)),
        patch_grid=tuple(grid) if grid is not None else None,
        channels_last=getattr(model, "output_fmt", "NCHW") == "NHWC",
        classifier=int(getattr(model, "num_classes", 0) or 0) > 0,
        meta={"data_config": {k: v for k, v in config.items()}, "weights": weights},
    )
