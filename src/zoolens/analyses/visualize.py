"""What a model's patches look like: DINOv2's PCA colours and DINO's CLS attention maps, as arrays.

`visualize(model, images, kind="pca")` taps one layer's patch features (by default the last
block's output tokens, or a CNN's last map), fits one PCA jointly over every patch of every image
and colours them with `discovery.pca_rgb` (first component thresholded into foreground, the next
three as RGB), as in the DINOv2 figures.

`visualize(model, images, kind="attention")` gives, per image and head, the attention of the class
token to every patch in one attention module (the last block's by default):
`softmax_j(q_cls . k_j * scale)` over all tokens (class token, registers and patches), of which
the patch part is returned as (heads, rows, cols). timm computes attention with a fused kernel that
never forms the weights, so q and k are tapped instead: from a fused qkv Linear (timm), separate
q/k projections (Hugging Face), or, for `nn.MultiheadAttention` (open_clip), from its inputs and
in-projection weights. Query/key norms of the module (timm's `qk_norm`) are applied, as the model
does. Models whose attention adds position terms to q and k (rotary embeddings, relative biases)
are outside this scheme: their maps would not be the model's, and none are computed.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..sources import open_source
from ..taps import first_tensor
from .discovery import pca_rgb
from .objects import (_as_model, _Attention, _default_layer, _fallback_note, _find_attention,
                      _patch_features, _stream, _to_image, _Window, patch_layer)

__all__ = ["KINDS", "Visualization", "visualize"]

KINDS = ("pca", "attention")
_UNSUPPORTED_POSITIONS = ("rope", "rel_pos", "relative_position_bias_table")


@dataclass
class Visualization:
    """Per-image patch pictures of one model layer, with the settings used.

    Images that decoded are listed in `ids` / `indices` / `sizes` / `windows` (source order); the
    others are in `skipped` ({"index", "id", "reason"}). kind "pca": `rgb` (N, rows, cols, 3) in
    [0, 1] (background black) and `foreground` (N, rows, cols) bool. kind "attention": `attention`
    (N, heads, rows, cols): the class token's attention to each patch (softmax over all tokens, so
    a map sums to 1 minus the prefix tokens' share). `at_image(i)` brings image i's picture to its
    decoded size, where the model's input came from (black / 0 outside).
    """

    kind: str
    model: str
    layer: str
    feature: str
    grid: tuple[int, int]
    input_size: tuple[int, int]
    ids: list[str]
    indices: list[int]
    sizes: list[tuple[int, int]]
    windows: list[tuple[float, float, float, float]]
    skipped: list[dict] = field(default_factory=list)
    rgb: np.ndarray | None = None
    foreground: np.ndarray | None = None
    attention: np.ndarray | None = None
    threshold: float | None = None
    heads: int | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def at_image(self, i: int) -> np.ndarray:
        """Image i (a position in `ids`) at its decoded size: (H, W, 3) for "pca", (heads, H, W)
        for "attention"."""
        ri, ci = _Window(*self.windows[i]).index_maps(self.sizes[i], self.input_size, self.grid)
        if self.kind == "pca":
            return np.moveaxis(_to_image(np.moveaxis(self.rgb[i], -1, 0), ri, ci, 0.0), 0, -1)
        return _to_image(self.attention[i], ri, ci, 0.0)

    def to_json(self) -> str:
        d = {k: getattr(self, k) for k in ("kind", "model", "layer", "feature", "ids", "indices",
                                           "skipped", "threshold", "heads", "notes")}
        d.update(grid=list(self.grid), input_size=list(self.input_size),
                 sizes=[list(s) for s in self.sizes], windows=[list(w) for w in self.windows])
        for k in ("rgb", "foreground", "attention"):
            v = getattr(self, k)
            d[k] = None if v is None else v.tolist()
        return json.dumps(d)

    @classmethod
    def from_json(cls, s: str) -> "Visualization":
        d = json.loads(s)
        d["grid"], d["input_size"] = tuple(d["grid"]), tuple(d["input_size"])
        d["sizes"] = [tuple(v) for v in d["sizes"]]
        d["windows"] = [tuple(v) for v in d["windows"]]
        for k, dtype in (("rgb", np.float64), ("foreground", bool), ("attention", np.float64)):
            if d[k] is not None:
                d[k] = np.asarray(d[k], dtype=dtype)
        return cls(**d)


# --------------------------------------------------------------------------------------------------
# CLS attention from q and k


def _check_attention(model, attn: _Attention | None, where: str) -> _Attention:
    if attn is None:
        raise InputError(f"{model.spec}: no attention module found in {where!r}; attention maps "
                         "need a ViT (use kind='pca' for CNNs), or name an attention module "
                         "with layer=")
    if attn.heads is None or attn.scale is None:
        raise InputError(f"{model.spec}: cannot tell the number of heads of {attn.name!r}")
    module = dict(model.module.named_modules())[attn.name]
    present = [n for n in _UNSUPPORTED_POSITIONS
               if getattr(module, n, None) is not None or getattr(model.module, n, None) is not None]
    present += sorted({type(m).__name__ for m in model.module.modules()
                       if "rotary" in type(m).__name__.lower() or "rope" in type(m).__name__.lower()})
    if present:
        raise InputError(f"{model.spec}: {attn.name!r} adds position terms ({', '.join(present)}) "
                         "to q and k; CLS attention maps from the projections alone would not be "
                         "the model's")
    if attn.style == "linear":
        for name in {attn.q_name, attn.k_name}:
            try:
                model.layer(name)
            except Exception:
                raise InputError(f"{model.spec}: {name!r} never runs as a module (its weights are "
                                 "used directly); no attention maps for this model") from None
    return attn


def _heads_split(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, C) -> (B, heads, T, C / heads)."""
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def _cls_attention(q: torch.Tensor, k: torch.Tensor, attn: _Attention, prefix: int,
                   grid: tuple[int, int]) -> np.ndarray:
    """q, k: (B, T, C) batch-first -> (B, heads, rows, cols): the class token's attention."""
    qh, kh = _heads_split(q.float(), attn.heads), _heads_split(k.float(), attn.heads)
    if attn.q_norm is not None:
        qh = attn.q_norm(qh)
    if attn.k_norm is not None:
        kh = attn.k_norm(kh)
    logits = torch.einsum("bhd,bhtd->bht", qh[:, :, 0], kh) * attn.scale
    weights = logits.softmax(dim=-1)
    b, h, n = weights.shape
    if n != prefix + grid[0] * grid[1]:
        raise InputError(f"{attn.name!r}: {n} tokens do not make {prefix} prefix tokens and a "
                         f"{grid[0]}x{grid[1]} grid")
    return weights[:, :, prefix:].reshape(b, h, *grid).cpu().numpy()


def _batch_first(t: torch.Tensor, batch: int, seq_first: bool) -> torch.Tensor:
    return t.transpose(0, 1) if seq_first and t.shape[1] == batch else t


def _attention_batch(model, attn: _Attention, prefix: int, grid: tuple[int, int],
                     x: torch.Tensor) -> np.ndarray:
    """One batch -> (B, heads, rows, cols) CLS attention of `attn`."""
    modules = dict(model.module.named_modules())
    got: dict[str, torch.Tensor] = {}
    handles = []
    b = x.shape[0]
    if attn.style == "mha":
        mha: nn.MultiheadAttention = modules[attn.name]

        def pre(_m, args, kwargs):
            query = args[0] if len(args) > 0 else kwargs["query"]
            key = args[1] if len(args) > 1 else kwargs.get("key", query)
            seq_first = not mha.batch_first
            query, key = _batch_first(query, b, seq_first), _batch_first(key, b, seq_first)
            e = mha.embed_dim
            if mha._qkv_same_embed_dim:
                wq, wk = mha.in_proj_weight[:e], mha.in_proj_weight[e:2 * e]
            else:
                wq, wk = mha.q_proj_weight, mha.k_proj_weight
            bq = bk = None
            if mha.in_proj_bias is not None:
                bq, bk = mha.in_proj_bias[:e], mha.in_proj_bias[e:2 * e]
            got["q"], got["k"] = F.linear(query, wq, bq), F.linear(key, wk, bk)

        handles.append(mha.register_forward_pre_hook(pre, with_kwargs=True))
    else:
        infos = {n: model.layer(n) for n in {attn.q_name, attn.k_name}}

        def grab(name):
            def hook(_m, _i, output):
                t = first_tensor(output)
                t = t.transpose(0, 1) if infos[name].batch_axis == 1 else t
                if name == attn.q_name:
                    got["q"] = t[..., attn.q_slice] if attn.q_slice is not None else t
                if name == attn.k_name:
                    got["k"] = t[..., attn.k_slice] if attn.k_slice is not None else t
            return hook

        for name in infos:
            handles.append(modules[name].register_forward_hook(grab(name)))
    try:
        with torch.inference_mode():
            model.forward(x)
            return _cls_attention(got["q"], got["k"], attn, prefix, grid)
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------------------------------
# public entry point


def visualize(model, images, *, kind: str = "pca", layer: str | None = None,
              features: str = "tokens", threshold: float | None = None, batch_size: int = 16,
              device=None, num_workers: int = 0, progress: bool = True) -> Visualization:
    """PCA colours or CLS attention maps of a model's patches, per image, as arrays.

    model: a zoolens Model or a spec string; images: anything `open_source` takes.
    kind "pca": the patch features of `layer` (`patch_layer(model, layer, features=features)`;
    default the last block's output tokens, or a CNN's last map) for all images, then
    `pca_rgb(features (N, P, D), grid, threshold=threshold)`: one PCA over every patch of every
    image, so colours compare across images. Memory: all N * P * D features (float32).
    kind "attention": the class token's attention per head in the attention module inside `layer`
    (default: the last block), one batch at a time.
    Returns a `Visualization`; `.at_image(i)` gives image i's picture at its decoded size.
    """
    if kind not in KINDS:
        raise InputError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    model = _as_model(model, device)
    source = open_source(images)
    notes: list[str] = []
    if kind == "pca":
        pl = patch_layer(model, layer, features=features)
        info = model.layer(pl.layer)
        name, feature, heads = pl.layer, pl.feature, None
        note = _fallback_note(model, pl, features)
        if note:
            warnings.warn(note, stacklevel=2)
            notes.append(note)
    else:
        where = _default_layer(model) if layer is None else layer
        if where not in dict(model.module.named_modules()):
            model.layer(where)  # raises UnknownLayerError, listing what exists
        attn = _check_attention(model, _find_attention(model.module, where), where)
        info = model.layer(attn.name)
        if info.layout != "tokens" or info.grid is None:
            raise InputError(f"{model.spec}: {attn.name!r} gives no token grid")
        if info.prefix_tokens < 1:
            raise InputError(f"{model.spec}: no class token ahead of the patches in "
                             f"{attn.name!r}; CLS attention maps need one")
        name, feature, heads = attn.name, "cls_attention", attn.heads
    grid = tuple(info.grid)
    ids, indices, sizes, windows, skipped, parts = [], [], [], [], [], []
    for chunk in _stream(model, source, batch_size=batch_size, num_workers=num_workers,
                         keep_images=False, progress=progress, desc=f"visualize {kind}"):
        skipped += chunk.skipped
        if not chunk.indices:
            continue
        if kind == "pca":
            parts.append(_patch_features(model, pl, info, chunk.x))
        else:
            parts.append(_attention_batch(model, attn, info.prefix_tokens, grid, chunk.x))
        for i, size, window in zip(chunk.indices, chunk.sizes, chunk.windows):
            ids.append(source.ids[i])
            indices.append(i)
            sizes.append(tuple(size))
            windows.append(tuple(window.to_list()))
    skipped.sort(key=lambda s: s["index"])
    result = Visualization(kind=kind, model=model.name, layer=name, feature=feature, grid=grid,
                           input_size=tuple(model.input_size), ids=ids, indices=indices,
                           sizes=sizes, windows=windows, skipped=skipped, threshold=threshold,
                           heads=heads, notes=notes)
    if not parts:
        raise InputError(f"images: none of the {len(source)} images could be used "
                         f"({skipped[0]['reason'] if skipped else 'empty'})")
    if kind == "pca":
        result.rgb, result.foreground = pca_rgb(np.concatenate(parts), grid, threshold=threshold)
    else:
        result.attention = np.concatenate(parts).astype(np.float64)
    return result
