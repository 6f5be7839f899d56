"""Where a model's input lies in an image: the affine map from the preprocessed input's pixels to
the decoded image's pixels, found by probing the preprocessing.

A model sees its preprocessed input, often a centre crop of a resized image (timm's
`crop_pct`), so stretching a patch grid over the whole image misplaces masks and maps by
several percent. `WindowProbe` runs the preprocessing once per image size on coordinate ramps
(red = x, green = y): a least-squares fit of the ramps it returns gives the affine map from
input pixels to image pixels, valid for any resize / crop / flip pipeline. Image pixels outside
the input window belong to no patch. A preprocessing the probe cannot fit (not affine) falls
back to stretching the grid over the image, with a warning.

The engine computes windows per image (in its decoding workers) when a sink asks for them
(`Need.windows`); `to_image` brings patch-grid values to image pixels through a window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["Window", "WindowProbe", "to_image"]

log = logging.getLogger("zoolens")


@dataclass(frozen=True)
class Window:
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


def _stretch(size: tuple[int, int], input_size: tuple[int, int]) -> Window:
    return Window(size[0] / input_size[0], 0.0, size[1] / input_size[1], 0.0, fitted=False)


class WindowProbe:
    """Finds, per image size, where a preprocessing's output lies in the image (cached)."""

    def __init__(self, preprocess, input_size: tuple[int, int]):
        self.preprocess, self.input_size = preprocess, tuple(input_size)
        self._levels: tuple[np.ndarray, np.ndarray] | None = None
        self._cache: dict[tuple[int, int], Window] = {}

    def _channel_levels(self, size):
        """Per-channel output for an all-black and an all-white image: the normalisation."""
        if self._levels is None:
            h, w = size
            lo = self.preprocess(Image.new("RGB", (w, h), (0, 0, 0)))
            hi = self.preprocess(Image.new("RGB", (w, h), (255, 255, 255)))
            self._levels = (lo.float().flatten(1).median(1).values.numpy(),
                            hi.float().flatten(1).median(1).values.numpy())
        return self._levels

    def __call__(self, size: tuple[int, int]) -> Window:
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

    def _probe(self, size: tuple[int, int]) -> Window:
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
        return Window(fy[0], fy[1], fx[0], fx[1])


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


def to_image(values: np.ndarray, ri: np.ndarray, ci: np.ndarray, fill=0) -> np.ndarray:
    """(..., rows, cols) -> (..., H, W) by each pixel's patch; `fill` outside the input window."""
    out = values[..., np.maximum(ri, 0)[:, None], np.maximum(ci, 0)[None, :]]
    outside = (ri < 0)[:, None] | (ci < 0)[None, :]
    if outside.any():
        out[..., outside] = fill
    return out
