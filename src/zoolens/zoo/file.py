"""`file:path/to/zoo.py:factory` — any `torch.nn.Module` a user writes.

The factory is called with `pretrained=` when it accepts that argument, and returns either
a module, `(module, preprocess)`, a dict of `AdapterResult` fields (`module`, `preprocess`,
`input_size`, `prefix_tokens`, `patch_grid`, `block_names`, ...), or an `AdapterResult`.
A generator (latent -> image, for `--generator`) returns a dict with `latent_shape` (e.g.
`(128,)`) and `output_range` (default `(-1, 1)`) and no preprocessing.
Without a preprocessing of its own, a model gets the ImageNet default at `input_size`
(224 unless the dict gives another)."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
from pathlib import Path

import torch
from torch import nn

from ..errors import UnknownModelError
from ._preprocess import default_transform, output_size
from .registry import AdapterResult, register_source


def _load_factory(path: str, factory: str):
    file = Path(path).expanduser()
    if not file.is_file():
        raise UnknownModelError(f"file:{path}:{factory}: no such file {str(file)!r}")
    digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:10]
    spec = importlib.util.spec_from_file_location(f"zoolens_user_{file.stem}_{digest}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
    made = fn(**kwargs)
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
