"""What every image source provides: a fixed, ordered list of items that decode to RGB images.

Sources only list and decode; batching and workers live in the engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

__all__ = ["ImageSource", "BadImage", "Decoded", "MIN_SIDE"]

MIN_SIDE = 8  # smaller images carry no usable content for 224-px models: reported, not used


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

    def fingerprint(self) -> str:
        """Identifies the listing, so a store can tell whether it holds this source."""
        import hashlib

        h = hashlib.sha1(self.description.encode())
        for i in self.ids:
            h.update(i.encode())
            h.update(b"\0")
        return h.hexdigest()
