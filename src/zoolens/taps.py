"""Taps: what a layer's output looks like (`TapInfo`), how to bring it to a uniform form, and
which layers a selector like `blocks` or `layer*` names.

Uniform forms:
- map:    (B, C, H, W)  CNN feature maps (channels-last outputs are permuted here);
- tokens: (B, T, D)     split into prefix tokens (B, P, D) (CLS, registers) and a patch grid
                        (B, D, h, w); sequence-first (T, B, D) outputs are transposed first;
- vector: (B, D)        pooled outputs, logits.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from torch import nn

from .errors import InputError, UnknownLayerError

__all__ = ["TapInfo", "POOLS", "REDUCTIONS", "OUTPUT", "PENULTIMATE", "first_tensor",
           "describe_output",
           "to_uniform", "pool", "pooled_shape", "effective_pool", "find_blocks", "select_layers",
           "hooks"]

POOLS = ("mean", "cls", "none")  # what a layer is stored as: pooled vector or full map
# What the engine can reduce a tapped output to inside its hook: a pooling, the whole token
# sequence batch first ("tokens", prefix tokens included), or the same of the module's input
# ("input:tokens"; what an nn.MultiheadAttention computes its queries and keys from).
REDUCTIONS = POOLS + ("tokens", "input:tokens")
# The model's forward output (logits, an image embedding) as a tappable layer of its own, and,
# for a classifier, its head's input: the penultimate features.
OUTPUT = "output"
PENULTIMATE = "penultimate"


@dataclass(frozen=True)
class TapInfo:
    """One tappable layer: its module path and the shape of its output for one image."""

    name: str
    layout: str  # "map" | "tokens" | "vector" | "other"
    channels: int
    grid: tuple[int, int] | None  # (rows, cols) of the spatial map or patch grid
    prefix_tokens: int = 0  # CLS + registers, dropped from the grid
    stride: float | None = None  # input pixels per grid row
    calls: int = 1  # module calls per forward pass; the last call's output is kept
    raw_shape: tuple[int, ...] = ()  # output shape for one image (batch axis removed)
    batch_axis: int = 0  # 1 for sequence-first (T, B, D) token outputs
    channels_last: bool = False  # 4D output is (B, H, W, C)

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def poolable(self) -> bool:
        return self.layout in ("map", "tokens", "vector")


def first_tensor(output) -> torch.Tensor | None:
    """The tensor a module's output stands for: itself, the first tensor of a tuple/list,
    `last_hidden_state` or the first tensor value of a dict-like output, a diffusers `.sample`."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "keys") and hasattr(output, "values"):
        if "last_hidden_state" in output.keys():
            return output["last_hidden_state"]
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            t = first_tensor(item)
            if t is not None:
                return t
    sample = getattr(output, "sample", None)
    return sample if isinstance(sample, torch.Tensor) else None


def describe_output(name: str, t: torch.Tensor, batch: int, *, input_size: tuple[int, int],
                    prefix_tokens: int = 0, patch_grid: tuple[int, int] | None = None,
                    sequence_first: bool = False, channels_last: bool = False,
                    calls: int = 1) -> TapInfo:
    """Classify one dry-run output (for a batch of `batch` images) into a TapInfo.

    The batch axis of token outputs is detected, not assumed: some open_clip versions run their
    transformer sequence-first. The `sequence_first` hint only breaks the tie T == B."""
    shape = tuple(t.shape)
    batch_axis = 0
    if t.ndim == 3 and shape[1] == batch and (shape[0] != batch or sequence_first):
        batch_axis, shape = 1, (shape[1], shape[0], shape[2])
    per_image = shape[1:]
    if not shape or shape[0] != batch:
        return TapInfo(name, "other", 0, None, calls=calls, raw_shape=per_image)
    if t.ndim == 4:
        c, h, w = (shape[3], shape[1], shape[2]) if channels_last else shape[1:]
        return TapInfo(name, "map", c, (h, w), 0, input_size[0] / h, calls, per_image,
                       channels_last=channels_last)
    if t.ndim == 3:
        prefix, grid = _token_grid(shape[1], prefix_tokens, patch_grid)
        stride = input_size[0] / grid[0] if grid else None
        return TapInfo(name, "tokens", shape[2], grid, prefix, stride, calls, per_image, batch_axis)
    if t.ndim == 2:
        return TapInfo(name, "vector", shape[1], None, calls=calls, raw_shape=per_image)
    return TapInfo(name, "other", 0, None, calls=calls, raw_shape=per_image)


def _token_grid(n_tok: int, prefix: int, patch_grid: tuple[int, int] | None):
    """Split a token count into (prefix tokens, patch grid) as well as the facts allow."""
    if patch_grid is not None:
        hw = patch_grid[0] * patch_grid[1]
        if n_tok == prefix + hw:
            return prefix, tuple(patch_grid)
        if n_tok == hw:
            return 0, tuple(patch_grid)
    for p in (prefix, 0):
        side = math.isqrt(max(n_tok - p, 0))
        if side and side * side == n_tok - p:
            return p, (side, side)
    return 0, None


def _batch_first(t: torch.Tensor, info: TapInfo) -> torch.Tensor:
    return t.transpose(0, 1) if info.batch_axis == 1 else t


def to_uniform(t: torch.Tensor, info: TapInfo):
    """A raw layer output -> (grid, prefix): grid (B, C, h, w) or None, prefix (B, P, D) or
    None. Views, not copies."""
    if info.layout == "map":
        return (t.permute(0, 3, 1, 2) if info.channels_last else t), None
    if info.layout == "tokens":
        t = _batch_first(t, info)
        p = info.prefix_tokens
        prefix = t[:, :p] if p else None
        if info.grid is None:
            return None, prefix
        b, _, d = t.shape
        return t[:, p:].transpose(1, 2).reshape(b, d, *info.grid), prefix
    return None, None


def effective_pool(info: TapInfo, how: str) -> str:
    """The pooling `pool` really applies: vectors are kept as they are, and 'cls' falls back
    to 'mean' on layers without a CLS token (CNN maps)."""
    if how not in REDUCTIONS:
        raise InputError(f"unknown pooling {how!r}; use one of {', '.join(POOLS)}")
    if how in ("tokens", "input:tokens"):
        if info.layout != "tokens":
            raise InputError(f"layer {info.name!r} outputs no tokens ({info.layout}); "
                             f"'{how}' needs a transformer layer")
        return how
    if info.layout == "vector":
        return "none"
    if how == "cls" and info.prefix_tokens == 0:
        return "mean"
    return how


def pooled_shape(info: TapInfo, how: str) -> tuple[int, ...]:
    """Per-image shape of `pool(..., how)` on this layer."""
    how = effective_pool(info, how)
    if how in ("tokens", "input:tokens"):
        return tuple(info.raw_shape)  # (T, D): raw_shape is already batch-first
    if how == "none" and info.layout != "vector":
        if info.grid is None:
            raise InputError(f"layer {info.name!r} has no spatial grid to keep "
                             f"(output {info.raw_shape}); use pool 'mean' or 'cls'")
        return (info.channels, *info.grid)
    return (info.channels,)


def pool(t: torch.Tensor, info: TapInfo, how: str) -> torch.Tensor:
    """One raw layer output -> float32 (B, C) for 'mean'/'cls', (B, C, h, w) for 'none'.
    Always a new tensor, so in-place operations later in the forward pass cannot change it."""
    t = t.detach()
    how = effective_pool(info, how)
    if info.layout == "vector":
        return t.float().clone()
    if how in ("tokens", "input:tokens"):
        return _batch_first(t, info).to(torch.float32, memory_format=torch.contiguous_format,
                                         copy=True)
    grid, prefix = to_uniform(t, info)
    if how == "cls":
        return prefix[:, 0].float().clone()
    if how == "none":
        pooled_shape(info, how)  # raises for token layers without a grid
        return grid.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    if grid is not None:  # mean over the map, or over the patch tokens (prefix excluded)
        return grid.float().mean(dim=(2, 3))
    return _batch_first(t, info)[:, info.prefix_tokens:].float().mean(dim=1)


# Leaf modules whose repetition does not make a "block" (a Sequential of convs is no stage).
_PRIMITIVE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d,
              nn.LayerNorm, nn.GroupNorm, nn.Dropout, nn.Identity, nn.ReLU, nn.GELU, nn.SiLU,
              nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Embedding, nn.Sigmoid,
              nn.Tanh, nn.LeakyReLU, nn.Hardswish, nn.ReLU6, nn.Flatten, nn.Softmax)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def find_blocks(module: nn.Module) -> list[str]:
    """The model's main blocks as a person would pick them: children of containers that repeat
    one non-primitive class, innermost level only. ResNet-50 -> layer1.0 .. layer4.2 (16 blocks);
    ViT -> blocks.0 .. blocks.11; Swin/ConvNeXt -> the blocks inside each stage."""
    candidates: list[str] = []
    for path, mod in module.named_modules():
        if not isinstance(mod, _CONTAINERS):
            continue
        kids = list(mod.named_children())
        classes = [type(m) for _, m in kids]
        for child_name, child in kids:
            if isinstance(child, _PRIMITIVE) or classes.count(type(child)) < 2:
                continue
            if isinstance(child, _CONTAINERS) and not any(
                    not isinstance(c, _PRIMITIVE) for c in child.children()):
                continue  # a Sequential of primitives (e.g. a downsample) is no block
            candidates.append(f"{path}.{child_name}" if path else child_name)
    return [c for c in candidates if not any(o.startswith(c + ".") for o in candidates)]


_SLICE = re.compile(r"^(all|blocks)\[(-?\d*)(?::(-?\d*))?(?::(-?\d*))?\]$")


def select_layers(infos: Iterable[TapInfo], selector: str | Iterable[str], *,
                  blocks: list[str], model_name: str = "model") -> list[str]:
    """Resolve a selector to layer names, in model order. A selector is `all`, `blocks`, an
    exact name, a glob (`layer*`, `blocks.*.mlp.act`), a slice (`blocks[-4:]`, `blocks[2]`), or
    a comma-separated list of these. Raises UnknownLayerError naming the model and what exists."""
    infos = list(infos)
    order = {i.name: k for k, i in enumerate(infos)}
    tappable = [i.name for i in infos if i.poolable]
    parts = selector.split(",") if isinstance(selector, str) else list(selector)
    chosen: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        m = _SLICE.match(part)
        base = m.group(1) if m else part
        if base == "all":
            names = tappable
        elif base == "blocks":
            names = [b for b in blocks if b in order]
        elif part in order:
            names = [part]
        elif any(ch in part for ch in "*?["):
            names = [n for n in tappable if fnmatch.fnmatchcase(n, part)]
        else:
            names = []
        if m:
            a, b, c = (int(g) if g else None for g in m.groups()[1:])
            bad = [v for v in (a, b) if v is not None and not -len(names) <= v <= len(names)]
            if bad or (b is None and c is None and ":" not in part and a == len(names)):
                raise UnknownLayerError(f"{part!r}: {model_name} has {len(names)} {base} "
                                        f"(indices {-len(names)}..{len(names) - 1}); "
                                        f"e.g. {base}[-{min(4, len(names))}:]")
            if b is None and c is None and ":" not in part:
                names = names[a:a + 1 if a != -1 else None] if a is not None else names
            else:
                names = names[slice(a, b, c)]
        if not names:
            raise UnknownLayerError(_unknown_layer_message(part, model_name, tappable, blocks))
        chosen += [n for n in names if n not in chosen]
    if not chosen:
        raise UnknownLayerError(f"empty layer selector for {model_name}; use all, blocks or names")
    return sorted(chosen, key=order.__getitem__)


def _compress(names: list[str], limit: int = 12) -> str:
    """'blocks.0..blocks.11' style summary of a list of layer names."""
    if not names:
        return "(none)"
    runs: list[list[str]] = []
    for n in names:
        head, _, tail = n.rpartition(".")
        if runs and tail.isdigit():
            ph, _, pt = runs[-1][-1].rpartition(".")
            if ph == head and pt.isdigit() and int(pt) + 1 == int(tail):
                runs[-1].append(n)
                continue
        runs.append([n])
    text = [r[0] if len(r) == 1 else f"{r[0]}..{r[-1]}" for r in runs]
    more = f", ... ({len(names)} layers in all)" if len(text) > limit else ""
    return ", ".join(text[:limit]) + more


def _unknown_layer_message(part: str, model_name: str, tappable: list[str],
                           blocks: list[str]) -> str:
    close = difflib.get_close_matches(part, tappable, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (f"unknown layer {part!r} in {model_name}{hint}; have blocks {_compress(blocks)}; "
            f"layers {_compress(tappable)} (all of them: `zoolens layers {model_name}`)")


class hooks:
    """Context manager: forward hooks calling `fn(name, output)` on the named submodules, and,
    for `input_names`, pre-hooks calling `input_fn(name, first input tensor)`.

    Nothing is cloned here: `fn` reduces the output at once (see `pool`), which is both cheap
    and safe against in-place operations later in the forward pass."""

    def __init__(self, module: nn.Module, names: Iterable[str], fn, *,
                 input_names: Iterable[str] = (), input_fn=None):
        self.module, self.names, self.fn = module, list(names), fn
        self.input_names, self.input_fn = list(input_names), input_fn
        self._handles: list = []

    def __enter__(self):
        modules = dict(self.module.named_modules())
        for name in self.names:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        for name in self.input_names:
            self._handles.append(modules[name].register_forward_pre_hook(
                self._pre_hook(name), with_kwargs=True))
        return self

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.fn(name, output)
            return None  # never replace the module's output

        return hook

    def _pre_hook(self, name: str):
        def hook(_module, args, kwargs):
            self.input_fn(name, first_tensor(list(args) + list(kwargs.values())))
            return None  # never replace the module's inputs

        return hook

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False
