"""Images in object storage or behind any fsspec URL (`s3://bucket/photos`, `gs://...`,
`az://...`, `hf://datasets/...`, `file:///...`): listed once, each image read by whoever decodes
it, so Ray workers on other machines read the bucket themselves and need no shared disk.

The protocol's fsspec package must be installed where images are read (`s3fs`, `gcsfs`,
`adlfs`, ...); credentials come from its usual places (environment, config files, instance
roles), or from `storage_options`."""

from __future__ import annotations

import re
import time
from pathlib import PurePosixPath

from ..errors import InputError
from .base import BadImage, Decoded, ImageSource
from .decode import decode_bytes
from .files import image_files, no_images_message, subfolder_labels

__all__ = ["UrlSource", "url_folder_source", "url_list_source", "read_url_text", "is_url"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# Keys of an object's listing entry that change when its content is replaced, most telling
# first (S3's ETag is a content hash for plain uploads; GCS gives md5Hash; others a time).
_RETRY_WAITS = (1.0, 4.0)  # seconds before the 2nd and 3rd try of a failed read
_VERSION_KEYS = ("ETag", "etag", "md5Hash", "crc32c", "mtime", "LastModified", "last_modified",
                 "updated", "created")


def is_url(text: str) -> bool:
    """True for `scheme://...` (a local path or `synthetic:...` is not one)."""
    return bool(_URL.match(text))


class UrlSource(ImageSource):
    """Images named by URLs under one root URL; ids are the paths below the root."""

    def __init__(self, urls: list[str], root: str | None, labels=None, skipped=None,
                 versions: list[str] | None = None, storage_options: dict | None = None,
                 description: str | None = None):
        self.urls = list(urls)
        self.root = root
        self.storage_options = dict(storage_options or {})
        self._versions = versions
        ids = [u[len(root):].lstrip("/") if root and u.startswith(root) else u
               for u in self.urls]
        super().__init__(ids=ids, labels=labels, skipped_at_listing=skipped or [],
                         description=description or f"url:{root}")

    def decode(self, index: int) -> Decoded:
        return decode_bytes(self._read(self.urls[index]))

    def _read(self, url: str) -> bytes:
        """The object's bytes. A failed read is tried again (`_RETRY_WAITS`): a skip is kept
        in the store, so a passing network error must not become one."""
        import fsspec

        for attempt, wait in enumerate((*_RETRY_WAITS, None)):
            try:
                with fsspec.open(url, "rb", **self.storage_options) as f:
                    return f.read()
            except FileNotFoundError:
                raise BadImage("file not found") from None
            except Exception as exc:  # network, throttling, permissions
                if wait is None:
                    raise BadImage(f"cannot read after {attempt + 1} tries: "
                                   f"{type(exc).__name__}: {exc}") from None
                time.sleep(wait)
        raise AssertionError("unreachable")

    def item_fingerprint(self, index: int) -> str:
        """`"url:<size>:<version>"` from the listing (the ETag, a hash or a time, whichever
        the store gives): no object is read again to tell whether it changed."""
        if self._versions is None:
            return super().item_fingerprint(index)
        return self._versions[index]



def _reason(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _filesystem(url: str, storage_options: dict):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as exc:  # fsspec names the package to install
        raise InputError(f"images {url!r}: {exc}") from None
    except ValueError as exc:  # an unknown protocol
        raise InputError(f"images {url!r}: {exc} (the URL's scheme must be a protocol "
                         "fsspec knows: s3, gs, az, hf, http, file, ...)") from None


def _version(info: dict) -> str:
    version = next((str(info[k]) for k in _VERSION_KEYS if info.get(k) is not None), "")
    return f"url:{info.get('size', '')}:{version}"


def url_folder_source(url: str, *, labels_from_subfolders: bool | None = None,
                      storage_options: dict | None = None) -> UrlSource:
    """Every image below a URL prefix, as `folder_source` lists a folder: natural order, hidden
    files and folders ignored, other files reported as skipped, first-level subfolders as
    labels when every image sits in one."""
    storage_options = dict(storage_options or {})
    fs, path = _filesystem(url, storage_options)
    try:
        found = fs.find(path, detail=True, withdirs=False)
    except FileNotFoundError:
        found = {}
    except Exception as exc:  # credentials, permissions, network: one line, the URL named
        raise InputError(f"images {url!r}: cannot list ({_reason(exc)})") from None
    base = PurePosixPath(fs._strip_protocol(path))
    entries = {}
    for name, info in found.items():
        if info.get("type", "file") != "file":
            continue
        rel = PurePosixPath(fs._strip_protocol(name)).relative_to(base)
        if any(part.startswith(".") for part in rel.parts):
            continue
        entries[rel] = info
    if not entries:
        if not fs.exists(path):
            raise InputError(f"images {url!r}: no such folder or prefix")
        raise InputError(no_images_message(url, 0))
    images, skipped = image_files(list(entries))
    if not images:
        raise InputError(no_images_message(url, len(skipped)))
    root = url.rstrip("/") + "/"
    return UrlSource([root + str(r) for r in images], root,
                     labels=subfolder_labels(images, labels_from_subfolders), skipped=skipped,
                     versions=[_version(entries[r]) for r in images],
                     storage_options=storage_options)


def read_url_text(url: str, storage_options: dict | None = None) -> str:
    """The text of a small file at a URL (a CSV or .txt list of images)."""
    fs, path = _filesystem(url, dict(storage_options or {}))
    try:
        with fs.open(path, "rb") as f:
            return f.read().decode("utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"images {url!r}: no such file") from None
    except Exception as exc:
        raise InputError(f"images {url!r}: cannot read ({_reason(exc)})") from None


def url_list_source(urls: list[str], labels=None, *, root: str | None = None,
                    description: str = "urls",
                    storage_options: dict | None = None) -> UrlSource:
    """Images at the given URLs (one protocol). Fingerprints come from listing each URL's
    folder once (one request per folder, not per image); an object missing from its folder
    is fingerprinted "missing" and skipped, named, when read."""
    storage_options = dict(storage_options or {})
    fs, _ = _filesystem(urls[0], storage_options)
    protocols = {u.split("://", 1)[0] for u in urls}
    if len(protocols) > 1:
        raise InputError(f"images: the list mixes URL schemes ({', '.join(sorted(protocols))}); "
                         "list one kind")
    paths = [fs._strip_protocol(u) for u in urls]
    found: dict[str, dict] = {}
    for parent in dict.fromkeys(p.rsplit("/", 1)[0] for p in paths):
        try:
            for info in fs.ls(parent, detail=True):
                found[fs._strip_protocol(info["name"])] = info
        except FileNotFoundError:
            continue
        except Exception as exc:
            raise InputError(f"images {parent!r}: cannot list ({_reason(exc)})") from None
    versions = [_version(found[p]) if p in found else "missing" for p in paths]
    return UrlSource(list(urls), root, labels=labels, versions=versions,
                     storage_options=storage_options, description=description)
