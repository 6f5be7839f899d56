"""Image files: a folder (recursive, deterministic order, class subfolders as labels), a list of
paths, or a CSV of `path,label`."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import InputError
from .base import ImageSource
from .decode import IMAGE_EXTENSIONS, decode_file

__all__ = ["FileSource", "folder_source", "csv_source", "paths_source"]


class FileSource(ImageSource):
    """Images on disk; ids are paths relative to `root` (or as given)."""

    def __init__(self, paths: list[Path], root: Path | None, labels=None, skipped=None,
                 description: str = ""):
        self.paths = [Path(p) for p in paths]
        self.root = root
        ids = [str(p.relative_to(root)) if root and p.is_relative_to(root) else str(p)
               for p in self.paths]
        super().__init__(ids=ids, labels=labels, skipped_at_listing=skipped or [],
                         description=description)

    def decode(self, index: int):
        return decode_file(self.paths[index])


def _natural_key(path: Path):
    import re

    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def folder_source(root: str | Path, *, labels_from_subfolders: bool | None = None) -> FileSource:
    """Every image below `root`, sorted naturally by path. Files without an image extension
    are reported in the skip list; hidden files and folders are ignored. When all images sit
    in first-level subfolders, those name the classes (`labels`)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"image folder {str(root)!r} does not exist")
    images, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            if fn.startswith("."):
                continue
            p = Path(dirpath) / fn
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(p)
            else:
                skipped.append({"id": str(p.relative_to(root)),
                                "reason": f"not an image file (extension {p.suffix or 'none'!r})"})
    if not images:
        raise InputError(f"image folder {str(root)!r} holds no images (looked for "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}, recursively)" +
                         (f"; found {len(skipped)} other files" if skipped else ""))
    images.sort(key=lambda p: _natural_key(p.relative_to(root)))
    rel = [p.relative_to(root) for p in images]
    nested = all(len(r.parts) == 2 for r in rel)
    labels = [r.parts[0] for r in rel] if (labels_from_subfolders or
                                             (labels_from_subfolders is None and nested)) else None
    return FileSource(images, root, labels, skipped, description=f"folder:{root.resolve()}")


def paths_source(paths, labels=None) -> FileSource:
    paths = [Path(p).expanduser() for p in paths]
    if not paths:
        raise InputError("the list of image paths is empty")
    return FileSource(paths, None, labels, description="paths")


def csv_source(csv_path: str | Path) -> FileSource:
    """A CSV with columns `path,label` (a header row is optional); relative paths are taken
    from the CSV's folder."""
    csv_path = Path(csv_path)
    paths, labels = [], []
    with open(csv_path, newline="") as f:
        for k, row in enumerate(csv.reader(f)):
            if not row or (k == 0 and row[0].strip().lower() == "path"):
                continue
            if len(row) < 2:
                raise InputError(f"{csv_path}: line {k + 1} has no label column (want path,label)")
            p = Path(row[0].strip())
            paths.append(p if p.is_absolute() else csv_path.parent / p)
            labels.append(row[1].strip())
    if not paths:
        raise InputError(f"{csv_path}: no rows of path,label")
    return FileSource(paths, csv_path.parent, labels, description=f"csv:{csv_path.resolve()}")
