"""What every image source provides: a fixed, ordered list of items that decode to RGB images.

Sources only list and decode; batching and workers live in the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath

from PIL import Image

__all__ = ["ImageSource", "BadImage", "Decoded", "MIN_SIDE", "pixels_hash"]

MIN_SIDE = 8  # smaller images carry no usable content for 224-px models: reported, not used


def pixels_hash(image: Image.Image) -> str:
    """A hash of a PIL image's mode, size and pixel bytes (16 hex digits)."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    h.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


class BadImage(Exception):
    """An item that cannot be used; the message is the reason shown in the skip list."""


@dataclass
class Decoded:
    image: Image.Image | None  # RGB; None for a latent that a zoo member draws into an image
    note: str | None = None  # e.g. "converted from CMYK"
    latent: object | None = None  # the generator's input (a tensor), for drawn sources


@dataclass
class ImageSource:
    """Base class: `ids` fixes the order; `decode(i)` returns a `Decoded` or raises BadImage."""

    ids: list[str] = field(default_factory=list)
    labels: list | None = None  # one per item where the source knows them (class folders, CSV)
    skipped_at_listing: list[dict] = field(default_factory=list)  # files never decoded
    description: str = ""
    # The zoo member that draws this source's images from its items (latents), or None: the
    # engine runs it first in every batch, and the other models see what it drew.
    drawn_by: object | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def decode(self, index: int) -> Decoded:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def classes(self) -> list | None:
        return sorted(set(self.labels)) if self.labels is not None else None

    def item_fingerprint(self, index: int) -> str:
        """What item `index` is, as a short string that changes when its content changes.

        Subclasses give a cheap one (a file's size and mtime; the seed of a synthetic
        scene); this fallback decodes the item and hashes its pixels: exact, but a full decode.
        An item that cannot be decoded gets "bad:" and a hash of the reason."""
        import hashlib

        try:
            image = self.decode(index).image
        except BadImage as exc:
            return "bad:" + hashlib.blake2b(str(exc).encode(), digest_size=8).hexdigest()
        return "pixels:" + pixels_hash(image)

    def item_fingerprints(self) -> list[str]:
        """`item_fingerprint(i)` for every item, in source order. A store records these per
        row and recomputes a row whose fingerprint changed."""
        return [self.item_fingerprint(i) for i in range(len(self))]

    def short_name(self) -> str:
        """A short name for tables and legends: a folder's name, a CSV's stem, a URL's last
        part (a .txt list's stem); "" for a source without one (tensors, synthetic scenes)."""
        kind, _, rest = self.description.partition(":")
        if kind == "folder" and rest:
            return PurePath(rest).name
        if kind in ("csv", "list") and rest:
            return PurePath(rest).stem
        if kind == "url":
            return rest.rstrip("/").rsplit("/", 1)[-1]
        return ""

    def fingerprint(self) -> str:
        """Identifies the listing, so a store can tell whether it holds this source."""
        import hashlib

        h = hashlib.sha1(self.description.encode())
        for i in self.ids:
            h.update(i.encode())
            h.update(b"\0")
        return h.hexdigest()
