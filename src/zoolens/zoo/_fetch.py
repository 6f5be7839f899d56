"""Fetching model files offline: fail fast, in one clear error.

Offline, the libraries behind the zoo fail slowly and loudly: huggingface_hub retries a
refused connection five times with back-off (23 s of waiting per request; timm and open_clip
ask for several files: 48 s and 50 s measured for timm:resnet18 and open_clip:RN50/openai,
27 s for hf:facebook/dinov2-small), and every library ends in a 50-300-line traceback.
Two helpers fix that:

- `hub_access()` wraps a library call that may reach the Hugging Face Hub. Unless the Hub is
  already in offline mode (`HF_HUB_OFFLINE=1`), one HEAD request with a short timeout asks
  whether the Hub answers; if it does not, the call runs in the Hub's own offline mode, where
  a cached file loads at once and a missing one fails at once. The setting is restored after
  the call: loading a model changes no global settings.
- `is_download_failure(exc)` tells a failed download (anywhere in the exception's chain) from
  other errors, and `weights_unavailable()` builds the one error a user then sees: which spec,
  what failed, where the library's cache looks, and what to do instead.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from ..errors import WeightsUnavailableError

__all__ = ["hub_access", "hub_reachable", "hub_offline", "hf_cache_dir", "is_download_failure",
           "download_reason", "weights_unavailable"]

PROBE_TIMEOUT_S = 3.0  # one HEAD request; a healthy Hub answers in well under a second
_PROBE_TTL_S = 60.0  # one load asks the Hub for several files: probe once for all of them
_probe: tuple[float, str, bool] | None = None  # (when, endpoint, reachable)
_scoped = 0  # > 0 while hub_access holds the Hub in offline mode because it did not answer


def hf_cache_dir() -> str:
    """Where huggingface_hub (and so timm, transformers, open_clip, diffusers) caches files."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - every hub-backed source depends on it
        return "~/.cache/huggingface/hub"
    return str(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """Whether the Hub is in offline mode (`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the Hub endpoint answers one HEAD request within `timeout` seconds.

    The request goes through huggingface_hub's own HTTP client, so the user's proxy settings
    and endpoint (`HF_ENDPOINT`) apply. Any HTTP answer counts, even an error status: only
    the connection matters. The answer is remembered for a minute, per endpoint."""
    global _probe
    from huggingface_hub import constants, get_session

    endpoint = constants.ENDPOINT
    now = time.monotonic()
    if _probe is not None and _probe[1] == endpoint and now - _probe[0] < _PROBE_TTL_S:
        return _probe[2]
    try:
        get_session().head(endpoint, timeout=timeout)
        ok = True
    except Exception:  # noqa: BLE001 - whatever the transport raises, the Hub did not answer
        ok = False
    _probe = (now, endpoint, ok)
    return ok


@contextmanager
def hub_access(enabled: bool = True) -> Iterator[bool]:
    """Around a library call that may fetch from the Hub: yields whether the Hub is usable.
    `enabled` False (a call that reads only local files): does nothing, and yields True.

    When the Hub does not answer, the call runs in huggingface_hub's offline mode (cached
    files only), which fails in milliseconds instead of retrying for half a minute per file.
    huggingface_hub and transformers read the mode from `huggingface_hub.constants` at each
    request, so flipping that attribute for the duration of the call is enough; it is put back
    whatever happens. (Not thread-safe: two loads in parallel threads may see each other's
    scoped setting; both would then only read the cache.)"""
    if not enabled:
        yield True
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - no Hub client: nothing to guard
        yield True
        return
    if constants.HF_HUB_OFFLINE or hub_reachable():
        yield not constants.HF_HUB_OFFLINE
        return
    global _scoped
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    _scoped += 1
    try:
        yield False
    finally:
        _scoped -= 1
        constants.HF_HUB_OFFLINE = before


def _user_offline() -> bool:
    """Offline mode set by the user, not by `hub_access` for an unreachable Hub."""
    return hub_offline() and not _scoped


def _network_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the file could not be fetched", from the libraries present."""
    import socket
    import urllib.error

    types: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror,
                                        socket.timeout, urllib.error.URLError]
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        types += [LocalEntryNotFoundError, OfflineModeIsEnabled]
    except ImportError:  # pragma: no cover
        pass
    for name in ("httpx2", "httpx"):  # huggingface_hub's HTTP client, by version
        try:
            module = __import__(name)
            types.append(module.TransportError)
        except (ImportError, AttributeError):
            pass
    try:
        import requests

        types += [requests.ConnectionError, requests.Timeout]
    except ImportError:
        pass
    return tuple(types)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then its causes and contexts (libraries re-raise inside `except` blocks)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_download_failure(exc: BaseException) -> bool:
    """Whether `exc`, or anything in its chain, is a failed download: no connection, a
    timeout, the Hub's offline mode, or a file the offline Hub cache does not hold."""
    network = _network_error_types()
    return any(isinstance(e, network) for e in _chain(exc))


def _hub_error(exc: BaseException) -> bool:
    """Whether the failure came from huggingface_hub (not torch.hub or urllib)."""
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)) for e in _chain(exc))


def download_reason(exc: BaseException) -> str:
    """Why a download failed, in a few words: the Hub's state (offline mode set by the user, or
    not answering), or the innermost network error (e.g. "Name or service not known"), and
    the URL that was asked for when a message in the chain names one."""
    import re
    from urllib.parse import urlparse

    network = _network_error_types()
    chain = list(_chain(exc))
    found_urls = (m.group(0).rstrip(".,:;'\")") for e in chain
                  for m in [re.search(r"https?://\S+", str(e))] if m)
    urls = [u for u in found_urls if urlparse(u).path.strip("/")]  # a file, not just the host
    asked = f" (asked for {urls[0]})" if urls else ""
    if _hub_error(exc):
        from huggingface_hub import constants

        if _user_offline():
            return f"the Hub's offline mode is on (HF_HUB_OFFLINE){asked}"
        return f"the Hugging Face Hub at {constants.ENDPOINT} did not answer (offline?){asked}"
    found = [e for e in chain if isinstance(e, network)]
    e = found[-1] if found else exc
    text = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return f"{text} (offline?){asked}" if urls else f"{text} (offline?)"


def weights_unavailable(spec: str, *, cache: str, what: str = "pretrained weights",
                        reason: str | None = None, random_ok: bool = True,
                        local: str | None = None) -> WeightsUnavailableError:
    """The error for model files that could not be fetched, saying what to do instead.

    `cache`: where the library looks for them (a folder, or a file path); `reason`: from
    `download_reason`; `random_ok`: whether random weights (`--no-pretrained`) are a way out
    (not when the architecture itself comes from the Hub); `local`: how to load a local copy
    instead (default: `?weights=PATH`)."""
    ways = []
    if random_ok:
        ways.append("use --no-pretrained (load(spec, pretrained=False)) for random weights")
    option = "&" if "?" in spec else "?"  # appended, never sliced: parse_spec reads it back
    ways.append(local or f"load a local file: '{spec}{option}weights=PATH' "
                         "(or load(spec, weights=PATH))")
    ways.append("or download them once while online")
    message = (f"{spec}: the {what} could not be downloaded" + (f": {reason}" if reason else "") +
               f"; they are not in the cache at {cache}. To go on, " + "; ".join(ways) + ".")
    return WeightsUnavailableError(message)
