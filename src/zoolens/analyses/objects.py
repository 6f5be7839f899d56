"""Object discovery on a model: patch features of one layer -> MaskCut -> masks at image size.

`discover(model, images)` runs the model over the images in batches, takes one layer's patch
features per image, and cuts them with `discovery.maskcut` (TokenCut's normalized cut, repeated
for up to `objects` disjoint objects). The array-level steps live in `discovery.py`; this module
chooses the features, feeds the model, and brings the masks back onto the decoded image.

Which features (`patch_layer`). TokenCut and MaskCut cut the keys of the last attention block:
for a ViT whose block computes keys in a module of its own (timm's fused `attn.qkv` Linear, whose
output holds q|k|v; Hugging Face's `k_proj` / `key`), that module is tapped and its key channels
kept. Where the keys are never a module output (`nn.MultiheadAttention` in open_clip, or a block
calling `F.linear` itself) the block's output tokens stand in, and the result says so. CNNs give
the last block's feature map. `layer=` picks another module; `features="tokens"` the block output.

Where the masks go (`_Window`). A model sees its preprocessed input, often a centre crop of a
resized image (timm's `crop_pct`), so stretching the patch grid over the whole image misplaces
masks by several percent. The preprocessing is probed once per image size with coordinate ramps
(red = x, green = y): a least-squares fit of the ramps it returns gives the affine map from input
pixels to image pixels, valid for any resize / crop / flip pipeline. Image pixels outside the
input window get no mask. A preprocessing the probe cannot fit (not affine) falls back to
stretching the grid over the image, with a note.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..engine import progress_bar
from ..errors import InputError, UnknownLayerError
from ..sources import BadImage, ImageSource, open_source
from ..taps import TapInfo, first_tensor, hooks, pool
from .discovery import mask_bbox, maskcut

__all__ = ["write_discovery", "PatchLayer", "ImageObjects", "patch_layer", "discover", "iter_discover",
           "FEATURES"]

log = logging.getLogger("zoolens")

FEATURES = ("keys", "tokens")  # what `features=` may ask for; a CNN map is always "map"

_Q_NAMES = ("q_proj", "query", "to_q")  # Hugging Face 5.x / 4.x, diffusers-style attention
_K_NAMES = ("k_proj", "key", "to_k")


# --------------------------------------------------------------------------------------------------
# which layer, which channels


class PatchLayer(NamedTuple):
    """The tap `discover` cuts: `layer` (module path), the `channels` of its output kept (the key
    part of a fused qkv output), and `feature`: "keys", "tokens" or "map"."""

    layer: str
    channels: slice
    feature: str


@dataclass(frozen=True)
class _Attention:
    """Where one attention module's queries and keys come from.

    style "linear": q and k are outputs of Linear modules (`q_name`/`k_name`, maybe the same fused
    qkv module, with channel slices). style "mha": an `nn.MultiheadAttention`, whose projections are
    computed from its inputs and weights (its output holds no keys)."""

    name: str
    style: str
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
        child = getattr(mod, n, None)
        if isinstance(child, nn.Linear):
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


def _find_attention(module: nn.Module, under: str) -> _Attention | None:
    """The first attention module at or below the module path `under` (a block, an attention
    module, or its qkv / key projection: then the attention module holding it)."""
    modules = dict(module.named_modules())
    if under not in modules:
        return None
    # A projection was named: look from its parent, so the whole attention module is described.
    parent, _, leaf = under.rpartition(".")
    if isinstance(modules[under], nn.Linear) and (leaf == "qkv" or leaf in _K_NAMES + _Q_NAMES):
        under = parent
    base = modules[under]
    for rel, mod in base.named_modules():
        path = f"{under}.{rel}" if rel and under else (rel or under)
        prefix = f"{path}." if path else ""
        if isinstance(mod, nn.MultiheadAttention):
            return _Attention(path, "mha", mod.num_heads, mod.head_dim ** -0.5)
        heads = _heads_of(mod)
        qkv = getattr(mod, "qkv", None)
        if isinstance(qkv, nn.Linear) and qkv.out_features % 3 == 0:
            a = qkv.out_features // 3
            scale = getattr(mod, "scale", None)
            if not isinstance(scale, float):
                scale = (a // heads) ** -0.5 if heads else None
            return _Attention(path, "linear", heads, scale, f"{prefix}qkv", f"{prefix}qkv",
                              slice(0, a), slice(a, 2 * a),
                              _norm_or_none(getattr(mod, "q_norm", None)),
                              _norm_or_none(getattr(mod, "k_norm", None)))
        q, k = _child_linear(mod, _Q_NAMES), _child_linear(mod, _K_NAMES)
        if q and k:
            kdim = getattr(mod, k).out_features
            scale = getattr(mod, "scaling", getattr(mod, "scale", None))
            if not isinstance(scale, float):
                scale = (kdim // heads) ** -0.5 if heads else None
            return _Attention(path, "linear", heads, scale, prefix + q, prefix + k,
                              q_norm=_norm_or_none(getattr(mod, "q_norm", None)),
                              k_norm=_norm_or_none(getattr(mod, "k_norm", None)))
    return None


def _ran(model, name: str) -> TapInfo | None:
    """The layer's TapInfo if the module runs in the forward pass (hooks fire on it)."""
    try:
        return model.layer(name)
    except UnknownLayerError:
        return None


def _default_layer(model) -> str:
    if model.blocks:
        return model.blocks[-1]
    gridded = [i for i in model.layers() if i.layout in ("map", "tokens") and i.grid is not None]
    if not gridded:
        raise InputError(f"{model.spec}: no layer with a spatial grid to cut; pass layer=")
    return gridded[-1].name


def patch_layer(model, layer: str | None = None, *, features: str = "keys") -> PatchLayer:
    """The layer and channels whose patch features `discover` cuts.

    model: a zoolens Model. layer: a module path (a block, an attention module, a qkv or key
    projection, any layer with a grid); None: the model's last block. features: "keys" (TokenCut's
    choice: the keys of the attention inside that block, when a module outputs them) or "tokens"
    (the layer's own output). Feature maps of CNNs are "map" whatever `features` says.
    Returns PatchLayer(layer, channels, feature); `(name, channels, feature)` unpacks it.
    """
    if features not in FEATURES:
        raise InputError(f"features: expected one of {', '.join(FEATURES)}, got {features!r}")
    name = _default_layer(model) if layer is None else layer
    info = model.layer(name)  # UnknownLayerError lists what exists
    if info.layout == "map":
        return _checked(model, PatchLayer(name, slice(0, info.channels), "map"), info)
    if info.layout != "tokens" or info.grid is None:
        raise InputError(f"layer {name!r} of {model.spec} has no patch grid (output "
                         f"{info.raw_shape}); choose a block or a map layer (zoolens layers "
                         f"{model.spec})")
    if features == "keys":
        attn = _find_attention(model.module, name)
        if attn is not None and attn.style == "linear":
            k_info = _ran(model, attn.k_name)
            if k_info is not None and k_info.layout == "tokens" and k_info.grid is not None:
                ch = attn.k_slice if attn.k_slice is not None else slice(0, k_info.channels)
                return _checked(model, PatchLayer(attn.k_name, ch, "keys"), k_info)
    return _checked(model, PatchLayer(name, slice(0, info.channels), "tokens"), info)


def _checked(model, pl: PatchLayer, info: TapInfo) -> PatchLayer:
    if info.grid[0] * info.grid[1] < 2:
        raise InputError(f"layer {pl.layer!r} of {model.spec} has a {info.grid[0]}x{info.grid[1]} "
                         "grid: a cut needs at least 2 patches; choose an earlier layer")
    return pl


def _fallback_note(model, pl: PatchLayer, features: str) -> str | None:
    if features == "keys" and pl.feature == "tokens":
        return (f"{model.spec}: no module outputs the keys of the attention in {pl.layer!r} "
                "(e.g. nn.MultiheadAttention); cut its output tokens instead")
    return None


# --------------------------------------------------------------------------------------------------
# where the model's input lies in the image


@dataclass(frozen=True)
class _Window:
    """Affine map from model-input pixels to image pixels: image coordinate = a * input + b (in
    continuous coordinates, pixel k spanning [k, k + 1)), per axis; `fitted` False: stretched."""

    ay: float
    by: float
    ax: float
    bx: float
    fitted: bool = True

    def index_maps(self, size: tuple[int, int], input_size: tuple[int, int],
                   grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) image -> (rows (H,), cols (W,)): each image row/column's patch row/column on the
        grid, -1 where it lies outside the model's input."""
        return (_axis_map(size[0], self.ay, self.by, input_size[0], grid[0]),
                _axis_map(size[1], self.ax, self.bx, input_size[1], grid[1]))

    def to_list(self) -> list[float]:
        return [self.ay, self.by, self.ax, self.bx]


def _axis_map(n: int, a: float, b: float, n_in: int, cells: int) -> np.ndarray:
    u = (np.arange(n) + 0.5 - b) / a  # image pixel centre -> input coordinate
    idx = np.floor(u * cells / n_in).astype(np.int64)
    idx[(u < 0) | (u >= n_in)] = -1
    return idx


def _stretch(size: tuple[int, int], input_size: tuple[int, int]) -> _Window:
    return _Window(size[0] / input_size[0], 0.0, size[1] / input_size[1], 0.0, fitted=False)


class _WindowProbe:
    """Finds, per image size, where a preprocessing's output lies in the image (cached)."""

    def __init__(self, preprocess, input_size: tuple[int, int]):
        self.preprocess, self.input_size = preprocess, tuple(input_size)
        self._levels: tuple[np.ndarray, np.ndarray] | None = None
        self._cache: dict[tuple[int, int], _Window] = {}

    def _channel_levels(self, size):
        """Per-channel output for an all-black and an all-white image: the normalisation."""
        if self._levels is None:
            h, w = size
            lo = self.preprocess(Image.new("RGB", (w, h), (0, 0, 0)))
            hi = self.preprocess(Image.new("RGB", (w, h), (255, 255, 255)))
            self._levels = (lo.float().flatten(1).median(1).values.numpy(),
                            hi.float().flatten(1).median(1).values.numpy())
        return self._levels

    def __call__(self, size: tuple[int, int]) -> _Window:
        size = (int(size[0]), int(size[1]))
        if size not in self._cache:
            try:
                window, why = self._probe(size), "not an affine resampling"
            except Exception as exc:  # an exotic preprocessing
                window, why = _stretch(size, self.input_size), f"{type(exc).__name__}: {exc}"
            if not window.fitted:
                log.warning("cannot tell where the preprocessing takes its input from in %dx%d "
                            "images (%s); masks and maps are stretched over the whole image",
                            size[1], size[0], why)
            self._cache[size] = window
        return self._cache[size]

    def _probe(self, size: tuple[int, int]) -> _Window:
        h, w = size
        lo, hi = self._channel_levels(size)
        span = hi - lo
        if np.any(np.abs(span[:2]) < 1e-6):
            return _stretch(size, self.input_size)
        # Dithered ramps: row y adds its own offset d[y] in [0, 1) before flooring, so the mean over
        # rows of the red channel is exactly 254 (x + 0.5) / w: no uint8 staircase in the fit.
        ramp = np.empty((h, w, 3), dtype=np.uint8)
        ramp[..., 0] = np.floor(_RAMP * (np.arange(w) + 0.5)[None, :] / w + _dither(h)[:, None])
        ramp[..., 1] = np.floor(_RAMP * (np.arange(h) + 0.5)[:, None] / h + _dither(w)[None, :])
        ramp[..., 2] = 128
        out = self.preprocess(Image.fromarray(ramp)).float().numpy()
        if out.ndim != 3 or tuple(out.shape[1:]) != self.input_size:
            return _stretch(size, self.input_size)
        # Image coordinate of each input pixel centre, averaged along the other axis.
        xs = ((out[0] - lo[0]) / span[0] * 255.0 / _RAMP * w).mean(axis=0)
        ys = ((out[1] - lo[1]) / span[1] * 255.0 / _RAMP * h).mean(axis=1)
        fx, fy = _fit_axis(xs, w), _fit_axis(ys, h)
        if fx is None or fy is None:
            return _stretch(size, self.input_size)
        return _Window(fy[0], fy[1], fx[0], fx[1])


_RAMP = 254.0  # top of the ramps: 254 + a dither below 1 still floors into uint8


def _dither(n: int) -> np.ndarray:
    """n offsets spread evenly over [0, 1) in any window of rows (golden-ratio sequence)."""
    return np.modf((np.arange(n) + 1) * 0.6180339887498949)[0]


def _fit_axis(coords: np.ndarray, n: int) -> tuple[float, float] | None:
    """Least squares coords[k] = a (k + 0.5) + b, away from the image's edges (where resampling
    kernels meet the clamped border and bend the ramp); None if that is no straight line."""
    m = coords.shape[0]
    k = np.arange(m) + 0.5
    inner = slice(m // 4, max(m - m // 4, m // 4 + 2))  # first guess: the middle half
    if k[inner].size < 2:
        return None
    a, b = np.polyfit(k[inner], coords[inner], 1)
    if not np.isfinite([a, b]).all() or abs(a) < 1e-9:
        return None
    # Refit on every input pixel whose kernel stays inside the image: bicubic reaches 2 pixels of
    # the finer of the two grids, antialiased downscaling 2 pixels of the coarser one.
    margin = 2.0 * max(1.0, abs(a)) + 1.0
    keep = (a * k + b >= margin) & (a * k + b <= n - margin)
    if keep.sum() >= max(2, inner.stop - inner.start):
        a, b = np.polyfit(k[keep], coords[keep], 1)
    else:
        keep = np.zeros(m, dtype=bool)
        keep[inner] = True
    # Rounding of the resampled uint8 image leaves about half a level per pixel; allow that.
    tol = 0.5 + 2.0 * n / 255.0
    if np.abs(coords[keep] - (a * k[keep] + b)).max() > tol:
        return None
    return float(a), float(b)


# --------------------------------------------------------------------------------------------------
# feeding the model


class _Decode(Dataset):
    """Item i -> (index, input (3, h, w) or None, reason, (H, W), image (H, W, 3) uint8 or None,
    window). Decoding, preprocessing and the window probe (one more preprocessing call per new
    image size, cached) run once per image, in a worker when there are workers."""

    def __init__(self, source: ImageSource, preprocess, input_size, keep_images: bool):
        self.source, self.preprocess, self.keep = source, preprocess, keep_images
        self.probe = _WindowProbe(preprocess, input_size)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index: int):
        try:
            decoded = self.source.decode(index)
            x = self.preprocess(decoded.image)
        except BadImage as exc:
            return index, None, str(exc), None, None, None
        except Exception as exc:  # a preprocessing that chokes on one image: skip it, say why
            return index, None, f"preprocessing failed: {type(exc).__name__}: {exc}", None, None, None
        img = decoded.image
        size = (img.height, img.width)
        return index, x, None, size, np.asarray(img) if self.keep else None, self.probe(size)


def _collate(items):
    return items


@dataclass
class _Chunk:
    indices: list[int]
    x: torch.Tensor | None  # (B, 3, h, w) on the model's device
    sizes: list[tuple[int, int]]
    images: list[np.ndarray | None]
    windows: list[_Window]
    skipped: list[dict] = field(default_factory=list)  # {"index", "id", "reason"}


def _as_model(model, device):
    from ..zoo.model import Model
    from ..zoo.registry import load, resolve_device

    if isinstance(model, str):
        model = load(model, device=device)
    elif not isinstance(model, Model):
        raise InputError(f"model: expected a zoolens Model or a spec string, got "
                         f"{type(model).__name__}")
    if device is not None:
        dev = resolve_device(device)
        if dev != model.device:
            model.module.to(dev)
            model.device = dev
    return model


def _stream(model, source: ImageSource, *, batch_size: int, num_workers: int,
            keep_images: bool, progress: bool, desc: str) -> Iterator[_Chunk]:
    """Batches of preprocessed inputs, decoded once; unusable images reported in `skipped`."""
    if batch_size < 1:
        raise InputError(f"batch_size: expected at least 1, got {batch_size}")
    dataset = _Decode(source, model.preprocess, model.input_size, keep_images)
    loader = DataLoader(dataset, batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, collate_fn=_collate)
    bar = progress_bar(len(source), progress, desc)
    try:
        for items in loader:
            good = [it for it in items if it[1] is not None]
            skipped = [{"index": it[0], "id": source.ids[it[0]], "reason": it[2]}
                       for it in items if it[1] is None]
            for s in skipped:
                log.warning("skipped %s: %s", s["id"], s["reason"])
            x = None
            if good:
                shapes = {tuple(it[1].shape) for it in good}
                if len(shapes) > 1:
                    raise InputError(f"{model.spec}: its preprocessing gives inputs of different "
                                     f"sizes {sorted(shapes)}; it must resize or crop to one size")
                x = torch.stack([it[1] for it in good]).to(model.device)
            yield _Chunk([it[0] for it in good], x, [it[3] for it in good],
                         [it[4] for it in good], [it[5] for it in good], skipped)
            bar.update(len(items))
    finally:
        bar.close()


def _patch_features(model, pl: PatchLayer, info: TapInfo, x: torch.Tensor) -> np.ndarray:
    """One batch -> (B, P, D) float32 patch features of the chosen tap (prefix tokens dropped)."""
    got: dict[str, torch.Tensor] = {}

    def grab(name, output):
        got[name] = pool(first_tensor(output), info, "none")  # (B, C, h, w), a copy

    with torch.inference_mode(), hooks(model.module, [pl.layer], grab):
        model.forward(x)
    grid = got[pl.layer][:, pl.channels]
    if tuple(grid.shape[2:]) != tuple(info.grid):
        raise InputError(f"{model.spec}: layer {pl.layer!r} gives a {tuple(grid.shape[2:])} grid "
                         f"on inputs of size {tuple(x.shape[2:])}, but {tuple(info.grid)} on the "
                         f"model's input size {model.input_size}; its preprocessing must resize "
                         "or crop to one size")
    b, d = grid.shape[:2]
    return grid.reshape(b, d, -1).transpose(1, 2).float().cpu().numpy()


# --------------------------------------------------------------------------------------------------
# results


@dataclass
class ImageObjects:
    """The objects found in one image, with the settings used.

    patch_masks: (K, rows, cols) bool, disjoint, in discovery order. `masks` gives them at the
    image's size (K, H, W) (computed on access). areas: (K,) pixels; boxes: (K, 4) int
    `(x0, y0, x1, y1)` in image pixels, ends exclusive. scores: (K,) `1 - ncut / 2` in [0, 1]
    (1 = a perfectly separated object, 0 = no separation); ncut: the normalized-cut value;
    eigenvalues: lambda_2 of each round's graph. window: `(ay, by, ax, bx)`: image coordinate =
    a * input coordinate + b along y and x (the model's input within the image). skipped: the
    reason when the image could not be used (then K = 0).
    """

    index: int
    id: str
    size: tuple[int, int]
    patch_masks: np.ndarray
    scores: np.ndarray
    ncut: np.ndarray
    eigenvalues: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray
    window: tuple[float, float, float, float]
    grid: tuple[int, int]
    input_size: tuple[int, int]
    stop_reason: str
    model: str
    layer: str
    feature: str
    tau: float
    eps: float
    objects: int
    skipped: str | None = None

    def __len__(self) -> int:
        return int(self.patch_masks.shape[0])

    def index_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows (H,), cols (W,)): each image row/column's patch row/column, -1 outside."""
        return _Window(*self.window).index_maps(self.size, self.input_size, self.grid)

    @property
    def masks(self) -> np.ndarray:
        """(K, H, W) bool masks at the image's size."""
        return _to_image(self.patch_masks, *self.index_maps())

    def to_dict(self) -> dict:
        """A JSON-ready dict (patch masks as 0/1 lists; image masks follow from the window)."""
        return {"index": self.index, "id": self.id, "size": list(self.size),
                "patch_masks": self.patch_masks.astype(int).tolist(),
                "scores": self.scores.tolist(), "ncut": self.ncut.tolist(),
                "eigenvalues": self.eigenvalues.tolist(), "areas": self.areas.tolist(),
                "boxes": self.boxes.tolist(), "window": list(self.window),
                "grid": list(self.grid), "input_size": list(self.input_size),
                "stop_reason": self.stop_reason, "model": self.model, "layer": self.layer,
                "feature": self.feature, "tau": self.tau, "eps": self.eps,
                "objects": self.objects, "skipped": self.skipped}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> "ImageObjects":
        return cls.from_dict(json.loads(s))

    @classmethod
    def from_dict(cls, d: dict) -> "ImageObjects":
        grid = tuple(d["grid"])
        pm = np.asarray(d["patch_masks"], dtype=bool).reshape(-1, *grid)
        return cls(index=int(d["index"]), id=d["id"], size=tuple(d["size"]), patch_masks=pm,
                   scores=np.asarray(d["scores"], float), ncut=np.asarray(d["ncut"], float),
                   eigenvalues=np.asarray(d["eigenvalues"], float),
                   areas=np.asarray(d["areas"], np.int64),
                   boxes=np.asarray(d["boxes"], np.int64).reshape(-1, 4),
                   window=tuple(d["window"]), grid=grid, input_size=tuple(d["input_size"]),
                   stop_reason=d["stop_reason"], model=d["model"], layer=d["layer"],
                   feature=d["feature"], tau=float(d["tau"]), eps=float(d["eps"]),
                   objects=int(d["objects"]), skipped=d.get("skipped"))


def _to_image(values: np.ndarray, ri: np.ndarray, ci: np.ndarray, fill=0) -> np.ndarray:
    """(..., rows, cols) -> (..., H, W) by each pixel's patch; `fill` outside the input window."""
    out = values[..., np.maximum(ri, 0)[:, None], np.maximum(ci, 0)[None, :]]
    outside = (ri < 0)[:, None] | (ci < 0)[None, :]
    if outside.any():
        out[..., outside] = fill
    return out


def _empty(index: int, id_: str, settings: dict, reason: str) -> ImageObjects:
    return ImageObjects(index=index, id=id_, size=(0, 0),
                        patch_masks=np.zeros((0, *settings["grid"]), dtype=bool),
                        scores=np.zeros(0), ncut=np.zeros(0), eigenvalues=np.zeros(0),
                        areas=np.zeros(0, np.int64), boxes=np.zeros((0, 4), np.int64),
                        window=(1.0, 0.0, 1.0, 0.0), stop_reason="skipped", skipped=reason,
                        **{k: v for k, v in settings.items()})


# --------------------------------------------------------------------------------------------------
# public entry points


def iter_discover(model, images, *, layer: str | None = None, features: str = "keys",
                  objects: int = 3, tau: float = 0.2, eps: float = 1e-5, batch_size: int = 16,
                  device=None, num_workers: int = 0, progress: bool = True,
                  keep_images: bool = False, indices: Sequence[int] | None = None,
                  ) -> Iterator[tuple[ImageObjects, np.ndarray | None]]:
    """`discover` one image at a time, in source order: yields (ImageObjects, image) with the
    decoded image as (H, W, 3) uint8 when `keep_images`, else None. Memory holds one batch."""
    model = _as_model(model, device)
    source = open_source(images)
    if int(objects) < 1:
        raise InputError(f"objects: expected at least 1, got {objects}")
    if not 0.0 <= tau < 1.0:
        raise InputError(f"tau: expected 0 <= tau < 1 (a cosine threshold), got {tau}")
    if not eps > 0.0:
        raise InputError(f"eps: expected eps > 0 (it keeps the graph connected), got {eps}")
    pl = patch_layer(model, layer, features=features)
    info = model.layer(pl.layer)
    note = _fallback_note(model, pl, features)
    if note:
        warnings.warn(note, stacklevel=2)
    settings = {"grid": tuple(info.grid), "input_size": tuple(model.input_size),
                "model": model.name, "layer": pl.layer, "feature": pl.feature, "tau": float(tau),
                "eps": float(eps), "objects": int(objects)}
    positions = list(range(len(source))) if indices is None else [int(i) for i in indices]
    sub = source if indices is None else _Subset(source, positions)
    for chunk in _stream(model, sub, batch_size=batch_size, num_workers=num_workers,
                         keep_images=keep_images, progress=progress, desc="discovering"):
        feats = _patch_features(model, pl, info, chunk.x) if chunk.indices else None
        done = {}
        for b, i in enumerate(chunk.indices):
            p = positions[i]
            done[i] = (_cut_one(p, source.ids[p], feats[b], chunk.sizes[b], chunk.windows[b],
                                settings), chunk.images[b])
        for s in chunk.skipped:
            p = positions[s["index"]]
            done[s["index"]] = (_empty(p, source.ids[p], settings, s["reason"]), None)
        for i in sorted(done):
            yield done[i]


def discover(model, images, *, layer: str | None = None, features: str = "keys",
             objects: int = 3, tau: float = 0.2, eps: float = 1e-5, batch_size: int = 16,
             device=None, num_workers: int = 0, progress: bool = True) -> list[ImageObjects]:
    """Unsupervised object discovery (TokenCut / MaskCut) with a model, one result per image.

    model: a zoolens Model or a spec string. images: anything `open_source` takes (folder, CSV,
    list of paths, `synthetic:scenes?...`, an (N, 3, H, W) batch). layer / features: see
    `patch_layer` (default: the keys of the last attention block for ViTs, its output tokens where
    no module outputs keys, the last block's map for CNNs). Each image's patch features (P, D) are
    cut by `maskcut(features, grid, objects, tau, eps)`: up to `objects` disjoint masks.

    Returns a list in source order, one `ImageObjects` per image; an image that could not be
    decoded or preprocessed has `skipped` set to the reason and no masks. `.masks` (K, H, W) bool
    are at the decoded image's size, placed where the model's preprocessing took its input from.
    """
    return [r for r, _ in iter_discover(model, images, layer=layer, features=features,
                                        objects=objects, tau=tau, eps=eps, batch_size=batch_size,
                                        device=device, num_workers=num_workers, progress=progress)]


class _Subset(ImageSource):
    """A source restricted to some of its items, in the order given."""

    def __init__(self, source: ImageSource, indices: list[int]):
        for i in indices:
            if not 0 <= i < len(source):
                raise InputError(f"indices: {i} is out of range for {len(source)} images")
        self._source, self._indices = source, indices
        super().__init__(ids=[source.ids[i] for i in indices], description=source.description)

    def decode(self, index: int):
        return self._source.decode(self._indices[index])


def _cut_one(index: int, id_: str, feats: np.ndarray, size: tuple[int, int], window: _Window,
             settings: dict) -> ImageObjects:
    with warnings.catch_warnings():
        # Zeroed rows of patches already taken are MaskCut's design, not a defect of the input.
        warnings.filterwarnings("ignore", message=r"features: \d+ patch\(es\) have all-zero")
        res = maskcut(feats, settings["grid"], settings["objects"], settings["tau"],
                      settings["eps"])
    pm = (np.stack(res.masks) if res.objects
          else np.zeros((0, *settings["grid"]), dtype=bool))
    ri, ci = window.index_maps(size, settings["input_size"], settings["grid"])
    masks = _to_image(pm, ri, ci, False)
    areas = masks.sum(axis=(1, 2)).astype(np.int64)
    boxes = np.array([mask_bbox(m) or (0, 0, 0, 0) for m in masks], dtype=np.int64).reshape(-1, 4)
    ncut_values = np.array([o.score for o in res.objects], dtype=np.float64)
    return ImageObjects(index=index, id=id_, size=tuple(size), patch_masks=pm,
                        scores=1.0 - ncut_values / 2.0, ncut=ncut_values,
                        eigenvalues=np.array([o.eigenvalue for o in res.objects], dtype=np.float64),
                        areas=areas, boxes=boxes, window=tuple(window.to_list()),
                        stop_reason=res.stop_reason, **settings)


def _safe_name(id_: str, index: int) -> str:
    """A file-name stem for an image id: index-prefixed (unique), no path separators."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(id_)).strip("._")[-80:] or "image"
    return f"{index:06d}_{stem}"


# ----------------------------------------------------------------------------------------------
# writing a discovery run to a folder (used by `zoolens discover` and the demo)


def write_discovery(model, images, out: str | Path, *, layer: str | None = None,
                    features: str = "keys", objects: int = 3, tau: float = 0.2,
                    eps: float = 1e-5, batch_size: int = 16, num_workers: int = 0,
                    progress: bool = True) -> dict:
    """Run `iter_discover` and write one PNG per mask (`masks/`), one overlay per image
    (`overlays/`) and `out/discover.json`, which is written even when the run is interrupted
    and lists what was done. Returns the summary written to discover.json."""
    import json

    from ..sources import open_source

    out = Path(out)
    source = open_source(images)
    pl = patch_layer(model, layer, features=features)
    note = _fallback_note(model, pl, features)
    info = model.layer(pl.layer)
    summary = {"model": model.spec, "layer": pl.layer, "feature": pl.feature,
               "channels": [pl.channels.start, pl.channels.stop], "features": features,
               "grid": list(info.grid), "input_size": list(model.input_size), "tau": tau,
               "eps": eps, "objects": objects, "notes": [note] if note else [],
               "images": [], "skipped": [dict(s) for s in source.skipped_at_listing],
               "complete": False}
    results = iter_discover(model, source, layer=layer, features=features, objects=objects,
                            tau=tau, eps=eps, batch_size=batch_size, num_workers=num_workers,
                            keep_images=True, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for res, image in results:
            if res.skipped:
                summary["skipped"].append({"index": res.index, "id": res.id, "reason": res.skipped})
                continue
            summary["images"].append(_write_objects(res, image, out, _safe_name(res.id, res.index)))
        summary["complete"] = True
    finally:  # an interrupted run keeps what it wrote, listed
        (out / "discover.json").write_text(json.dumps(summary, indent=1))
    return summary


_PALETTE = np.array([(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48),
                     (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)], dtype=float)


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _overlay(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 image, (K, H, W) bool masks -> the image with each mask tinted in its colour
    and outlined (the outline keeps small masks visible)."""
    out = image.astype(float)
    for k, m in enumerate(masks):
        colour = _PALETTE[k % len(_PALETTE)]
        out[m] = 0.45 * out[m] + 0.55 * colour
        inner = m.copy()
        inner[1:] &= m[:-1]
        inner[:-1] &= m[1:]
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        out[m & ~inner] = colour
    return np.clip(out, 0, 255).astype(np.uint8)


def _write_objects(res, image: np.ndarray, out: Path, stem: str) -> dict:
    masks = res.masks
    entry = {"id": res.id, "index": res.index, "size": list(res.size),
             "stop_reason": res.stop_reason, "overlay": f"overlays/{stem}.png", "masks": []}
    for k, m in enumerate(masks):
        rel = f"masks/{stem}_{k}.png"
        _save_png(m.astype(np.uint8) * 255, out / rel)
        entry["masks"].append({"file": rel, "area": int(res.areas[k]),
                               "bbox": [int(v) for v in res.boxes[k]],
                               "score": float(res.scores[k]), "ncut": float(res.ncut[k]),
                               "eigenvalue": float(res.eigenvalues[k]),
                               "patches": int(res.patch_masks[k].sum())})
    _save_png(_overlay(image, masks), out / entry["overlay"])
    return entry
