"""What a model's patches look like: DINOv2's PCA colours and DINO's CLS attention maps.

`visualize(model, images, kind="pca")` taps one layer's patch features (by default the last
block's output tokens, or a CNN's last map), fits one PCA jointly over every patch of every image
and colours them with `cuts.pca_rgb` (first component thresholded into foreground, the next
three as RGB), as in the DINOv2 figures.

`visualize(model, images, kind="attention")` gives, per image and head, the attention of the class
token to every patch in one attention module (the last block's by default), from the queries and
keys the engine taps (`zoolens.attention`): `softmax_j(q_cls . k_j * scale)` over all tokens
(class token, registers and patches), of which the patch part is returned as (heads, rows, cols).

Both are sinks fed by one pass of the planner; with `out`, one PNG per image (the image, then
its picture(s)), `visualize.json` and the arrays in `visualize.npz` are written.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ... import plan
from ...backends import Backend, resolve_backend
from ...attention import (attention_taps, check_attention, cls_attention, find_attention,
                          queries_and_keys)
from ...errors import InputError
from ...report.figures import file_stem, save_png
from ...sinks import Batch, Need, Sink
from ...sources import ImageSource, open_source
from ...zoo.registry import as_models
from ...zoo.window import Window, to_image
from .objects import _patch_features, default_layer, keys_fallback_note, patch_layer
from .cuts import pca_rgb

__all__ = ["KINDS", "Visualization", "visualize", "PCASink", "AttentionSink"]

KINDS = ("pca", "attention")


@dataclass
class Visualization:
    """Per-image patch pictures of one model layer, with the settings used.

    Images that decoded are listed in `ids` / `indices` / `sizes` / `windows` (visiting order);
    the others are in `skipped` ({"index", "id", "reason"}). kind "pca": `rgb` (N, rows, cols, 3)
    in [0, 1] (background black) and `foreground` (N, rows, cols) bool. kind "attention":
    `attention` (N, heads, rows, cols): the class token's attention to each patch (softmax over
    all tokens, so a map sums to 1 minus the prefix tokens' share). `at_image(i)` brings image
    i's picture to its decoded size, where the model's input came from (black / 0 outside).
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
        ri, ci = Window(*self.windows[i]).index_maps(self.sizes[i], self.input_size, self.grid)
        if self.kind == "pca":
            return np.moveaxis(to_image(np.moveaxis(self.rgb[i], -1, 0), ri, ci, 0.0), 0, -1)
        return to_image(self.attention[i], ri, ci, 0.0)

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
# sinks


class _PictureSink(Sink):
    """Per image: its id, index, decoded size, window and its patch picture (`_pictures`)."""

    def __init__(self, model, need: Need):
        self.model, self.need = model, need
        for name in ("ids", "indices", "sizes", "windows", "parts", "skipped", "images"):
            self.add_state(name, [], merge="cat")

    def _pictures(self, batch: Batch) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, batch: Batch) -> None:
        self.skipped += batch.skipped
        if not batch.indices:
            return
        self.parts.append(self._pictures(batch))
        self.ids += batch.ids
        self.indices += batch.indices
        self.sizes += [tuple(s) for s in batch.sizes]
        self.windows += [tuple(w.to_list()) for w in batch.windows[self.model.name]]
        if self.need.images:
            self.images += batch.images


class PCASink(_PictureSink):
    """Every image's patch features (B, P, D) of one layer; `result()` fits one PCA over all."""

    def __init__(self, model, layer: str, channels: slice, keep_images: bool = False):
        super().__init__(model, Need({model.name: {layer: {"none"}}}, windows=True,
                                     images=keep_images))
        self.layer, self.channels = layer, channels

    def _pictures(self, batch: Batch) -> np.ndarray:
        return _patch_features(batch, self.model, self.layer, self.channels)

    def result(self, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        grid = tuple(self.model.layer(self.layer).grid)
        return pca_rgb(np.concatenate(self.parts), grid, threshold=threshold)


class AttentionSink(_PictureSink):
    """The class token's attention per head, from the q and k the engine taps."""

    def __init__(self, model, attn, prefix: int, grid: tuple[int, int], keep_images: bool = False):
        super().__init__(model, Need({model.name: attention_taps(attn)}, windows=True,
                                     images=keep_images))
        self.attn, self.prefix, self.grid = attn, prefix, grid

    def _pictures(self, batch: Batch) -> np.ndarray:
        q, k = queries_and_keys(self.attn, batch.features[self.model.name], self.model.module)
        return cls_attention(q, k, self.attn, self.prefix, self.grid)

    def result(self) -> np.ndarray:
        return np.concatenate(self.parts).astype(np.float64)


# --------------------------------------------------------------------------------------------------
# the analysis


def visualize(model, images, *, kind: str = "pca", layer: str | None = None,
              features: str = "tokens", threshold: float | None = None, batch_size: int = 16,
              device=None, num_workers: int | None = None, pretrained: bool = True,
              seed: int = 0, progress: bool = True, out: str | Path | None = None,
              backend: str | Backend | None = None) -> Visualization:
    """PCA colours or CLS attention maps of a model's patches, per image, as arrays.

    model: a zoolens Model or a spec string; images: anything `open_source` takes.
    kind "pca": the patch features of `layer` (`patch_layer(model, layer, features=features)`;
    default the last block's output tokens, or a CNN's last map) for all images, then
    `pca_rgb(features (N, P, D), grid, threshold=threshold)`: one PCA over every patch of every
    image, so colours compare across images. Memory: all N * P * D features (float32).
    kind "attention": the class token's attention per head in the attention module inside `layer`
    (default: the last block), one batch at a time.
    With `out`: one PNG per image, `visualize.json` and `visualize.npz`. backend: where the
    model runs ("local", "ray" or a `zoolens.RayBackend`).
    Returns a `Visualization`; `.at_image(i)` gives image i's picture at its decoded size.
    """
    if kind not in KINDS:
        raise InputError(f"--kind {kind!r}: use one of {', '.join(KINDS)}")
    runner = resolve_backend(backend, num_workers=num_workers)
    model = as_models(model, pretrained=pretrained, device=runner.load_device(device),
                      seed=seed)[0]
    source = open_source(images)
    keep = out is not None and source.drawn_by is not None  # drawn images cannot be decoded again
    notes: list[str] = []
    if kind == "pca":
        pl = patch_layer(model, layer, features=features)
        info = model.layer(pl.layer)
        name, feature, heads = pl.layer, pl.feature, None
        note = keys_fallback_note(model, pl, features)
        if note:
            warnings.warn(note, stacklevel=2)
            notes.append(note)
        sink: _PictureSink = PCASink(model, pl.layer, pl.channels, keep)
    else:
        where = default_layer(model) if layer is None else layer
        if where not in model.module_names:
            model.layer(where)  # raises UnknownLayerError, listing what exists
        attn = check_attention(model, find_attention(model.module, where), where)
        info = model.layer(attn.name)
        if info.layout != "tokens" or info.grid is None:
            raise InputError(f"{model.spec}: {attn.name!r} gives no token grid")
        if info.prefix_tokens < 1:
            raise InputError(f"{model.spec}: no class token ahead of the patches in "
                             f"{attn.name!r}; CLS attention maps need one")
        name, feature, heads = attn.name, "cls_attention", attn.heads
        sink = AttentionSink(model, attn, info.prefix_tokens, tuple(info.grid), keep)
    plan.run([model], source, [sink], batch_size=batch_size, device=device, progress=progress,
             desc=f"visualize {kind}", backend=runner)
    if not sink.parts:
        raise plan.no_usable_images(source, list(source.skipped_at_listing) + sorted(
            sink.skipped, key=lambda s: s["index"]))
    result = Visualization(kind=kind, model=model.name, layer=name, feature=feature,
                           grid=tuple(info.grid), input_size=tuple(model.input_size),
                           ids=list(sink.ids), indices=list(sink.indices), sizes=list(sink.sizes),
                           windows=list(sink.windows),
                           skipped=sorted(sink.skipped, key=lambda s: s["index"]),
                           threshold=threshold, heads=heads, notes=notes)
    if kind == "pca":
        result.rgb, result.foreground = sink.result(threshold)
    else:
        result.attention = sink.result()
    if out is not None:
        _write(result, source, sink.images, Path(out), record=model.record())
    return result


def _colormap(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(H, W) floats -> (H, W, 3) uint8 through viridis, [lo, hi] spanning the colours."""
    import matplotlib

    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    return (matplotlib.colormaps["viridis"](scaled)[..., :3] * 255).astype(np.uint8)


def _write(vis: Visualization, source: ImageSource, kept: list, out: Path, *,
           record: dict) -> dict:
    """One PNG per image (the image, then its picture(s)), visualize.json and visualize.npz."""
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for n, (i, id_) in enumerate(zip(vis.indices, vis.ids)):
        rel = f"{vis.kind}/{file_stem(id_, i)}.png"
        image = kept[n] if kept else np.asarray(source.decode(i).image)
        picture = vis.at_image(n)
        if vis.kind == "pca":
            panels = [image, (picture * 255).round().astype(np.uint8)]
        else:
            # each head on its own range (DINO's figures), taken on the patch grid: the black
            # border outside the model's input does not stretch the colours
            panels = [image] + [_colormap(a, float(g.min()), float(g.max()))
                                for a, g in zip(picture, vis.attention[n])]
        save_png(np.concatenate(panels, axis=1), out / rel)
        entry = {"id": id_, "index": i, "size": list(vis.sizes[n]), "file": rel}
        if vis.kind == "pca":
            entry["foreground_patches"] = int(vis.foreground[n].sum())
        entries.append(entry)
    summary = {"analysis": "visualize", "model": vis.model, "spec": record["spec"],
               "models": {vis.model: record}, "kind": vis.kind,
               "layer": vis.layer, "feature": vis.feature, "grid": list(vis.grid),
               "input_size": list(vis.input_size), "threshold": vis.threshold,
               "heads": vis.heads, "notes": vis.notes, "arrays": "visualize.npz",
               "images": entries,
               "skipped": [dict(x) for x in source.skipped_at_listing] + vis.skipped}
    arrays = ({"rgb": vis.rgb, "foreground": vis.foreground} if vis.kind == "pca"
              else {"attention": vis.attention})
    np.savez_compressed(out / "visualize.npz", ids=np.array(vis.ids), **arrays)
    (out / "visualize.json").write_text(json.dumps(summary, indent=1))
    return summary

