"""Zero-shot classification with image-text models (CLIP, SigLIP) from class-name prompts.

Each class name is written into several prompt templates ("a photo of a {}."), the text tower
embeds every prompt, each embedding is L2-normalised, the template embeddings of a class are
averaged and the mean is normalised again: one unit vector per class, the "zero-shot
classifier" (Radford et al. 2021; CLIP_benchmark). An image is scored by the cosine similarity
of its final image embedding (`encode_image` / `get_image_features`) to each class vector.
CLIP's logit scale and SigLIP's bias are monotone per image and change no ranking, so they are
left out.

Two kinds of model are understood, by what their module can do (no name checks):

- open_clip (the `open_clip:` adapter wraps the whole CLIP model): ``module.encode_text`` with
  ``open_clip.get_tokenizer(arch)``, the architecture recorded in ``adapter.meta["tokenizer"]``;
- Hugging Face CLIP / SigLIP (`hf:`): ``module.get_text_features`` with
  ``transformers.AutoTokenizer.from_pretrained(<repo>)``, prompts padded to the full context
  length (SigLIP was trained that way; CLIP pools at the first end token, so padding is harmless).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..._validation import as_features
from ...errors import InputError
from ...taps import first_tensor

__all__ = [
    "DEFAULT_TEMPLATES",
    "is_image_text",
    "read_templates",
    "text_tokenizer",
    "encode_texts",
    "zeroshot_classifier",
    "zeroshot_scores",
]

#: Prompt templates in the style of CLIP's ImageNet prompts; "{}" stands for the class name.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a blurry photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a drawing of a {}.",
    "a rendering of a {}.",
)


def _module(model):
    return getattr(model, "module", model)


def is_image_text(model) -> bool:
    """Whether `model` (a zoolens `Model` or a torch module) has a text tower we can prompt."""
    module = _module(model)
    return hasattr(module, "encode_text") or hasattr(module, "get_text_features")


def read_templates(path: str | Path) -> list[str]:
    """Templates from a text file: one per line, each holding ``{}`` where the class name goes;
    blank lines and lines starting with ``#`` are ignored."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"templates {str(path)!r}: no such file (one template per line, "
                         "e.g. 'a photo of a {}.')")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return _check_templates([ln for ln in lines if ln and not ln.startswith("#")],
                            f"templates {str(path)!r}")


def _check_templates(templates, name: str = "templates") -> list[str]:
    if isinstance(templates, str):
        templates = [templates]
    templates = [str(t) for t in templates]
    if not templates:
        raise InputError(f"{name}: no templates given; e.g. 'a photo of a {{}}.'")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise InputError(f"{name}: every template needs '{{}}' where the class name goes; "
                         f"got {bad[:3]}")
    return templates


# ---------------------------------------------------------------------------------------------
# text side


def text_tokenizer(model) -> Callable[[list[str]], dict[str, torch.Tensor]]:
    """A function ``texts -> {"input_ids": (n, L), ...}`` suited to `model`'s text tower.

    open_clip: ``open_clip.get_tokenizer(arch)``; Hugging Face: ``AutoTokenizer`` of the repo
    named by the spec, padding to the full context length."""
    module = _module(model)
    spec = getattr(model, "spec", "")
    meta = getattr(getattr(model, "adapter", None), "meta", {}) or {}
    if hasattr(module, "encode_text"):
        import open_clip

        arch = meta.get("tokenizer") or spec.partition(":")[2].partition("/")[0]
        if not arch:
            raise InputError("zero-shot: cannot tell the open_clip architecture of this model; "
                             "pass tokenizer=")
        tok = open_clip.get_tokenizer(arch)
        return lambda texts: {"input_ids": tok(list(texts))}
    if hasattr(module, "get_text_features"):
        from transformers import AutoTokenizer

        from ...zoo.registry import parse_spec

        if not spec.startswith("hf:"):
            raise InputError(f"zero-shot: {spec or 'this model'} has get_text_features but no "
                             "hf: spec naming its tokenizer; pass tokenizer=")
        repo = parse_spec(spec)[1]
        try:
            tok = AutoTokenizer.from_pretrained(repo)
        except (OSError, ValueError) as exc:
            raise InputError(f"zero-shot: no tokenizer found for {spec} ({exc})") from None
        config = getattr(module, "config", None)
        text_cfg = getattr(config, "text_config", config)
        limit = getattr(text_cfg, "max_position_embeddings", None) or 77
        length = int(min(tok.model_max_length or limit, limit))

        def hf_tokenize(texts):
            enc = tok(list(texts), padding="max_length", truncation=True, max_length=length,
                      return_tensors="pt")
            return {k: enc[k] for k in ("input_ids", "attention_mask") if k in enc}

        return hf_tokenize
    raise InputError(f"zero-shot: {spec or type(module).__name__} has no text tower "
                     "(needs an image-text model: open_clip:..., or an hf: CLIP/SigLIP)")


def _text_embedding(out) -> torch.Tensor:
    """The text embedding from `encode_text` / `get_text_features` output (a tensor, or a
    ModelOutput whose `pooler_output` holds the projected embedding in transformers >= 5)."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("text_embeds", "pooler_output"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    t = first_tensor(out)
    if t is None:
        raise InputError("zero-shot: the text tower returned no tensor")
    return t


def encode_texts(model, texts: Sequence[str], *, tokenizer=None,
                 batch_size: int = 256) -> np.ndarray:
    """(n, D) float32 text embeddings (not normalised) of `texts` by `model`'s text tower.

    Args:
        model: a zoolens `Model` of an image-text model (or its module, with `tokenizer`).
        texts: the n prompts.
        tokenizer: ``texts -> {"input_ids": ..., ["attention_mask": ...]}`` or a callable
            returning a token tensor; default `text_tokenizer(model)`.
        batch_size: prompts per forward pass.
    """
    module = _module(model)
    if not is_image_text(module):
        raise InputError(f"zero-shot: {getattr(model, 'spec', type(module).__name__)} has no "
                         "text tower (needs an image-text model: open_clip:..., or an hf: "
                         "CLIP/SigLIP)")
    tokenizer = tokenizer if tokenizer is not None else text_tokenizer(model)
    device = next(module.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]))
            if isinstance(enc, torch.Tensor):
                enc = {"input_ids": enc}
            enc = {k: v.to(device) for k, v in enc.items()}
            if hasattr(module, "encode_text"):
                emb = module.encode_text(enc["input_ids"])
            else:
                emb = module.get_text_features(**enc)
            out.append(_text_embedding(emb).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    if zero.any():
        warnings.warn(f"{name}: {int(zero.sum())} all-zero row(s) have no direction; their "
                      "cosine similarity is 0 to everything", stacklevel=3)
    return x / np.where(norms == 0, 1.0, norms)


def zeroshot_classifier(model, classnames: Sequence[str],
                        templates: Sequence[str] | str | None = None, *, tokenizer=None,
                        batch_size: int = 256) -> np.ndarray:
    """(C, D) float64 unit vectors, one per class: the mean of the class's normalised template
    embeddings, normalised again.

    Args:
        model: a zoolens `Model` of an image-text model (open_clip, hf CLIP/SigLIP).
        classnames: the C class names written into the templates (e.g. "golden retriever").
        templates: prompt templates with ``{}`` for the class name; default `DEFAULT_TEMPLATES`.
        tokenizer: optional override, see `encode_texts`.
        batch_size: prompts per text forward pass.
    """
    templates = _check_templates(DEFAULT_TEMPLATES if templates is None else templates)
    names = [str(c) for c in classnames]
    if not names:
        raise InputError("classnames: expected at least one class name")
    texts = [t.replace("{}", c) for c in names for t in templates]
    emb = encode_texts(model, texts, tokenizer=tokenizer, batch_size=batch_size)
    emb = _unit_rows(emb.astype(np.float64), "text embeddings")
    mean = emb.reshape(len(names), len(templates), -1).mean(axis=1)
    return _unit_rows(mean, "class embeddings")


def zeroshot_scores(image_features, classifier) -> np.ndarray:
    """(N, C) float64 cosine similarities of (N, D) image embeddings to the (C, D) classifier
    rows (`zeroshot_classifier`); argmax over columns is the zero-shot prediction."""
    x = as_features(image_features, "image_features", min_samples=0)
    w = as_features(classifier, "classifier")
    if x.shape[1] != w.shape[1]:
        raise InputError(f"image_features: have {x.shape[1]} dimensions, the classifier has "
                         f"{w.shape[1]}; use the model's final image embedding")
    return _unit_rows(x, "image_features") @ _unit_rows(w, "classifier").T


# ---------------------------------------------------------------------------------------------
# image side
