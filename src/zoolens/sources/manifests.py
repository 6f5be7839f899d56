"""Lists of images: a CSV of `path,label`, a `.txt` of paths, or a Python list, each holding
local paths or URLs (`s3://...`), and itself on disk or at a URL. Relative entries are taken
from the list's own folder (or URL prefix)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import InputError
from .base import ImageSource
from .files import FileSource
from .urls import is_url, read_url_text, url_list_source

__all__ = ["csv_source", "paths_source", "list_source", "manifest_source"]


def _parse_csv(text: str, where: str) -> tuple[list[str], list[str]]:
    entries, labels = [], []
    for k, row in enumerate(csv.reader(io.StringIO(text))):
        if not row or (k == 0 and row[0].strip().lower() == "path"):
            continue
        if len(row) < 2:
            raise InputError(f"{where}: line {k + 1} has no label column (want path,label)")
        entries.append(row[0].strip())
        labels.append(row[1].strip())
    if not entries:
        raise InputError(f"{where}: no rows of path,label")
    return entries, labels


def _parse_lines(text: str, where: str) -> list[str]:
    entries = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not entries:
        raise InputError(f"{where}: lists no image paths")
    return entries


def _parent_url(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/"


def list_source(entries, labels=None, *, base: str | Path | None = None,
                description: str = "paths", where: str = "the list of images") -> ImageSource:
    """Images named by `entries` (paths or URLs, not both); a relative entry is taken from
    `base` (a folder or a URL prefix). Ids are entries relative to `base` where they lie
    below it."""
    entries = [str(e) for e in entries]
    if not entries:
        raise InputError(f"{where}: is empty")
    base_text = str(base) if base is not None else None
    base_is_url = base_text is not None and is_url(base_text)
    resolved = []
    for e in entries:
        if is_url(e):
            resolved.append(e)
        elif base_is_url:
            resolved.append(base_text.rstrip("/") + "/" + e.lstrip("/"))
        else:
            p = Path(e).expanduser()
            resolved.append(p if p.is_absolute() or base_text is None else Path(base_text) / p)
    urls = [isinstance(r, str) for r in resolved]
    if all(urls):
        return url_list_source(resolved, labels, root=base_text if base_is_url else None,
                               description=description)
    if any(urls):
        first = entries[urls.index(True)] if not urls[0] else entries[urls.index(False)]
        raise InputError(f"{where}: mixes URLs and local paths (e.g. {first!r}); list one kind")
    root = Path(base_text) if base_text is not None else None
    return FileSource(resolved, root, labels, description=description)


def paths_source(paths, labels=None) -> ImageSource:
    """A Python list of image paths or URLs, with optional labels."""
    return list_source(paths, labels)


def csv_source(csv_path: str | Path) -> ImageSource:
    """A CSV with columns `path,label` (a header row is optional), on disk or at a URL; relative
    paths are taken from the CSV's folder."""
    return manifest_source(csv_path)


def manifest_source(path: str | Path) -> ImageSource:
    """A `.csv` of path,label or a `.txt` of paths, on disk or at a URL."""
    text_path = str(path)
    if is_url(text_path):
        text, base, name = read_url_text(text_path), _parent_url(text_path), text_path
    else:
        local = Path(text_path).expanduser()
        text, base, name = local.read_text(), local.parent, str(local.resolve())
    if text_path.lower().endswith(".csv"):
        entries, labels = _parse_csv(text, text_path)
        return list_source(entries, labels, base=base, description=f"csv:{name}",
                           where=text_path)
    entries = _parse_lines(text, text_path)
    if isinstance(base, Path) and not any(is_url(e) for e in entries):
        # a local list of local paths: its ids stay the full paths, as they always were
        entries = [str(p if p.is_absolute() else base / p) for p in map(Path, entries)]
        base = None
    return list_source(entries, base=base, description=f"list:{name}", where=text_path)
