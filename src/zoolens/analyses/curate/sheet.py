"""Contact sheets: rows of thumbnails, one row per group, as a PNG (PIL only, no display).

`contact_sheet` is the drawing; `dedup_sheet`, `prototype_sheet` and `shared_prototype_sheet`
lay out the results of `deduplicate`, `prototypes` and `shared_prototypes` with it. Images are
looked up lazily by id, so a sheet of a million-image dataset only decodes what it shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...errors import InputError
from .compare import SharedPrototypes
from .duplicates import DedupResult
from .centroids import Prototypes

__all__ = ["contact_sheet", "dedup_sheet", "prototype_sheet", "shared_prototype_sheet",
           "to_pil"]

_PAD = 6
_BG = (255, 255, 255)
_INK = (20, 20, 20)
_MUTED = (110, 110, 110)


def to_pil(img: Any) -> Image.Image:
    """An RGB PIL image from a PIL image, a path, a (H, W) / (H, W, 1|3|4) array (uint8, or
    float in [0, 1]) or a (C, H, W) torch tensor."""
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    if isinstance(img, (str, Path)):
        with Image.open(img) as im:
            return im.convert("RGB")
    if hasattr(img, "detach"):  # torch tensor, channels first
        img = img.detach().cpu().numpy()
        if img.ndim == 3 and img.shape[0] in (1, 3, 4):
            img = np.moveaxis(img, 0, -1)
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InputError(f"images: expected (H, W) or (H, W, 3|4) arrays, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = np.clip(np.asarray(arr, np.float64), 0.0, 1.0)
        arr = np.round(arr * 255).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def _lookup(images) -> Callable[[Any], Image.Image]:
    if callable(images) and not isinstance(images, (Mapping, Sequence, np.ndarray)):
        return lambda i: to_pil(images(i))
    return lambda i: to_pil(images[i])


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _thumb(img: Image.Image, size: int) -> Image.Image:
    """`img` scaled to fit a size x size cell (aspect kept), centred on the background."""
    scale = size / max(img.width, img.height)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    # Small images are enlarged with nearest-neighbour so their pixels stay visible.
    t = img.resize((w, h), Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST)
    cell = Image.new("RGB", (size, size), _BG)
    cell.paste(t, ((size - t.width) // 2, (size - t.height) // 2))
    return cell


def contact_sheet(images, groups: Sequence[Sequence[Any]], path: str | Path | None = None, *,
                  titles: Sequence[str] | None = None,
                  captions: Sequence[Sequence[str]] | None = None,
                  highlight: Sequence[Sequence[bool]] | None = None,
                  thumb_size: int = 96, columns: int = 8, max_groups: int | None = None,
                  max_per_group: int | None = None) -> Image.Image:
    """Draw groups of images as rows of thumbnails, with a title per group.

    Parameters
    ----------
    images : what to show, looked up by id: a sequence or mapping (id -> image), or a callable
        ``id -> image``. Each image: PIL, a path, a NumPy array (H, W) or (H, W, 3|4) (uint8, or
        float in [0, 1]) or a (C, H, W) tensor.
    groups : ids per row, e.g. the duplicate groups. A row longer than `columns` wraps.
    path : where to write the PNG (optional).
    titles : one line per group (default "group i (n images)").
    captions : per group, a line under each thumbnail (e.g. the id).
    highlight : per group, which thumbnails get a frame (e.g. the image a group keeps).
    thumb_size : thumbnail cell size in pixels.
    columns : thumbnails per line.
    max_groups, max_per_group : show at most this many groups / images per group.

    Returns
    -------
    PIL.Image.Image (RGB); also saved as PNG at `path` if given.
    """
    if thumb_size < 8 or columns < 1:
        raise InputError(f"thumb_size >= 8 and columns >= 1 expected, got {thumb_size}, {columns}")
    get = _lookup(images)
    groups = [list(g) for g in groups][:max_groups]
    if max_per_group is not None:
        groups = [g[:max_per_group] for g in groups]
    titles = list(titles) if titles is not None else [
        f"group {i + 1} ({len(g)} images)" for i, g in enumerate(groups)]
    font = _font(max(10, thumb_size // 8))
    line_h = max(12, thumb_size // 8 + 4)
    cap_h = line_h if captions is not None else 0
    cols = min(columns, max([len(g) for g in groups] or [1]))
    width = _PAD + cols * (thumb_size + _PAD)
    heights = [line_h + _PAD + max(1, -(-len(g) // columns)) * (thumb_size + cap_h + _PAD)
               for g in groups]
    sheet = Image.new("RGB", (max(width, 4 * thumb_size), _PAD + sum(heights) or thumb_size), _BG)
    draw = ImageDraw.Draw(sheet)
    y = _PAD
    for gi, (g, h) in enumerate(zip(groups, heights)):
        draw.text((_PAD, y), str(titles[gi]) if gi < len(titles) else "", fill=_INK, font=font)
        top = y + line_h + _PAD
        for j, i in enumerate(g):
            x0 = _PAD + (j % columns) * (thumb_size + _PAD)
            y0 = top + (j // columns) * (thumb_size + cap_h + _PAD)
            sheet.paste(_thumb(get(i), thumb_size), (x0, y0))
            if highlight is not None and highlight[gi][j]:
                draw.rectangle([x0 - 2, y0 - 2, x0 + thumb_size + 1, y0 + thumb_size + 1],
                               outline=(220, 40, 40), width=3)
            if captions is not None:
                draw.text((x0, y0 + thumb_size + 1), str(captions[gi][j]), fill=_MUTED,
                          font=font)
        y += h
    if path is not None:
        sheet.save(path, format="PNG")
    return sheet


def _default_label(i: Any) -> str:
    return f"#{i}"


def dedup_sheet(result: DedupResult, images, path: str | Path | None = None, *,
                max_groups: int = 12, max_per_group: int = 8, thumb_size: int = 96,
                columns: int = 8, label: Callable[[int], str] | None = None) -> Image.Image:
    """The largest duplicate groups, one per row, the kept image framed and listed first.
    `label(id)` is the text under a thumbnail and in the titles (default ``#id``)."""
    label = label or _default_label
    groups, titles, caps, marks = [], [], [], []
    for g, kept in zip(result.groups[:max_groups], result.group_kept[:max_groups]):
        ids = [int(kept)] + [int(i) for i in g if i != kept] if kept >= 0 else [int(i) for i in g]
        ids = ids[:max_per_group]
        groups.append(ids)
        titles.append(f"{len(g)} images, " + (f"keeps {label(int(kept))}" if kept >= 0
                                                else "dropped (matches the reference set)"))
        caps.append([label(i) for i in ids])  # the kept one: framed, and named in the title
        marks.append([i == kept for i in ids])
    return contact_sheet(images, groups, path, titles=titles, captions=caps, highlight=marks,
                         thumb_size=thumb_size, columns=columns)


def prototype_sheet(result: Prototypes, images, path: str | Path | None = None, *,
                    max_prototypes: int = 16, per_prototype: int = 8, thumb_size: int = 96,
                    columns: int = 8, label: Callable[[int], str] | None = None) -> Image.Image:
    """One row per prototype, largest cluster first: its medoid (framed) and nearest members.
    `label(id)` is the text under a thumbnail (default ``#id``)."""
    label = label or _default_label
    groups, titles, marks = [], [], []
    for c in result.order[:max_prototypes]:
        ids = [int(i) for i in result.examples[c][:per_prototype] if i >= 0]
        if not ids:
            continue
        groups.append(ids)
        titles.append(f"prototype {int(c)}: {int(result.sizes[c])} images")
        marks.append([j == 0 for j in range(len(ids))])
    return contact_sheet(images, groups, path, titles=titles, highlight=marks,
                         captions=[[label(i) for i in g] for g in groups],
                         thumb_size=thumb_size, columns=columns)


def shared_prototype_sheet(result: SharedPrototypes, images_a, images_b,
                           path: str | Path | None = None, *, names: tuple[str, str] = ("A", "B"),
                           max_clusters: int = 8, per_cluster: int = 8, thumb_size: int = 96,
                           columns: int = 8,
                           labels: tuple[Callable[[int], str], Callable[[int], str]] | None = None
                           ) -> Image.Image:
    """The clusters only one dataset populates, each with that dataset's members nearest the
    centroid: first those of A, then those of B. `labels` (one per dataset, ``id -> text``)
    give the text under a thumbnail (default ``NAME #id``)."""
    if labels is None:
        labels = (lambda i: f"{names[0]} #{i}", lambda i: f"{names[1]} #{i}")
    get_a, get_b = _lookup(images_a), _lookup(images_b)
    groups, titles = [], []
    for side, only, ex, get in (("a", result.only_a, result.examples_a, get_a),
                                ("b", result.only_b, result.examples_b, get_b)):
        name = names[0] if side == "a" else names[1]
        for c in only[:max_clusters]:
            ids = [(side, int(i)) for i in ex[c][:per_cluster] if i >= 0]
            if ids:
                groups.append(ids)
                titles.append(f"only in {name}: cluster {int(c)} ({int(result.counts_a[c])} "
                              f"{names[0]}, {int(result.counts_b[c])} {names[1]})")

    def get(key):
        side, i = key
        return (get_a if side == "a" else get_b)(i)

    return contact_sheet(get, groups, path, titles=titles,
                         captions=[[labels[0 if s == "a" else 1](i) for s, i in g]
                                   for g in groups],
                         thumb_size=thumb_size, columns=columns)
