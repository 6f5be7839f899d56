"""Image files on disk, and a folder of them (recursive, deterministic order, class subfolders
as labels); lists of files are `manifests`."""

from __future__ import annotations

import hashlib
import os
import stat
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePath

from ..errors import InputError
from .base import ImageSource
from .decode import IMAGE_EXTENSIONS, decode_file

__all__ = ["FileSource", "folder_source", "file_content_hash", "image_files",
           "subfolder_labels"]


class FileSource(ImageSource):
    """Images on disk; ids are paths relative to `root` (or as given).

    `listing` (folders only, else None) sums up the folder's listing: `files_seen` (distinct
    files, a file reached by several paths counted once, dangling links included) =
    `images` + `skipped_files`; also `duplicate_paths`, `folders`, `links_not_followed`
    (loops and second links to a folder) and `unreadable_folders`."""

    def __init__(self, paths: list[Path], root: Path | None, labels=None, skipped=None,
                 description: str = ""):
        self.paths = [Path(p) for p in paths]
        self.root = root
        self.listing: dict | None = None
        ids = [str(p.relative_to(root)) if root and p.is_relative_to(root) else str(p)
               for p in self.paths]
        super().__init__(ids=ids, labels=labels, skipped_at_listing=skipped or [],
                         description=description)

    def decode(self, index: int):
        return decode_file(self.paths[index])

    def item_fingerprint(self, index: int) -> str:
        """`"stat:<size>:<mtime_ns>"` of the file (following links), `"missing"` if it is
        gone: one stat, no reading. A replaced file almost always changes one of the two;
        inode and ctime are left out on purpose, since copying a dataset elsewhere
        (`cp -p`, `rsync -a`) keeps size and mtime but changes both. For certainty at the
        cost of reading every byte, use `file_content_hash`."""
        return _stat_fingerprint(self.paths[index])


def _stat_fingerprint(path: Path) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"stat:{st.st_size}:{st.st_mtime_ns}"


def file_content_hash(path: str | Path, *, chunk_size: int = 1 << 20) -> str:
    """`"sha256:<hex>"` of a file's bytes, read in chunks (for a store that must be sure an
    image is unchanged, or to confirm a stat fingerprint that changed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _natural_key(path: PurePath):
    import re

    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


@dataclass
class _Entry:
    path: Path  # as reached from the root (maybe through links)
    identity: tuple[int, int]  # (st_dev, st_ino) of the file itself: one per file
    via_link: bool  # the path goes through a symbolic link (of the file or of a folder)


def _walk(root: Path) -> tuple[list[_Entry], list[Path], list[dict], dict]:
    """Every non-hidden file below `root`, each real folder read once.

    Returns (entries, broken links, unreadable folders, counts). Folders are identified by
    (st_dev, st_ino): a link back up the tree (`sub/loop -> sub`) or a second link to a folder
    already read is not followed again. The real tree is read first and folder links after
    it, so a folder reached both ways keeps its real path."""
    seen_dirs: set[tuple[int, int]] = set()
    entries: list[_Entry] = []
    broken: list[Path] = []
    unreadable: list[dict] = []
    links_not_followed = 0
    pending: deque[tuple[Path, bool]] = deque([(root, False)])  # (folder, reached via a link)
    while pending:
        top, via_link = pending.popleft()
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                st = os.stat(folder)  # follows a link: its target's identity
            except OSError as exc:
                unreadable.append({"id": str(folder.relative_to(root)) + os.sep,
                                   "reason": f"folder cannot be read ({exc.strerror or exc})"})
                continue
            identity = (st.st_dev, st.st_ino)
            if identity in seen_dirs:  # a loop, or a second way into a folder already read
                links_not_followed += 1
                continue
            seen_dirs.add(identity)
            try:
                with os.scandir(folder) as it:
                    found = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                unreadable.append({"id": str(folder.relative_to(root)) + os.sep,
                                   "reason": f"folder cannot be read ({exc.strerror or exc})"})
                continue
            subfolders = []
            for entry in found:
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subfolders.append(path)
                        continue
                    if entry.is_symlink():
                        target = entry.stat()  # follows; fails for a dangling link or a loop
                        if stat.S_ISDIR(target.st_mode):
                            pending.append((path, True))  # read after the real tree
                            continue
                        entries.append(_Entry(path, (target.st_dev, target.st_ino), True))
                    else:  # one lstat: the listing's own inode number (d_ino) can differ
                        own = entry.stat(follow_symlinks=False)  # from st_ino on overlayfs
                        entries.append(_Entry(path, (own.st_dev, own.st_ino), via_link))
                except OSError:
                    broken.append(path)
            stack.extend(reversed(subfolders))  # depth first, in name order
    counts = {"folders": len(seen_dirs), "links_not_followed": links_not_followed}
    return entries, broken, unreadable, counts


def folder_source(root: str | Path, *, labels_from_subfolders: bool | None = None) -> FileSource:
    """Every image below `root`, sorted naturally by path. Files without an image extension
    are reported in the skip list; hidden files and folders are ignored. When all images sit
    in first-level subfolders, those name the classes (`labels`).

    Symbolic links are followed, each real folder once: a link that leads back up the tree
    (`sub/loop -> sub`) is not a way into a new folder and is not followed again. A file
    reached by several paths (links, hard links) is the same image and is listed once, under
    its first path in natural order that goes through no link. A dangling link is reported
    in the skip list. `source.listing` sums it up: images + skipped files = files seen."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"image folder {str(root)!r} does not exist")
    entries, broken, unreadable, counts = _walk(root)
    by_file: dict[tuple[int, int], list[_Entry]] = {}
    for e in entries:
        by_file.setdefault(e.identity, []).append(e)
    chosen = [min(group, key=lambda e: (e.via_link, _natural_key(e.path.relative_to(root))))
              for group in by_file.values()]
    images, skipped = image_files([e.path.relative_to(root) for e in chosen])
    for path in broken:
        skipped.append({"id": str(path.relative_to(root)),
                        "reason": "broken symbolic link (its target is missing, or a loop)"})
    skipped.sort(key=lambda s: _natural_key(Path(s["id"])))
    listing = {"files_seen": len(by_file) + len(broken), "images": len(images),
               "skipped_files": len(skipped), "unreadable_folders": len(unreadable),
               "duplicate_paths": len(entries) - len(by_file), **counts}
    skipped += unreadable
    if not images:
        raise InputError(no_images_message(str(root), len(skipped)))
    labels = subfolder_labels(images, labels_from_subfolders)
    source = FileSource([root / r for r in images], root, labels, skipped,
                        description=f"folder:{root.resolve()}")
    source.listing = listing
    return source


def image_files(rel: list[PurePath]) -> tuple[list[PurePath], list[dict]]:
    """The image files among paths relative to a folder's root, in natural order, and a skip
    entry (``{"id", "reason"}``) for each other file."""
    images, skipped = [], []
    for r in rel:
        if r.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(r)
        else:
            skipped.append({"id": str(r),
                            "reason": f"not an image file (extension {r.suffix or 'none'!r})"})
    images.sort(key=_natural_key)
    return images, skipped


def subfolder_labels(rel: list[PurePath], from_subfolders: bool | None) -> list[str] | None:
    """Class labels from first-level subfolders: always (`True`), never (`False`), or when
    every image sits in one (`None`)."""
    nested = all(len(r.parts) == 2 for r in rel)
    if from_subfolders or (from_subfolders is None and nested):
        return [r.parts[0] if len(r.parts) > 1 else "" for r in rel]
    return None


def no_images_message(where: str, n_other: int) -> str:
    return (f"image folder {where!r} holds no images (looked for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}, recursively)" +
            (f"; found {n_other} other file{'s' if n_other > 1 else ''}" if n_other else ""))
