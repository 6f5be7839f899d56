"""Image sources: folders, lists of paths, CSVs, object-storage URLs, in-memory batches,
synthetic scenes.

`open_source(x)` turns whatever a user names into an `ImageSource`."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import BadImage, Decoded, ImageSource
from .files import FileSource, file_content_hash, folder_source
from .manifests import csv_source, manifest_source, paths_source
from .memory import TensorSource
from .synthetic import SyntheticScenes
from .urls import UrlSource, is_url, url_folder_source, url_list_source

__all__ = ["open_source", "ImageSource", "BadImage", "Decoded", "FileSource", "TensorSource",
           "SyntheticScenes", "UrlSource", "folder_source", "url_folder_source", "url_list_source",
           "csv_source", "manifest_source", "paths_source", "file_content_hash"]

_SYNTHETIC = {"scenes": SyntheticScenes}


def _synthetic(text: str) -> ImageSource:
    import inspect

    from ..errors import UnknownModelError
    from ..zoo.registry import parse_spec

    try:
        _, kind, options = parse_spec(text)
    except UnknownModelError as exc:  # the same grammar as model specs, but an image source
        raise InputError(str(exc).replace("model spec", "image source")) from None
    if kind not in _SYNTHETIC:
        raise InputError(f"unknown synthetic source {kind!r}; have {', '.join(_SYNTHETIC)} "
                         "(e.g. synthetic:scenes?n=64&size=64&seed=0)")
    cls = _SYNTHETIC[kind]
    params = [p for p in inspect.signature(cls).parameters.values()]
    known = {p.name: p.default for p in params}
    for key, value in options.items():  # validated here, at the edge, naming the option
        if key not in known:
            raise InputError(f"{text}: unknown option {key!r}; synthetic:{kind} takes " +
                             ", ".join(f"{k} (default {d})" for k, d in known.items()))
        if isinstance(known[key], int) and (isinstance(value, bool) or not isinstance(value, int)):
            raise InputError(f"{text}: option {key}={value!r} must be an integer, e.g. "
                             f"{key}={known[key]}")
    return cls(**options)


def open_source(images, labels=None) -> ImageSource:
    """An ImageSource from: an ImageSource; 'synthetic:scenes?...'; a folder or a URL prefix
    (`s3://bucket/photos`, any fsspec protocol); a CSV of path,label or a .txt of paths (on
    disk or at a URL, listing paths or URLs); a list of paths or URLs; a tensor/array batch or
    PIL list."""
    if isinstance(images, ImageSource):
        return images
    if isinstance(images, (str, Path)):
        text = str(images)
        if text.startswith("synthetic:"):
            return _synthetic(text)
        if is_url(text):
            if text.lower().endswith((".csv", ".txt")):
                return manifest_source(text)
            return url_folder_source(text)
        path = Path(text).expanduser()
        if path.is_dir():
            return folder_source(path)
        if path.is_file() and path.suffix.lower() in (".csv", ".txt"):
            return manifest_source(path)
        if not path.exists():
            raise InputError(f"images {text!r}: no such file or folder")
        raise InputError(f"images {text!r}: not a folder, a URL (s3://bucket/prefix), a .csv of "
                         "path,label, a .txt list of paths, or synthetic:scenes?n=..")
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], (str, Path)):
        return paths_source(images, labels)
    return TensorSource(images, labels)
