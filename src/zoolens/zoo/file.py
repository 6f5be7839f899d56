"""`file:path/to/zoo.py:factory` — any `torch.nn.Module` a user writes.

The factory is called with `pretrained=` when it accepts that argument, and returns either
a module, `(module, preprocess)`, a dict of `AdapterResult` fields (`module`, `preprocess`,
`input_size`, `prefix_tokens`, `patch_grid`, `block_names`, ...), or an `AdapterResult`.
A generator (latent -> image, for `--generator`) returns a dict with `latent_shape` (e.g.
`(128,)`) and `output_range` (default `(-1, 1)`) and no preprocessing.
Without a preprocessing of its own, a model gets the ImageNet default at `input_size`
(224 unless the dict gives another).

An error in the user's file (a syntax error, or an exception while it is imported or while
the factory runs) is raised as `UserCodeError` showing that file's lines only.

Unnamed, a `file:` model is named by its whole spec, path included, as before: the name is
in unit ids and in stores, so a shorter default would break existing outputs and resumes.
`NAME=file:zoo.py:factory` gives it a short name (two copies of one spec get two names)."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import traceback
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, UnknownModelError, UserCodeError
from ._fetch import is_download_failure
from ._preprocess import default_transform, output_size
from .registry import AdapterResult, register_source

__all__ = ["file_source", "user_code_error"]


def _same_file(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # "<frozen importlib...>", "<string>": not a file at all
        return False


def user_code_error(spec: str, file: Path, exc: BaseException, doing: str) -> UserCodeError | None:
    """The error for an exception raised by a user's zoo file, showing only that file's lines
    (the library's own frames would bury them), or None when the user's file is not involved
    (e.g. the factory was called with a keyword it does not take).

    A SyntaxError names its own file and line (it is raised before any of the file runs)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{exc.filename}, line {exc.lineno}"
        text = f"\n    {exc.text.strip()}" if exc.text and exc.text.strip() else ""
        return UserCodeError(f"{spec}: {doing} failed: {where}: {type(exc).__name__}: {exc.msg}{text}",
                             filename=exc.filename, lineno=exc.lineno)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _same_file(f.filename, file)]
    if not frames:
        return None
    hint = ("; the model's weights could not be downloaded (offline?): load it with "
            "pretrained=False / --no-pretrained, or give weights=PATH"
            if is_download_failure(exc) else "")
    detail = str(exc).strip() or "(no message)"
    return UserCodeError(f"{spec}: {doing} failed in your code:\n" +
                         "".join(traceback.format_list(frames)) +
                         f"{type(exc).__name__}: {detail}{hint}",
                         filename=frames[-1].filename, lineno=frames[-1].lineno)


def _load_factory(path: str, factory: str):
    file = Path(path).expanduser()
    if not file.is_file():
        raise UnknownModelError(f"file:{path}:{factory}: no such file {str(file)!r}")
    digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:10]
    spec = importlib.util.spec_from_file_location(f"zoolens_user_{file.stem}_{digest}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises, shown as theirs
        error = user_code_error(f"file:{path}:{factory}", file, exc, f"importing {file.name}")
        if error is None:
            raise
        raise error from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        have = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                and getattr(v, "__module__", None) == module.__name__]
        raise UnknownModelError(f"file:{path}:{factory}: {file.name} defines no callable "
                                f"{factory!r}; have {', '.join(have) or 'none'}")
    return fn


@register_source("file")
def file_source(name: str, *, pretrained: bool = True, weights: str | None = None,
                **kwargs) -> AdapterResult:
    path, sep, factory = name.rpartition(":")
    if not sep:
        raise UnknownModelError(f"file:{name}: write file:PATH:FACTORY, e.g. file:zoo.py:make_model")
    fn = _load_factory(path, factory)
    if "pretrained" in inspect.signature(fn).parameters:
        kwargs["pretrained"] = pretrained
    try:
        made = fn(**kwargs)
    except Exception as exc:  # noqa: BLE001 - shown with the user's own lines only
        error = user_code_error(f"file:{name}", Path(path).expanduser(), exc, f"{factory}()")
        if error is not None:
            raise error from None
        options = {k: v for k, v in kwargs.items() if k != "pretrained"}
        if isinstance(exc, TypeError) and not options:  # e.g. a required argument
            raise InputError(f"file:{name}: calling {factory}() failed: {exc}; the factory is "
                             "called with pretrained= (when it takes it) and the spec's "
                             "?key=value options") from None
        raise  # a keyword the factory does not take: load() names the option
    if isinstance(made, AdapterResult):
        result = made
    else:
        if isinstance(made, nn.Module):
            fields = {"module": made}
        elif isinstance(made, tuple):
            fields = dict(zip(("module", "preprocess"), made))
        elif isinstance(made, dict):
            fields = dict(made)
        else:
            raise UnknownModelError(f"file:{name}: the factory returned {type(made).__name__}; "
                                    "return an nn.Module, (module, preprocess) or a dict")
        size = fields.pop("input_size", 224)
        if fields.get("latent_shape"):  # a generator: its input is a latent vector
            fields["latent_shape"] = tuple(fields["latent_shape"])
            fields.setdefault("preprocess", None)
            fields.setdefault("input_size", (0, 0))
        else:
            fields.setdefault("preprocess", default_transform(size))
            if "input_size" not in fields:
                fields["input_size"] = output_size(fields["preprocess"])
        result = AdapterResult(**fields)
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        result.module.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    result.meta.setdefault("weights", weights)
    return result
