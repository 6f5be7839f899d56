"""The zoo's registry: a spec string `source:name` -> an adapter function -> a `Model`.

Adapters live one per file (timm.py, torchvision.py, ...) and register themselves with
`@register_source("timm")`. An adapter only maps a name to an `AdapterResult` (module,
preprocessing, quirks); `load()` does everything else once: local weights, device, `.eval()`.
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from ..errors import InputError, UnknownModelError

if TYPE_CHECKING:
    from .model import Model

__all__ = ["AdapterResult", "unknown_model", "register_source", "list_sources", "parse_spec", "load",
           "as_models", "list_models", "resolve_device"]

_SOURCES: dict[str, Callable[..., "AdapterResult"]] = {}
_LISTERS: dict[str, Callable[[], list[str]]] = {}
# Adapters import heavy libraries lazily; this maps each source to the module defining it.
_SOURCE_MODULES = {
    "timm": "timm",
    "torchvision": "torchvision",
    "open_clip": "open_clip",
    "hf": "hf",
    "diffusers": "diffusers",
    "file": "file",
}


@dataclass
class AdapterResult:
    """What an adapter returns: the module and the facts the engine needs about it.

    Quirks are data here, never branches in the engine.
    """

    module: nn.Module
    preprocess: Callable  # PIL.Image (RGB) -> (3, H, W) float tensor
    input_size: tuple[int, int]  # (H, W) the preprocessing produces
    forward: Callable[[nn.Module, torch.Tensor], object] | None = None  # default: module(x)
    prefix_tokens: int = 0  # CLS + registers ahead of the patch tokens
    patch_grid: tuple[int, int] | None = None  # (rows, cols) of patch tokens
    sequence_first: bool = False  # transformer blocks emit (T, B, D)
    block_names: list[str] | None = None  # the "blocks" selector; None: found by structure
    channels_last: bool = False  # 4D maps are (B, H, W, C) (timm swin-like models)
    latent_shape: tuple[int, ...] | None = None  # a generator: input is a latent, not an image
    output_range: tuple[float, float] = (-1.0, 1.0)  # a generator's image value range
    meta: dict = field(default_factory=dict)  # anything worth recording (weights, config)


def register_source(name: str, lister: Callable[[], list[str]] | None = None):
    """Decorator filing an adapter `fn(name, *, pretrained, weights, **options) -> AdapterResult`.
    `lister` returns the names the source knows, for `zoolens models`."""

    def decorate(fn):
        _SOURCES[name] = fn
        if lister is not None:
            _LISTERS[name] = lister
        return fn

    return decorate


def unknown_model(source: str, name: str, known: list[str]) -> UnknownModelError:
    """The error for a name a source does not know, with the closest names it does."""
    import difflib

    close = difflib.get_close_matches(name, known, n=5)
    return UnknownModelError(f"unknown {source} model {name!r}" +
                             (f"; did you mean {', '.join(close)}?" if close else "") +
                             f" (list them: zoolens models '{source}:*')")


def list_sources() -> list[str]:
    return sorted(_SOURCE_MODULES)


def _adapter(source: str):
    if source not in _SOURCE_MODULES:
        raise UnknownModelError(
            f"unknown model source {source!r}; have {', '.join(list_sources())} "
            f"(a spec looks like 'timm:resnet50' or 'file:zoo.py:factory')"
        )
    if source not in _SOURCES:
        importlib.import_module(f"zoolens.zoo.{_SOURCE_MODULES[source]}")
    return _SOURCES[source]


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """Split `source:name?key=value&...` into (source, name, options). The only place spec
    strings are sliced. Options are model keyword arguments (`timm:vit_tiny_patch16_224?img_size=64`),
    their values parsed as int, float or bool where they look like one."""
    if not isinstance(spec, str) or ":" not in spec:
        raise UnknownModelError(
            f"model spec {spec!r} has no source; write SOURCE:NAME with SOURCE one of "
            f"{', '.join(list_sources())}, e.g. 'timm:resnet50'"
        )
    source, rest = spec.split(":", 1)
    name, _, query = rest.partition("?")
    if not name:
        raise UnknownModelError(f"model spec {spec!r} names no model after '{source}:'")
    options = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UnknownModelError(f"model spec {spec!r}: option {item!r} is not KEY=VALUE")
        options[key] = _parse_value(value)
    return source, name, options


def _parse_value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def list_models(pattern: str = "*") -> list[str]:
    """Specs matching a glob like 'timm:vit*' (sources that can enumerate their models)."""
    source, name_pat = parse_spec(pattern)[:2] if ":" in pattern else ("*", pattern)
    out = []
    for src in list_sources():
        if not fnmatch.fnmatch(src, source):
            continue
        try:
            _adapter(src)
        except ImportError:
            continue
        lister = _LISTERS.get(src)
        if lister is None:
            continue
        out += [f"{src}:{n}" for n in lister() if fnmatch.fnmatch(n, name_pat)]
    return out


def load(spec: str, pretrained: bool = True, device: str | torch.device | None = None,
         *, weights: str | None = None, name: str | None = None) -> "Model":
    """Build the model a spec names, with its own preprocessing, in eval mode on `device`.

    `pretrained=False` gives random weights (offline). `weights` is a local checkpoint file,
    loaded through the source library's own loading path where it has one.
    """
    from .model import Model

    source, arch, options = parse_spec(spec)
    adapter = _adapter(source)
    try:
        result = adapter(arch, pretrained=pretrained, weights=weights, **options)
    except ImportError as exc:
        raise ImportError(
            f"model source {source!r} needs a package that is not installed ({exc}); "
            f"install it with: pip install 'zoolens[{_EXTRAS.get(source, 'all')}]'"
        ) from exc
    model = Model(spec=spec, adapter=result, device=resolve_device(device), name=name)
    model.pretrained = bool(pretrained or weights)
    return model


def as_models(models, *, pretrained: bool = True, device=None) -> list["Model"]:
    """Specs, Models, or a mix -> loaded Models (the one way analyses take their models)."""
    from .model import Model

    if isinstance(models, (str, Model)):
        models = [models]
    if not isinstance(models, (list, tuple)):
        models = [models]
    for m in models:
        if not isinstance(m, (str, Model)):
            raise InputError(f"model: expected a spec string (e.g. 'timm:resnet50') or a "
                             f"zoolens Model, got {type(m).__name__}")
    out = [m if isinstance(m, Model) else load(m, pretrained=pretrained, device=device)
           for m in models]
    if not out:
        raise InputError("no models given; name at least one, e.g. timm:resnet50")
    return out


_EXTRAS = {"open_clip": "open_clip", "hf": "hf", "diffusers": "diffusers"}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> CUDA when present, else CPU; a named device must exist here."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: this machine has no CUDA device (PyTorch "
                         f"{torch.__version__} sees none); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: there are {torch.cuda.device_count()} CUDA "
                         "device(s), numbered from 0")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device}: MPS (Apple GPU) is not available here; use cpu")
    return dev
