"""The Typer app and what every command shares: the common options (declared once, here), their
checks (one line naming the flag, exit status 2, before anything is created), logging, one
way to call the library (`call`), and --json output."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import re
import sys
import time
import typing
import warnings
from pathlib import Path
from typing import Annotated, Callable, List, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from .. import __version__
from ..errors import ZoolensError

__all__ = ["app", "console", "setup_logging", "fail", "emit_json", "call", "command", "SPECS_HELP",
           "Models", "Images", "Layers", "Out", "BatchSize", "Device", "Workers", "NoPretrained",
           "Seed", "Json", "Verbose", "Store", "BackendName", "Address", "GpusPerWorker",
           "with_backend", "parse_bytes"]

SPECS_HELP = ("timm:resnet50  torchvision:resnet50  open_clip:ViT-B-32/laion2b_s34b_b79k  "
              "hf:facebook/dinov2-small  file:zoo.py:factory; NAME=SPEC names a model")
IMAGES_HELP = (
    "folder, URL (s3://bucket/prefix, any fsspec protocol), CSV of path,label, .txt of paths, "
    "or synthetic:scenes?n=64&size=64&seed=0")

console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        print(f"zoolens {__version__}")
        raise typer.Exit()


_started = [0.0]


def _elapsed(*_args, **_kwargs) -> None:
    """After every command: how long it took (a long run's first question)."""
    console.print(f"[dim]took {_duration(time.perf_counter() - _started[0])}[/]")


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  result_callback=_elapsed, help="Look inside a zoo of pretrained vision models.")


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print the version and exit")] = False):
    """Look inside a zoo of pretrained vision models."""
    _started[0] = time.perf_counter()


def fail(exc: Exception | str) -> None:
    """Print one clear line and exit 2 (no traceback for errors the user can fix)."""
    # escaped: a message may hold brackets (pip install 'zoolens[ray]', paths) that are no markup
    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True,
                  soft_wrap=True)
    raise typer.Exit(2)


# ---------------------------------------------------------------------------------------------
# checks of common flags: one line naming the flag, before any folder is created


def _at_least(flag: str, low: int, what: str):
    def check(value):
        if value is not None and value < low:
            fail(f"{flag} {value}: {what}")
        return value
    return check


def _device(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    from ..zoo.registry import resolve_device

    try:
        resolve_device(value)
    except ZoolensError as exc:
        fail(exc)
    return value


def _backend_name(value: str) -> str:
    from ..backends import BACKENDS

    if value.lower() not in BACKENDS:
        fail(f"--backend {value!r}: use one of {', '.join(BACKENDS)}")
    return value.lower()


def _at_least_float(flag: str, low: float, what: str):
    def check(value):
        if value is not None and not value >= low:
            fail(f"{flag} {value:g}: {what}")
        return value
    return check


def _out(value: Optional[Path]) -> Optional[Path]:
    if value is not None and value.exists() and not value.is_dir():
        fail(f"--out {str(value)!r} is a file; give a folder (it is created if missing)")
    return value


_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str, flag: str = "--max-memory") -> float:
    """'4GiB', '512MB', '1.5g', '1000000' -> bytes (binary multiples), or fail naming the flag."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        fail(f"{flag} {text!r}: give a size such as 4GiB, 512MiB or 2000000 (bytes)")
    return float(m.group(1)) * _UNITS[m.group(2)]


# ---------------------------------------------------------------------------------------------
# the common options, declared once

Models = Annotated[List[str], typer.Option("--model", "-m", help=SPECS_HELP)]
Images = Annotated[str, typer.Option("--images", "-i", help=IMAGES_HELP)]
Layers = Annotated[str, typer.Option("--layers", "-l", help="all, blocks, blocks[-4:], names or "
                                                            "globs, comma-separated")]
Out = Annotated[Path, typer.Option("--out", "-o", callback=_out, help="output folder")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="images per batch",
                                        callback=_at_least("--batch-size", 1,
                                                           "give at least 1 image per batch"))]
Device = Annotated[Optional[str], typer.Option(callback=_device,
                                               help="cpu, cuda, cuda:1, mps (default: CUDA if "
                                                    "present)")]
Workers = Annotated[Optional[int], typer.Option(
    "--workers", callback=_at_least("--workers", 0, "give 0 (decode in the main process) or more"),
    help="local: decoding workers (default: CPU count, max 8); ray: model workers (default: one "
         "per GPU, else half the CPUs)")]
NoPretrained = Annotated[bool, typer.Option("--no-pretrained", help="random weights (seeded)")]
Seed = Annotated[int, typer.Option(help="seed of random weights and sampling")]
Store = Annotated[Optional[Path], typer.Option(help="a feature store (zoolens extract) to read "
                                                    "the features from instead of running the "
                                                    "models, when it holds them")]
BackendName = Annotated[str, typer.Option(
    "--backend", callback=_backend_name,
    help="local (this machine) | ray (a Ray cluster: decoding in tasks, models in an actor pool; "
         "needs the ray extra of zoolens)")]
Address = Annotated[Optional[str], typer.Option(
    "--address", help="--backend ray: auto (the cluster `ray start` made), HOST:PORT or "
                      "ray://HOST:10001 (default: a local cluster started for the run)")]
GpusPerWorker = Annotated[Optional[float], typer.Option(
    "--gpus-per-worker", callback=_at_least_float("--gpus-per-worker", 0.0,
                                                  "give 0 or more (fractions allowed)"),
    help="--backend ray: GPUs per model worker, fractions allowed (default: 1 when the cluster "
         "has GPUs, else 0)")]
Json = Annotated[bool, typer.Option("--json", help="print the result JSON to stdout")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="log what happens")]


# ---------------------------------------------------------------------------------------------
# running a command


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_time=False, show_path=False)],
                        force=True)
    logging.captureWarnings(True)  # library warnings as log lines, not with their source code
    logging.getLogger("py.warnings").handlers = []
    logging.getLogger("py.warnings").propagate = True


@contextlib.contextmanager
def call(*, verbose: bool = False, interrupted: str = ""):
    """Around one library call: logging set up, the user's errors as one line (exit 2), an
    interruption as one line saying what is kept (exit 130)."""
    setup_logging(verbose)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
    except (ZoolensError, ImportError) as exc:
        fail(exc)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/] " + (interrupted or "nothing was kept"))
        raise typer.Exit(130)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes} min {s:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def emit_json(obj, as_json: bool) -> None:
    """With --json, the command's JSON summary goes to stdout (everything else to stderr)."""
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# the backend options: declared once, turned into one `backend` argument


def make_backend(backend: str = "local", address: Optional[str] = None,
                 gpus_per_worker: Optional[float] = None):
    """The backend object the three options name; a bad combination fails naming the flag, and
    a Ray cluster named by --address is reached now, before anything is created."""
    from ..backends import LocalBackend, RayBackend

    if backend == "local":
        for flag, value in (("--address", address), ("--gpus-per-worker", gpus_per_worker)):
            if value is not None:
                fail(f"{flag} applies to --backend ray; add --backend ray, or drop {flag}")
        return LocalBackend()
    try:
        chosen = RayBackend(address=address, gpus_per_worker=gpus_per_worker)
        if address is not None:
            chosen.connect()
    except ZoolensError as exc:
        fail(exc)
    return chosen


def with_backend(fn: Callable) -> Callable:
    """A command whose function takes `backend=` gets --backend, --address and
    --gpus-per-worker instead, combined into one backend object (`make_backend`); --workers
    stays the function's own `workers`/`num_workers` and counts the backend's workers."""
    hints = typing.get_type_hints(fn, include_extras=True)
    sig = inspect.signature(fn)
    params = [p.replace(annotation=hints.get(p.name, p.annotation))
              for p in sig.parameters.values() if p.name != "backend"]
    options = [inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default="local",
                                 annotation=BackendName),
               inspect.Parameter("address", inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Address),
               inspect.Parameter("gpus_per_worker", inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=GpusPerWorker)]
    tail = [p for p in params if p.name in ("as_json", "verbose")]  # --json, -v stay last
    params = [p for p in params if p not in tail]
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params + options + tail]

    @functools.wraps(fn)
    def run(**kw):
        kw["backend"] = make_backend(kw.pop("backend"), kw.pop("address"),
                                     kw.pop("gpus_per_worker"))
        return fn(**kw)

    run.__signature__ = inspect.Signature(params)
    run.__annotations__ = {p.name: p.annotation for p in params}
    del run.__wrapped__  # Typer must read the signature above, not the function's own
    return run


# ---------------------------------------------------------------------------------------------
# a command from a library function


# The parameters every analysis names the same way, and their options.
_COMMON = {"models": Models, "images": Images, "layers": Layers, "out": Out,
           "batch_size": BatchSize, "device": Device, "num_workers": Workers, "store": Store,
           "seed": Seed}
_SIMPLE = (int, float, str, bool)


def command(fn: Callable, name: str | None = None) -> Callable:
    """Register `zoolens NAME` made from an analysis function's signature: the parameters above
    get the common options (`models` -> --model/-m, `images` -> -i, `layers` -> -l, `out` ->
    -o, `num_workers` -> --workers, `pretrained` -> --no-pretrained), every other keyword of a
    simple type becomes `--kebab-case` with its default, and --json and --verbose are added.
    The help is the docstring's first paragraph; the result's `summary()` is printed and its
    `to_dict()` is the JSON. A `backend` parameter gets --backend, --address and
    --gpus-per-worker (`with_backend`). One line per analysis: ``command(layerstats)``."""
    hints = typing.get_type_hints(fn)
    params = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in ("progress", "backend"):
            continue
        if p.name == "pretrained":
            params.append(inspect.Parameter("no_pretrained", inspect.Parameter.KEYWORD_ONLY,
                                            default=False, annotation=NoPretrained))
            continue
        required = p.default is inspect.Parameter.empty or p.name == "out"
        if p.name in _COMMON:
            annotation = _COMMON[p.name]
        else:
            hint = hints.get(p.name, str)
            base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            if base[0] not in _SIMPLE:
                continue  # arrays, models, dicts: the Python API only
            annotation = Annotated[Optional[base[0]] if p.default is None else base[0],
                                   typer.Option(f"--{p.name.replace('_', '-')}")]
        params.append(inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=... if required else p.default,
                                        annotation=annotation))
    if "backend" in inspect.signature(fn).parameters:
        params.append(inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Optional[str]))  # replaced by with_backend
    params += [inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False,
                                 annotation=Json),
               inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False,
                                 annotation=Verbose)]

    def run(**kw):
        as_json, verbose = kw.pop("as_json"), kw.pop("verbose")
        if "no_pretrained" in kw:
            kw["pretrained"] = not kw.pop("no_pretrained")
        with call(verbose=verbose):
            result = fn(**kw)
        console.print(f"[green]done:[/] {result.summary()}"
                      + (f" -> {kw['out']}" if kw.get("out") else ""))
        emit_json(result.to_dict(), as_json)

    run.__signature__ = inspect.Signature(params)
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__doc__ = (fn.__doc__ or "").split("\n\n")[0]
    run.__name__ = name or fn.__name__
    if "backend" in inspect.signature(fn).parameters:
        run = with_backend(run)
    return app.command(name or fn.__name__)(run)
