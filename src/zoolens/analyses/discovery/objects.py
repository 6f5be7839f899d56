"""Object discovery on a model: patch features of one layer -> MaskCut -> masks at image size.

`discover(model, images)` feeds `DiscoverySink` one pass of the planner: per batch, one layer's
patch features per image (the engine's "none" reduction, the patch grid), each cut with
`cuts.maskcut` (TokenCut's normalized cut, repeated for up to `objects` disjoint objects), and the
masks brought back onto the decoded image through the preprocessing window the engine found
(`zoolens.zoo.window`). With `out`, every image's mask PNGs and overlay are written as its batch
passes (memory holds one batch), and `discover.json` lists them.

Which features (`patch_layer`). TokenCut and MaskCut cut the keys of the last attention block:
for a ViT whose block computes keys in a module of its own (timm's fused `attn.qkv` Linear, whose
output holds q|k|v; Hugging Face's `k_proj` / `key`), that module is tapped and its key channels
kept (`zoolens.attention`). Where the keys are never a module output (`nn.MultiheadAttention` in
open_clip, or a block calling `F.linear` itself) the block's output tokens stand in, and the
result says so. CNNs give the last block's feature map. `layer=` picks another module;
`features="tokens"` the block output.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from ... import plan
from ...backends import Backend, resolve_backend
from ...attention import find_attention
from ...errors import InputError, UnknownLayerError
from ...report.figures import file_stem, save_png
from ...sinks import Batch, Need, Sink
from ...sources import open_source
from ...taps import TapInfo
from ...zoo.model import Model
from ...zoo.registry import as_models
from ...zoo.window import Window, to_image
from .cuts import mask_bbox, maskcut

__all__ = ["discover", "DiscoverySink", "MaskFiles", "PatchLayer", "ImageObjects", "patch_layer",
           "default_layer", "keys_fallback_note", "FEATURES"]

log = logging.getLogger("zoolens")

FEATURES = ("keys", "tokens")  # what `features=` may ask for; a CNN map is always "map"


# --------------------------------------------------------------------------------------------------
# which layer, which channels


class PatchLayer(NamedTuple):
    """The tap `discover` cuts: `layer` (module path), the `channels` of its output kept (the key
    part of a fused qkv output), and `feature`: "keys", "tokens" or "map"."""

    layer: str
    channels: slice
    feature: str


def _ran(model, name: str) -> TapInfo | None:
    """The layer's TapInfo if the module runs in the forward pass (hooks fire on it)."""
    try:
        return model.layer(name)
    except UnknownLayerError:
        return None


def default_layer(model) -> str:
    """The model's last block, or its last layer with a spatial grid."""
    if model.blocks:
        return model.blocks[-1]
    gridded = [i for i in model.layers() if i.layout in ("map", "tokens") and i.grid is not None]
    if not gridded:
        raise InputError(f"{model.spec}: no layer with a spatial grid to cut; choose one with "
                         "--layer")
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
        raise InputError(f"--features {features!r}: use one of {', '.join(FEATURES)}")
    name = default_layer(model) if layer is None else layer
    info = model.layer(name)  # UnknownLayerError lists what exists
    if info.layout == "map":
        return _checked(model, PatchLayer(name, slice(0, info.channels), "map"), info)
    if info.layout != "tokens" or info.grid is None:
        raise InputError(f"layer {name!r} of {model.spec} has no patch grid (output "
                         f"{info.raw_shape}); choose a block or a map layer (zoolens layers "
                         f"{model.spec})")
    if features == "keys":
        attn = find_attention(model.module, name)
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


def keys_fallback_note(model, pl: PatchLayer, features: str) -> str | None:
    """The note saying the block's tokens stand in for keys no module outputs, or None."""
    if features == "keys" and pl.feature == "tokens":
        return (f"{model.spec}: no module outputs the keys of the attention in {pl.layer!r} "
                "(e.g. nn.MultiheadAttention); cut its output tokens instead")
    return None


# --------------------------------------------------------------------------------------------------
# the sink


class DiscoverySink(Sink):
    """Cuts each image of a batch as it passes (wherever the backend runs it)."""

    def __init__(self, model: Model, pl: PatchLayer, info: TapInfo, settings: dict):
        self.model, self.pl, self.info, self.settings = model, pl, info, settings
        self.need = Need({model.name: {pl.layer: {"none"}}}, windows=True)
        self.add_state("found", [], merge="cat")  # ImageObjects, in the order images came

    def update(self, batch: Batch) -> None:
        for s in batch.skipped:
            self.found.append(_empty(s["index"], s["id"], self.settings, s["reason"]))
        if not batch.indices:
            return
        feats = _patch_features(batch, self.model, self.pl.layer, self.pl.channels,
                                grid=self.info.grid)  # (B, P, D)
        windows = batch.windows[self.model.name]
        for k, (index, id_) in enumerate(zip(batch.indices, batch.ids)):
            self.found.append(_cut_one(index, id_, feats[k], batch.sizes[k], windows[k],
                                       self.settings))

    def result(self) -> list["ImageObjects"]:
        return list(self.found)


def _patch_features(batch: Batch, model: Model, layer: str, channels: slice,
                    grid: Sequence[int] | None = None) -> np.ndarray:
    """One layer's patch features per image of a batch, (B, P, D) float32: its "none" maps
    (B, C, rows, cols) with `channels` kept. grid: the (rows, cols) every image must give (the
    one at the model's input size); another raises."""
    maps = batch.features[model.name][layer]["none"][:, channels]
    if grid is not None and tuple(maps.shape[2:]) != tuple(grid):
        raise InputError(f"{model.spec}: layer {layer!r} gives a {tuple(maps.shape[2:])} grid "
                         f"on some images, but {tuple(grid)} on the model's input size "
                         f"{model.input_size}; its preprocessing must resize or crop to one size")
    b, d = maps.shape[:2]
    return maps.reshape(b, d, -1).transpose(1, 2).float().cpu().numpy()


class MaskFiles(Sink):
    """Writes each image's mask PNGs and overlay into `out` once `cuts` has cut it.

    It stays where the run started (`on_driver`: the files are on this machine), while the cuts
    may run in a backend's workers: a backend hands a batch to this sink only after every other
    sink has taken it in (locally, sinks are updated in order; on Ray, a unit's states are
    merged first), so the cuts of the batch's images are in `cuts.found` by then."""

    on_driver = True

    def __init__(self, cuts: DiscoverySink, out: Path):
        self.cuts, self.out = cuts, Path(out)
        self.need = Need(images=True)
        self.add_state("entries", [], merge="cat")  # files written per image
        self._seen = 0  # cuts.found[:_seen] are in _waiting or written
        self._waiting: dict[int, ImageObjects] = {}

    def update(self, batch: Batch) -> None:
        found = self.cuts.found
        self._waiting.update((r.index, r) for r in found[self._seen:] if r.skipped is None)
        self._seen = len(found)
        for k, (index, id_) in enumerate(zip(batch.indices, batch.ids)):
            self.entries.append(_write_objects(self._waiting.pop(index), batch.images[k],
                                               self.out, file_stem(id_, index)))

    def result(self) -> list[dict]:
        return list(self.entries)


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
        return Window(*self.window).index_maps(self.size, self.input_size, self.grid)

    @property
    def masks(self) -> np.ndarray:
        """(K, H, W) bool masks at the image's size."""
        return to_image(self.patch_masks, *self.index_maps())

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


def _empty(index: int, id_: str, settings: dict, reason: str) -> ImageObjects:
    return ImageObjects(index=index, id=id_, size=(0, 0),
                        patch_masks=np.zeros((0, *settings["grid"]), dtype=bool),
                        scores=np.zeros(0), ncut=np.zeros(0), eigenvalues=np.zeros(0),
                        areas=np.zeros(0, np.int64), boxes=np.zeros((0, 4), np.int64),
                        window=(1.0, 0.0, 1.0, 0.0), stop_reason="skipped", skipped=reason,
                        **{k: v for k, v in settings.items()})


def _cut_one(index: int, id_: str, feats: np.ndarray, size: tuple[int, int], window: Window,
             settings: dict) -> ImageObjects:
    with warnings.catch_warnings():
        # Zeroed rows of patches already taken are MaskCut's design, not a defect of the input.
        warnings.filterwarnings("ignore", message=r"features: \d+ patch\(es\) have all-zero")
        res = maskcut(feats, settings["grid"], settings["objects"], settings["tau"],
                      settings["eps"])
    pm = (np.stack(res.masks) if res.objects
          else np.zeros((0, *settings["grid"]), dtype=bool))
    ri, ci = window.index_maps(size, settings["input_size"], settings["grid"])
    masks = to_image(pm, ri, ci, False)
    areas = masks.sum(axis=(1, 2)).astype(np.int64)
    boxes = np.array([mask_bbox(m) or (0, 0, 0, 0) for m in masks], dtype=np.int64).reshape(-1, 4)
    ncut_values = np.array([o.score for o in res.objects], dtype=np.float64)
    return ImageObjects(index=index, id=id_, size=tuple(size), patch_masks=pm,
                        scores=1.0 - ncut_values / 2.0, ncut=ncut_values,
                        eigenvalues=np.array([o.eigenvalue for o in res.objects], dtype=np.float64),
                        areas=areas, boxes=boxes, window=tuple(window.to_list()),
                        stop_reason=res.stop_reason, **settings)


# --------------------------------------------------------------------------------------------------
# the analysis


def discover(model, images, *, layer: str | None = None, features: str = "keys",
             objects: int = 3, tau: float = 0.2, eps: float = 1e-5, batch_size: int = 16,
             indices: Sequence[int] | None = None, device=None, num_workers: int | None = None,
             pretrained: bool = True, seed: int = 0, progress: bool = True,
             out: str | Path | None = None,
             backend: str | Backend | None = None) -> list["ImageObjects"]:
    """Unsupervised object discovery (TokenCut / MaskCut) with a model, one result per image.

    model: a zoolens Model or a spec string. images: anything `open_source` takes (folder, CSV,
    list of paths, `synthetic:scenes?...`, an (N, 3, H, W) batch); `indices` restricts the run to
    those images, in that order. layer / features: see `patch_layer` (default: the keys of the
    last attention block for ViTs, its output tokens where no module outputs keys, the last
    block's map for CNNs). Each image's patch features (P, D) are cut by `maskcut(features,
    grid, objects, tau, eps)`: up to `objects` disjoint masks.

    Returns a list in the order the images were visited, one `ImageObjects` per image; an image
    that could not be decoded or preprocessed has `skipped` set to the reason and no masks.
    `.masks` (K, H, W) bool are at the decoded image's size, placed where the model's
    preprocessing took its input from. With `out`, writes one PNG per mask (`masks/`), one
    overlay per image (`overlays/`) and `out/discover.json`, which is written even when the run
    is interrupted and lists what was done. backend: where the model and the cuts run ("local",
    "ray" or a `zoolens.RayBackend`); the files are written here either way.
    """
    runner = resolve_backend(backend, num_workers=num_workers)
    model = as_models(model, pretrained=pretrained, device=runner.load_device(device),
                      seed=seed)[0]
    source = open_source(images)
    if int(objects) < 1:
        raise InputError(f"--objects {objects}: find at least 1 object per image")
    if not 0.0 <= tau < 1.0:
        raise InputError(f"--tau {tau}: a cosine threshold, 0 <= tau < 1 (TokenCut uses 0.2)")
    if not eps > 0.0:
        raise InputError(f"--eps {eps}: must be > 0 (it keeps the graph connected)")
    pl = patch_layer(model, layer, features=features)
    info = model.layer(pl.layer)
    note = keys_fallback_note(model, pl, features)
    if note:
        warnings.warn(note, stacklevel=2)
    settings = {"grid": tuple(info.grid), "input_size": tuple(model.input_size),
                "model": model.name, "layer": pl.layer, "feature": pl.feature, "tau": float(tau),
                "eps": float(eps), "objects": int(objects)}
    out = Path(out) if out is not None else None
    sink = DiscoverySink(model, pl, info, settings)
    files = [MaskFiles(sink, out)] if out is not None else []
    summary = {"analysis": "discover", "model": model.name, "spec": model.spec,
               "models": {model.name: model.record()},
               "layer": pl.layer, "feature": pl.feature,
               "channels": [pl.channels.start, pl.channels.stop], "features": features,
               "grid": list(info.grid), "input_size": list(model.input_size), "tau": tau,
               "eps": eps, "objects": objects, "notes": [note] if note else [],
               "images": [], "skipped": [dict(s) for s in source.skipped_at_listing],
               "complete": False}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    try:
        plan.run([model], source, [sink, *files], indices=indices, batch_size=batch_size,
                 device=device, progress=progress, desc="discovering", backend=runner)
        summary["complete"] = True
    finally:  # an interrupted run keeps what it wrote, listed
        if out is not None:
            summary["images"] = files[0].entries
            summary["skipped"] += [{"index": r.index, "id": r.id, "reason": r.skipped}
                                   for r in sorted(sink.found, key=lambda r: r.index)
                                   if r.skipped]
            (out / "discover.json").write_text(json.dumps(summary, indent=1))
    visited = {int(i): k for k, i in enumerate(indices)} if indices is not None else {}
    return sorted(sink.result(), key=lambda r: visited.get(r.index, r.index))


# --------------------------------------------------------------------------------------------------
# files


_PALETTE = np.array([(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48),
                     (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)], dtype=float)


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
        save_png(m.astype(np.uint8) * 255, out / rel)
        entry["masks"].append({"file": rel, "area": int(res.areas[k]),
                               "bbox": [int(v) for v in res.boxes[k]],
                               "score": float(res.scores[k]), "ncut": float(res.ncut[k]),
                               "eigenvalue": float(res.eigenvalues[k]),
                               "patches": int(res.patch_masks[k].sum())})
    save_png(_overlay(image, masks), out / entry["overlay"])
    return entry
