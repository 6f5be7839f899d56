"""`open_clip:<arch>[/<pretrained tag>]` — the image tower of an open_clip model.

The whole CLIP model is wrapped (layer names start with `visual.`), so zero-shot can use its
text tower; the forward pass runs `encode_image`."""

from __future__ import annotations

from ..errors import UnknownModelError
from ._fetch import hub_access
from ._preprocess import output_size
from .registry import AdapterResult, register_source, unknown_model


def _list() -> list[str]:
    import open_clip

    return [f"{a}/{t}" for a, t in open_clip.list_pretrained()]


def _encode_image(module, x):
    return module.encode_image(x)


@register_source("open_clip", lister=_list)
def open_clip_source(name: str, *, pretrained: bool = True, weights: str | None = None,
                     **kwargs) -> AdapterResult:
    import open_clip

    arch, _, tag = name.partition("/")
    if arch not in open_clip.list_models():
        raise unknown_model("open_clip", arch, open_clip.list_models())
    if pretrained and not weights and not tag:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise UnknownModelError(f"open_clip:{arch} needs a pretrained tag, e.g. "
                                f"open_clip:{arch}/{tags[0] if tags else 'TAG'}; have {', '.join(tags) or 'none'}"
                                " (or load it with pretrained=False / --no-pretrained)")
    source = weights or (tag if pretrained else None)  # open_clip takes a tag or a local file
    # a pretrained tag: fetched from the Hub (a few from URLs)
    with hub_access(bool(source and not weights)):
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=source,
                                                                     **kwargs)
    visual = model.visual
    grid = getattr(visual, "grid_size", None)
    transformer = getattr(visual, "transformer", None)
    return AdapterResult(
        module=model,
        preprocess=preprocess,
        input_size=output_size(preprocess),
        forward=_encode_image,
        prefix_tokens=1 if hasattr(visual, "class_embedding") else 0,
        patch_grid=tuple(grid) if grid is not None else None,
        sequence_first=not getattr(transformer, "batch_first", True),
        meta={"pretrained": source, "tokenizer": arch},
    )
