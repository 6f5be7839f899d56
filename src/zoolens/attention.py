"""Where a ViT's attention gets its queries and keys, and the class token's attention from them.

`find_attention(module, under)` describes the first attention module at or below a module path:
- style "linear": q and k are outputs of Linear modules — timm's fused `attn.qkv` (q|k|v along
  channels), Hugging Face's `q_proj`/`k_proj` (5.x) or `query`/`key` (4.x), diffusers' `to_q`/
  `to_k`. The engine taps those modules' output tokens.
- style "mha": an `nn.MultiheadAttention` (open_clip), whose projections are computed inside
  it from its inputs and `in_proj_weight`: the engine taps its input tokens and q, k follow
  from the weights (self-attention: query and key are the same tokens).

`attention_taps(attn)` is what the engine must reduce ("tokens": the whole token sequence,
batch first) and `queries_and_keys(attn, features, module)` turns a batch's taps into q and k.
timm computes attention with a fused kernel that never forms the weights, so tapping q and k is
the only way to see them. `cls_attention` is `softmax_j(q_cls . k_j * scale)` over all tokens,
per head, with the module's query/key norms applied (timm's `qk_norm`), as the model does.
Models that add position terms to q and k (rotary embeddings, relative biases) are refused by
`check_attention`: maps from the projections alone would not be the model's.

The keys found here are also TokenCut's features (`zoolens.analyses.discovery`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

__all__ = ["Attention", "find_attention", "check_attention", "attention_taps",
           "queries_and_keys", "cls_attention", "Q_NAMES", "K_NAMES"]

Q_NAMES = ("q_proj", "query", "to_q")  # Hugging Face 5.x / 4.x, diffusers-style attention
K_NAMES = ("k_proj", "key", "to_k")
_UNSUPPORTED_POSITIONS = ("rope", "rel_pos", "relative_position_bias_table")


@dataclass(frozen=True)
class Attention:
    """Where one attention module's queries and keys come from (see the module docstring)."""

    name: str
    style: str  # "linear" | "mha"
    heads: int | None
    scale: float | None
    q_name: str | None = None
    k_name: str | None = None
    q_slice: slice | None = None  # None: every channel
    k_slice: slice | None = None
    q_norm: nn.Module | None = None
    k_norm: nn.Module | None = None


def _child_linear(mod: nn.Module, names: Sequence[str]) -> str | None:
    for n in names:
        if isinstance(getattr(mod, n, None), nn.Linear):
            return n
    return None


def _heads_of(mod: nn.Module) -> int | None:
    for attr in ("num_heads", "num_attention_heads", "n_heads", "heads"):
        v = getattr(mod, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _norm_or_none(mod):
    return None if mod is None or isinstance(mod, nn.Identity) else mod


def find_attention(module: nn.Module, under: str) -> Attention | None:
    """The first attention module at or below the module path `under` (a block, an attention
    module, or its qkv / key projection: then the attention module holding it); None if none."""
    modules = dict(module.named_modules())
    if under not in modules:
        return None
    # A projection was named: look from its parent, so the whole attention module is described.
    parent, _, leaf = under.rpartition(".")
    if isinstance(modules[under], nn.Linear) and (leaf == "qkv" or leaf in K_NAMES + Q_NAMES):
        under = parent
    for rel, mod in modules[under].named_modules():
        path = f"{under}.{rel}" if rel and under else (rel or under)
        prefix = f"{path}." if path else ""
        if isinstance(mod, nn.MultiheadAttention):
            return Attention(path, "mha", mod.num_heads, mod.head_dim ** -0.5)
        heads = _heads_of(mod)
        qkv = getattr(mod, "qkv", None)
        if isinstance(qkv, nn.Linear) and qkv.out_features % 3 == 0:
            a = qkv.out_features // 3
            scale = getattr(mod, "scale", None)
            if not isinstance(scale, float):
                scale = (a // heads) ** -0.5 if heads else None
            return Attention(path, "linear", heads, scale, f"{prefix}qkv", f"{prefix}qkv",
                             slice(0, a), slice(a, 2 * a),
                             _norm_or_none(getattr(mod, "q_norm", None)),
                             _norm_or_none(getattr(mod, "k_norm", None)))
        q, k = _child_linear(mod, Q_NAMES), _child_linear(mod, K_NAMES)
        if q and k:
            kdim = getattr(mod, k).out_features
            scale = getattr(mod, "scaling", getattr(mod, "scale", None))
            if not isinstance(scale, float):
                scale = (kdim // heads) ** -0.5 if heads else None
            return Attention(path, "linear", heads, scale, prefix + q, prefix + k,
                             q_norm=_norm_or_none(getattr(mod, "q_norm", None)),
                             k_norm=_norm_or_none(getattr(mod, "k_norm", None)))
    return None


def check_attention(model, attn: Attention | None, where: str) -> Attention:
    """`attn` if CLS attention maps can be computed from it, else an InputError saying why."""
    if attn is None:
        raise InputError(f"{model.spec}: no attention module found in {where!r}; attention maps "
                         "need a ViT (use --kind pca for CNNs), or name an attention module "
                         "with --layer")
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
        ran = {i.name for i in model.layers()}
        for name in {attn.q_name, attn.k_name}:
            if name not in ran:
                raise InputError(f"{model.spec}: {name!r} never runs as a module (its weights are "
                                 "used directly); no attention maps for this model")
    return attn


def attention_taps(attn: Attention) -> dict[str, set[str]]:
    """layer -> reductions the engine computes so `queries_and_keys` can rebuild q and k."""
    if attn.style == "mha":
        return {attn.name: {"input:tokens"}}
    return {name: {"tokens"} for name in {attn.q_name, attn.k_name}}


def queries_and_keys(attn: Attention, features: dict[str, dict[str, torch.Tensor]],
                     module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """One model's batch taps (layer -> reduction -> tensor) -> q, k, each (B, T, C) batch first."""
    if attn.style == "mha":
        mha: nn.MultiheadAttention = dict(module.named_modules())[attn.name]
        x = features[attn.name]["input:tokens"]
        e = mha.embed_dim
        if mha._qkv_same_embed_dim:
            wq, wk = mha.in_proj_weight[:e], mha.in_proj_weight[e:2 * e]
        else:
            wq, wk = mha.q_proj_weight, mha.k_proj_weight
        bq = bk = None
        if mha.in_proj_bias is not None:
            bq, bk = mha.in_proj_bias[:e], mha.in_proj_bias[e:2 * e]
        with torch.inference_mode():
            x = x.to(wq.device, wq.dtype)
            return F.linear(x, wq, bq), F.linear(x, wk, bk)
    q = features[attn.q_name]["tokens"]
    k = features[attn.k_name]["tokens"]
    return (q[..., attn.q_slice] if attn.q_slice is not None else q,
            k[..., attn.k_slice] if attn.k_slice is not None else k)


def _heads_split(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, C) -> (B, heads, T, C / heads)."""
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def cls_attention(q: torch.Tensor, k: torch.Tensor, attn: Attention, prefix: int,
                  grid: tuple[int, int]) -> np.ndarray:
    """q, k: (B, T, C) batch first -> (B, heads, rows, cols): the class token's attention to
    each patch (softmax over all tokens, so a map sums to 1 minus the prefix tokens' share)."""
    with torch.inference_mode():
        qh, kh = _heads_split(q.float(), attn.heads), _heads_split(k.float(), attn.heads)
        if attn.q_norm is not None:
            qh = attn.q_norm(qh.to(next(attn.q_norm.parameters(), qh).device))
        if attn.k_norm is not None:
            kh = attn.k_norm(kh.to(next(attn.k_norm.parameters(), kh).device))
        logits = torch.einsum("bhd,bhtd->bht", qh[:, :, 0], kh.to(qh.device)) * attn.scale
        weights = logits.softmax(dim=-1)
    b, h, n = weights.shape
    if n != prefix + grid[0] * grid[1]:
        raise InputError(f"{attn.name!r}: {n} tokens do not make {prefix} prefix tokens and a "
                         f"{grid[0]}x{grid[1]} grid")
    return weights[:, :, prefix:].reshape(b, h, *grid).cpu().numpy()
