"""The zoo's registry: a spec string `source:name` -> an adapter function -> a `Model`.

Adapters live one per file (timm.py, torchvision.py, ...) and register themselves with
`@register_source("timm")`. An adapter only maps a name to an `AdapterResult` (module,
preprocessing, quirks); `load()` does everything else once: local weights, device, `.eval()`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from ..errors import InputError, UnknownModelError, ZoolensError

if TYPE_CHECKING:
    from .model import Model

__all__ = ["AdapterResult", "unknown_model", "register_source", "list_sources", "parse_spec",
           "split_model_name", "check_model_name", "load", "as_models", "list_models",
           "resolve_device", "DEFAULT_SEED"]

DEFAULT_SEED = 0  # random weights are drawn from this seed unless load(seed=...) says otherwise

_SOURCES: dict[str, Callable[..., "AdapterResult"]] = {}
_LISTERS: dict[str, Callable[[], list[str]]] = {}
_CACHES: dict[str, Callable[[str], str]] = {}  # source -> (name -> where its weights are cached)
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
    classifier: bool = False  # the forward output is class logits (a classification head)
    meta: dict = field(default_factory=dict)  # anything worth recording (weights, config)


def register_source(name: str, lister: Callable[[], list[str]] | None = None,
                    cache: Callable[[str], str] | None = None):
    """Decorator filing an adapter `fn(name, *, pretrained, weights, **options) -> AdapterResult`.
    `lister` returns the names the source knows, for `zoolens models`; `cache(name)` says
    where the library looks for a model's downloaded weights (default: the Hugging Face
    Hub cache), for the error shown when they cannot be fetched."""

    def decorate(fn):
        _SOURCES[name] = fn
        if lister is not None:
            _LISTERS[name] = lister
        if cache is not None:
            _CACHES[name] = cache
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
    their values parsed as int, float or bool where they look like one; `weights` (a path)
    stays text. A leading `NAME=` is not part of a spec: see `split_model_name`."""
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
        options[key] = value if key in _TEXT_OPTIONS else _parse_value(value)
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


_TEXT_OPTIONS = {"weights"}  # a file name like "1e5" or "true" must stay a path
_NAME_FORBIDDEN = set("/:?&=")  # unit ids are <model>/<layer>:<channel>; specs use ?&=


def split_model_name(text: str) -> tuple[str | None, str]:
    """`NAME=SPEC` -> (NAME, SPEC); a bare spec -> (None, spec).

    The name is the text before the first '=' when that '=' comes before the first ':' (the
    source separator). So `rnet=file:zoo.py:rnet` is named `rnet`, while an '=' after the
    source — an option (`timm:vit?img_size=64`), a folder (`hf:/runs/lr=0.1/model`) — never
    starts a name. The name is checked with `check_model_name`."""
    if not isinstance(text, str):
        return None, text
    eq, colon = text.find("="), text.find(":")
    if eq == -1 or colon == -1 or colon < eq:
        return None, text
    name, spec = text[:eq], text[eq + 1:]
    check_model_name(name, text)
    return name, spec


def check_model_name(name: str, where: str | None = None) -> str:
    """A model name as unit ids (`<model>/<layer>:<channel>`) need it: non-empty, without
    '/', ':', '?', '&', '=' or whitespace. Returns the name; raises InputError otherwise."""
    context = f"{where}: " if where else ""
    if not isinstance(name, str) or not name:
        raise InputError(f"{context}model name {name!r} is empty; write NAME=SPEC, e.g. "
                         "rnet=file:zoo.py:rnet (or load(spec, name='rnet'))")
    bad = sorted({c for c in name if c in _NAME_FORBIDDEN or c.isspace()})
    if bad:
        raise InputError(f"{context}model name {name!r} contains {' '.join(map(repr, bad))}; a "
                         "name may not contain '/', ':', '?', '&', '=' or spaces, since unit ids "
                         "are <model>/<layer>:<channel> (e.g. rnet=file:zoo.py:rnet)")
    return name


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
         *, weights: str | None = None, name: str | None = None,
         seed: int = DEFAULT_SEED) -> "Model":
    """Build the model a spec names, with its own preprocessing, in eval mode on `device`.

    `spec` may carry a name, `NAME=SPEC` (`rnet=file:zoo.py:rnet`): the name is what unit ids
    show; `model.spec` keeps the bare spec. `pretrained=False` gives random weights (offline),
    drawn from `seed`: the same seed builds the same weights, for every source, and the
    caller's random state is left as it was. `weights` (or `?weights=PATH` in the spec) is a
    local checkpoint file, loaded through the source library's own loading path where it has
    one. Weights that cannot be downloaded raise `WeightsUnavailableError`; options the model
    does not take raise `InputError`.
    """
    from .model import Model

    spec_name, spec = split_model_name(spec)
    if name is not None:
        check_model_name(name)
        if spec_name is not None and spec_name != name:
            raise InputError(f"{spec_name}={spec}: named {spec_name!r} in the spec and {name!r} by "
                             "name=; give one name")
    name = name if name is not None else spec_name
    seed = _check_seed(seed)
    source, arch, options = parse_spec(spec)
    if "weights" in options:  # the library's own loading path, same as load(weights=PATH)
        in_spec = options.pop("weights")
        if weights is not None and str(weights) != in_spec:
            raise InputError(f"{spec}: weights given twice, {in_spec!r} in the spec and "
                             f"{str(weights)!r} by weights=; give one")
        weights = in_spec
    if weights is not None and not Path(weights).expanduser().exists():
        raise InputError(f"{spec}: weights file {str(weights)!r} does not exist; weights= names "
                         "a local checkpoint (.pth, .pt, .bin, .safetensors, or a saved folder)")
    weights = None if weights is None else str(Path(weights).expanduser())
    adapter = _adapter(source)
    try:
        with _seeded(seed):
            result = adapter(arch, pretrained=pretrained, weights=weights, **options)
    except ZoolensError:
        raise
    except ImportError as exc:
        raise ImportError(
            f"model source {source!r} needs a package that is not installed ({exc}); "
            f"install it with: pip install 'zoolens[{_EXTRAS.get(source, 'all')}]'"
        ) from exc
    except Exception as exc:
        from ._fetch import download_reason, hf_cache_dir, is_download_failure, weights_unavailable

        if is_download_failure(exc):
            cache = _CACHES[source](arch) if source in _CACHES else hf_cache_dir()
            raise weights_unavailable(
                spec, cache=cache, reason=download_reason(exc), random_ok=pretrained,
                what="pretrained weights" if pretrained else "model files") from None
        if options and isinstance(exc, (TypeError, ValueError, AssertionError, RuntimeError)):
            raise _bad_options(spec, options, exc) from None
        raise
    result.meta["seed"] = seed
    model = Model(spec=spec, adapter=result, device=resolve_device(device), name=name, seed=seed)
    model.pretrained = bool(pretrained or weights)
    return model


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise InputError(f"seed: must be an integer in 0..2**63-1, got {seed!r}")
    return seed


@contextlib.contextmanager
def _seeded(seed: int):
    """Run a model's construction with torch, NumPy and `random` seeded from `seed`, and put
    the caller's random states back afterwards.

    Only the CPU generator is seeded (models are built on the CPU); CUDA generators are
    seeded and restored only when CUDA is already initialised, because seeding CUDA before
    its initialisation queues a seed that would outlive this call."""
    import numpy as np

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed_all(seed)
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _bad_options(spec: str, options: dict, exc: BaseException) -> InputError:
    """The error for spec options a model rejected: which option, its value, and what the
    model takes (its constructor's keyword arguments, where they can be found)."""
    import re

    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    given = ", ".join(f"{k}={v!r} ({type(v).__name__})" for k, v in options.items())
    unexpected = re.search(r"([\w.<>]+)\(\) got an unexpected keyword argument '(\w+)'", message)
    if unexpected and unexpected.group(2) in options:
        callee, key = unexpected.groups()
        takes = _keyword_arguments(exc, callee.split(".")[0] if callee.endswith(".__init__") else callee)
        return InputError(
            f"{spec}: option {key!r} is not taken by this model ({callee}() has no keyword "
            f"argument {key!r})" + (f"; it takes {', '.join(takes)}" if takes else "") +
            ". Options after '?' are keyword arguments of the model's constructor")
    text = [k for k, v in options.items() if isinstance(v, str)]
    suspect = (f"; {', '.join(text)} {'was' if len(text) == 1 else 'were'} read as text — "
               "if a number or true/false is meant, write one" if text else "")
    return InputError(
        f"{spec}: the model could not be built with option{'s' if len(options) > 1 else ''} "
        f"{given}: {type(exc).__name__}: {message}{suspect}. Options after '?' are keyword "
        "arguments of the model's constructor, read as int, float or true/false where they "
        "look like one")


def _keyword_arguments(exc: BaseException, callee: str) -> list[str]:
    """Keyword arguments of the function or class named `callee`, found among the frames
    that raised `exc` (the library's builder holds the class it called); [] if not found."""
    import inspect

    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        for value in [*frame.f_locals.values(), frame.f_globals.get(callee)]:
            if getattr(value, "__name__", None) == callee and callable(value):
                try:
                    params = inspect.signature(value).parameters.values()
                except (TypeError, ValueError):
                    continue
                return [p.name for p in params if p.name != "self" and p.kind in
                        (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        tb = tb.tb_next
    return []


def as_models(models, *, pretrained: bool = True, device=None,
              seed: int = DEFAULT_SEED) -> list["Model"]:
    """Specs, Models, or a mix -> loaded Models (the one way analyses take their models);
    random weights of specs loaded here are drawn from `seed`."""
    from .model import Model

    if not isinstance(models, (list, tuple)):
        models = [models]
    for m in models:
        if not isinstance(m, (str, Model)):
            raise InputError(f"model: expected a spec string (e.g. 'timm:resnet50') or a "
                             f"zoolens Model, got {type(m).__name__}")
    out = [m if isinstance(m, Model) else load(m, pretrained=pretrained, device=device, seed=seed)
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
