"""`synthetic:scenes?n=64&size=64&seed=0&objects=2`: procedural scenes with ground truth.

Each scene is one to `objects` coloured shapes (circle, square, triangle, cross) on a textured
background (noise, stripes, checker, gradient). Scene `i` depends only on (seed, i), so workers
render independently and a resumed run sees the same pixels. The ground truth — instance masks,
each object's shape and colour, the background kind, and the label (the largest object's
shape) — serves tests, the demo, and scoring mined concepts against known ones.

`shapes=` and `backgrounds=` (comma-separated) draw from other sets, including kinds the
default scenes never show (`EXTRA_SHAPES`: star, ring, hexagon; `EXTRA_BACKGROUNDS`: waves,
dots): `synthetic:scenes?n=64&shapes=star,ring&backgrounds=waves` is a set of scenes a model
trained on the default ones has never seen (out of distribution). With the default sets, scenes
render exactly as they always did."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import InputError
from .base import Decoded, ImageSource

__all__ = ["SHAPES", "COLORS", "BACKGROUNDS", "EXTRA_SHAPES", "EXTRA_BACKGROUNDS",
           "RENDER_VERSION", "Scene", "render_scene", "SyntheticScenes"]

SHAPES = ("circle", "square", "triangle", "cross")
EXTRA_SHAPES = ("star", "ring", "hexagon")  # never in the default scenes
COLORS = {  # saturated, so objects stand out of the muted backgrounds
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 80, 230),
    "yellow": (235, 215, 40), "magenta": (210, 50, 200), "cyan": (40, 210, 220),
}
BACKGROUNDS = ("noise", "stripes", "checker", "gradient")
EXTRA_BACKGROUNDS = ("waves", "dots")  # never in the default scenes
RENDER_VERSION = 1  # bump when render_scene draws other pixels for the same arguments


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    instances: np.ndarray  # (H, W) uint8: 0 background, k = k-th object (1-based)
    shapes: list[str]  # per object
    colors: list[str]  # per object
    background: str
    label: str  # the largest object's shape

    def shape_mask(self, shape: str) -> np.ndarray:
        return np.isin(self.instances, [k + 1 for k, s in enumerate(self.shapes) if s == shape])

    def color_mask(self, color: str) -> np.ndarray:
        return np.isin(self.instances, [k + 1 for k, c in enumerate(self.colors) if c == color])


def _polygon(dy, dx, verts) -> np.ndarray:
    """Pixels inside the closed polygon `verts` [(x, y), ...] (even-odd rule: any polygon)."""
    inside = np.zeros_like(dx, dtype=bool)
    for (x0, y0), (x1, y1) in zip(verts, verts[1:] + verts[:1]):
        crosses = (y0 > dy) != (y1 > dy)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (dy - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (dx < at)
    return inside


def _shape_mask(shape: str, yy, xx, cy, cx, r, angle) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy * dy + dx * dx <= r * r
    if shape == "ring":
        d2 = dy * dy + dx * dx
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape in ("star", "hexagon"):
        # star: 5 points alternating with inner corners at 0.45 r; hexagon: 6 corners on r
        n, radii = (10, (r, 0.45 * r)) if shape == "star" else (6, (r, r))
        verts = [(radii[k % 2] * np.cos(angle + k * 2 * np.pi / n),
                  radii[k % 2] * np.sin(angle + k * 2 * np.pi / n)) for k in range(n)]
        return _polygon(dy, dx, verts)
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # rotated coordinates
    if shape == "square":
        h = r * 0.85
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if shape == "cross":
        w = r * 0.33
        return ((np.abs(u) <= r) & (np.abs(v) <= w)) | ((np.abs(v) <= r) & (np.abs(u) <= w))
    # triangle: equilateral, vertices on the circle of radius r
    verts = [(r * np.cos(angle + k * 2 * np.pi / 3), r * np.sin(angle + k * 2 * np.pi / 3))
             for k in range(3)]
    inside = np.ones_like(dx, dtype=bool)
    for (x0, y0), (x1, y1) in zip(verts, verts[1:] + verts[:1]):
        inside &= (x1 - x0) * (dy - y0) - (y1 - y0) * (dx - x0) >= 0
    return inside


def _background(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    tint = rng.uniform(60, 150, size=3)
    if kind == "noise":
        coarse = rng.normal(0, 1, size=(size // 8 + 1, size // 8 + 1))
        field = np.kron(coarse, np.ones((8, 8)))[:size, :size] + 0.5 * rng.normal(0, 1, (size, size))
        base = 0.5 + 0.15 * field
    elif kind == "stripes":
        theta, freq = rng.uniform(0, np.pi), rng.uniform(3, 7)
        base = 0.5 + 0.3 * np.sign(np.sin(2 * np.pi * freq * (np.cos(theta) * xx + np.sin(theta) * yy)))
    elif kind == "checker":
        cells = rng.integers(3, 7)
        base = 0.35 + 0.3 * ((np.floor(xx * cells) + np.floor(yy * cells)) % 2)
    elif kind == "waves":
        theta, freq, wobble = rng.uniform(0, np.pi), rng.uniform(2, 4), rng.uniform(1, 3)
        along = np.cos(theta) * xx + np.sin(theta) * yy
        across = -np.sin(theta) * xx + np.cos(theta) * yy
        wave = freq * along + 0.4 * np.sin(2 * np.pi * wobble * across)  # stripes that meander
        base = 0.5 + 0.3 * np.sin(2 * np.pi * wave)
    elif kind == "dots":
        cells, radius = rng.integers(4, 8), rng.uniform(0.2, 0.35)
        fy, fx = (yy * cells) % 1 - 0.5, (xx * cells) % 1 - 0.5
        base = 0.35 + 0.3 * (fy * fy + fx * fx <= radius * radius)
    else:
        theta = rng.uniform(0, 2 * np.pi)
        base = 0.2 + 0.6 * ((np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5)) + 0.7) / 1.4
    return base[..., None] * tint[None, None, :] * 1.4


def render_scene(index: int, size: int = 64, seed: int = 0, max_objects: int = 2,
                 shapes: tuple[str, ...] = SHAPES,
                 backgrounds: tuple[str, ...] = BACKGROUNDS) -> Scene:
    """Scene `index` of the stream `seed`: same arguments, same pixels. Objects' shapes and the
    background are drawn from `shapes` and `backgrounds` (any of `SHAPES + EXTRA_SHAPES`,
    `BACKGROUNDS + EXTRA_BACKGROUNDS`); the defaults draw exactly the scenes of earlier
    releases."""
    rng = np.random.default_rng([seed, index])
    background = backgrounds[rng.integers(len(backgrounds))]
    img = _background(background, rng, size)
    instances = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    n_obj = int(rng.integers(1, max_objects + 1))
    kinds = shapes  # what objects are drawn from; `shapes` now lists the ones drawn
    shapes, colors, placed = [], [], []
    for k in range(n_obj):
        r = size * (rng.uniform(0.2, 0.3) if k == 0 else rng.uniform(0.1, 0.16))
        for _ in range(30):  # rejection sampling: objects do not touch
            cy, cx = rng.uniform(r + 1, size - r - 1, size=2)
            if all(np.hypot(cy - py, cx - px) > r + pr + 2 for py, px, pr in placed):
                break
        else:
            continue
        shape = kinds[rng.integers(len(kinds))]
        color = list(COLORS)[rng.integers(len(COLORS))]
        mask = _shape_mask(shape, yy, xx, cy, cx, r, rng.uniform(0, 2 * np.pi)) & (instances == 0)
        shade = np.asarray(COLORS[color], float) * rng.uniform(0.85, 1.1)
        img[mask] = shade + rng.normal(0, 6, size=(int(mask.sum()), 3))
        instances[mask] = len(shapes) + 1
        shapes.append(shape)
        colors.append(color)
        placed.append((cy, cx, r))
    areas = [(instances == k + 1).sum() for k in range(len(shapes))]
    label = shapes[int(np.argmax(areas))]
    return Scene(np.clip(img, 0, 255).astype(np.uint8), instances, shapes, colors, background, label)


def _kinds(value, known: tuple[str, ...], default: tuple[str, ...], option: str) -> tuple[str, ...]:
    """`shapes=` / `backgrounds=`: None (the default set), 'a,b' or a sequence -> a tuple."""
    if value is None:
        return default
    items = list(value) if isinstance(value, (list, tuple)) else str(value).split(",")
    items = [str(v).strip() for v in items if str(v).strip()]
    bad = [v for v in items if v not in known]
    if bad or not items:
        raise InputError(f"synthetic:scenes {option}={value!r}: "
                         + (f"unknown {', '.join(map(repr, bad))}; " if bad else "empty; ")
                         + f"choose from {', '.join(known)} (comma-separated)")
    return tuple(dict.fromkeys(items))


class SyntheticScenes(ImageSource):
    """The `synthetic:scenes` source: images, labels and ground-truth scenes on demand.

    `shapes` and `backgrounds` (None: the default sets `SHAPES`, `BACKGROUNDS`) pick what
    scenes are drawn from, e.g. ``shapes="star,ring"`` for shapes the default scenes never
    show; they are part of the description and of every item's fingerprint when they differ
    from the defaults."""

    def __init__(self, n: int = 64, size: int = 64, seed: int = 0, objects: int = 2,
                 shapes: str | None = None, backgrounds: str | None = None):
        if n < 1 or size < 16 or objects < 1:
            raise InputError(f"synthetic:scenes needs n >= 1, size >= 16, objects >= 1; "
                             f"got n={n}, size={size}, objects={objects}")
        self.n, self.size, self.seed, self.objects = n, size, seed, objects
        self.shapes = _kinds(shapes, SHAPES + EXTRA_SHAPES, SHAPES, "shapes")
        self.backgrounds = _kinds(backgrounds, BACKGROUNDS + EXTRA_BACKGROUNDS, BACKGROUNDS,
                                  "backgrounds")
        labels = [self.scene(i).label for i in range(n)]
        super().__init__(ids=[f"scene_{seed}_{i:06d}" for i in range(n)], labels=labels,
                         description=f"synthetic:scenes?n={n}&size={size}&seed={seed}"
                                     f"&objects={objects}{self._kinds_query()}")

    def _kinds_query(self) -> str:
        """'&shapes=..&backgrounds=..' where they differ from the defaults, else '' (so default
        scenes keep the description and fingerprints of earlier releases, and their stores)."""
        out = ""
        if self.shapes != SHAPES:
            out += "&shapes=" + ",".join(self.shapes)
        if self.backgrounds != BACKGROUNDS:
            out += "&backgrounds=" + ",".join(self.backgrounds)
        return out

    def item_fingerprint(self, index: int) -> str:
        """What defines scene `index`: the renderer's version, size, seed, objects, the shape
        and background sets, and the index (not `n`: scene i is the same in a longer stream)."""
        what = (f"scenes:v{RENDER_VERSION}?size={self.size}&seed={self.seed}"
                f"&objects={self.objects}{self._kinds_query()}#{index}")
        return "scene:" + hashlib.blake2b(what.encode(), digest_size=8).hexdigest()

    def scene(self, index: int) -> Scene:
        return render_scene(index, self.size, self.seed, self.objects, self.shapes,
                            self.backgrounds)

    def decode(self, index: int) -> Decoded:
        return Decoded(Image.fromarray(self.scene(index).image))
