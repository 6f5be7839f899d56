"""One self-contained HTML page from the result JSON of zoolens analyses.

`build_report(dirs)` walks the folders (recursively) for the JSON files the commands write:
``extract.json``, ``rosetta.json``, ``compare.json``, ``probe.json``, ``discover.json``,
``visualize.json``, and any other small JSON file whose top level carries an ``"analysis"`` key.
It renders run settings, summary tables, Rosetta sets and concept galleries, similarity heatmaps,
probe leaderboards and curves, discovery masks and overlays, and any other list of records a
result carries (e.g. ``concept_scores``) as a generic table.

The page is built from the JSON alone plus the figure files those JSON files name (relative to
their folder), and the figures the commands write beside them by fixed names (``compare.png``,
``probe_curves.png``). Every image is embedded as a base64 data URI after being decoded once, so
a broken file becomes a note, never a broken image; the page has inline CSS, no script, and a
Content-Security-Policy that forbids any request. Expected analyses that are absent, unreadable
JSON files, missing figures and partial runs each get a visible note, in place and listed at the
top. Nothing here imports torch or the analyses.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import InputError

__all__ = ["build_report", "render_report", "default_output", "ReportPage", "ANALYSES",
           "EXPECTED"]

ANALYSES = ("extract", "rosetta", "compare", "probe", "discover", "visualize")
EXPECTED = ("rosetta", "compare", "probe", "discover")  # what the demo runs; others optional

_TITLES = {"extract": "Feature extraction", "rosetta": "Rosetta neurons",
           "compare": "Layer similarity", "probe": "Probes",
           "discover": "Object discovery", "visualize": "Visualization",
           "other": "Other results", "demo": "Demo run"}
_HINTS = {"extract": "zoolens extract -m MODEL -i IMAGES -o DIR/features",
          "rosetta": "zoolens rosetta -m MODEL_A -m MODEL_B -i IMAGES -o DIR/rosetta",
          "compare": "zoolens compare -m MODEL_A -m MODEL_B -i IMAGES -o DIR/compare",
          "probe": "zoolens probe -m MODEL --train TRAIN --test TEST -o DIR/probe",
          "discover": "zoolens discover -m MODEL -i IMAGES -o DIR/discover",
          "visualize": "zoolens visualize -m MODEL -i IMAGES -o DIR/visualize"}
# Figures a command writes beside its JSON under a fixed name (the JSON does not name them).
_BESIDE = {"compare": "compare.png", "probe": "probe_curves.png"}
_KNOWN_KEYS = {
    "extract": {"store", "models", "images", "extracted", "skipped", "notes", "complete",
                "last_run"},
    "rosetta": {"analysis", "version", "models", "images", "resolution", "units", "pairs", "sets",
                "concepts", "dead_units", "skipped", "settings", "concept_scores"},
    "compare": {"analysis", "version", "metric", "model_a", "model_b", "layers_a", "layers_b",
                "matrix", "images", "skipped", "settings"},
    "probe": {"analysis", "version", "results", "settings", "skipped", "notes", "leaderboard"},
    "discover": {"model", "layer", "feature", "channels", "features", "grid", "input_size", "tau",
                 "eps", "objects", "notes", "images", "skipped", "complete", "ground_truth"},
    "visualize": {"model", "kind", "layer", "feature", "grid", "input_size", "threshold", "heads",
                  "notes", "arrays", "images", "skipped"},
    # `zoolens demo`'s run record; its concept and discovery scores are shown in their sections
    "demo": {"zoo", "images", "seeds", "seconds", "torch_threads", "concept_scores",
             "discovery"},
}
_MAX_JSON_BYTES = 256 * 2**20
_MAX_OTHER_JSON_BYTES = 2 * 2**20  # other *.json files are read only to look for "analysis"
_MAX_IMAGE_BYTES = 32 * 2**20
_SKIP_JSON = {"manifest.json", "ids.json"}  # feature-store files, never results
_MAX_CONCEPT_FIGURES = 32  # concept figures are large (~0.4 MB each)
_ROWS_SHOWN = 25  # table rows shown before a "show all" fold
_ROWS_MAX = 500  # rows rendered at most in any table
_MIMES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}


# ----------------------------------------------------------------------------------------------
# finding and reading results


@dataclass
class _Result:
    kind: str  # an entry of ANALYSES, or "other"
    path: Path  # the JSON file
    label: str  # how the page names it: <root name>/<relative path>
    data: dict | None = None
    error: str | None = None
    anchor: str = ""


def _read_json(path: Path, limit: int) -> tuple[Any, str | None]:
    try:
        size = path.stat().st_size
        if size > limit:
            return None, f"{size / 2**20:.0f} MiB, larger than the {limit / 2**20:.0f} MiB read"
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _walk(root: Path) -> Iterable[Path]:
    for here, subdirs, files in os.walk(root):
        # hidden folders and caches hold no results; sorted for a stable page
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".json"):
                yield Path(here) / name


def _find(roots: Sequence[Path]) -> list[_Result]:
    known = {f"{a}.json": a for a in ANALYSES + ("demo",)}
    found: list[_Result] = []
    seen: set[Path] = set()
    for root in roots:
        paths = [root] if root.is_file() else _walk(root)
        base = root.parent if root.is_file() else root
        for path in paths:
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            rel = path.relative_to(base).as_posix()
            label = f"{root.name}/{rel}" if root.is_dir() and len(roots) > 1 else rel
            kind = known.get(path.name)
            if kind is not None:
                data, error = _read_json(path, _MAX_JSON_BYTES)
                if error is None and not isinstance(data, dict):
                    data, error = None, (f"expected a JSON object at the top level, got "
                                         f"{type(data).__name__}")
                found.append(_Result(kind, path, label, data, error))
            elif path.name not in _SKIP_JSON:
                data, error = _read_json(path, _MAX_OTHER_JSON_BYTES)
                if error is None and isinstance(data, dict) and isinstance(
                        data.get("analysis"), str):
                    kind = data["analysis"] if data["analysis"] in ANALYSES else "other"
                    found.append(_Result(kind, path, label, data, None))
    order = {k: i for i, k in enumerate(("demo",) + ANALYSES + ("other",))}
    found.sort(key=lambda r: (order[r.kind], r.label))
    return found


# ----------------------------------------------------------------------------------------------
# small HTML helpers (every piece of text goes through _e)


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True).replace("\x00", "\ufffd")


class _Raw(str):
    """Markup already escaped (a table cell built from parts)."""


def _wrap(text: str) -> str:
    """Escaped text with break opportunities after '?', '&', '/' and ',': model specs and
    paths are long and have no spaces."""
    return re.sub(r"(\?|&amp;|/|,)", r"\1<wbr>", _e(text))


def _lines(items: Iterable[Any]) -> _Raw:
    """One item per line (model lists)."""
    return _Raw("<br>".join(_wrap(x) for x in items))


def _num(v: Any) -> str:
    """A number as a short string: ints as they are, floats to 3 decimals or 3 significant
    digits when very small or large."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.3f}"
    return str(v)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short_list(items: list, limit: int = 12) -> str:
    shown = ", ".join(_num(x) if _is_num(x) else str(x) for x in items[:limit])
    return shown + (f", … (+{len(items) - limit} more)" if len(items) > limit else "")


def _cell_text(v: Any) -> str:
    """Plain text of a table cell (not escaped yet)."""
    if v is None:
        return "–"
    if isinstance(v, (bool, int, float)):
        return _num(v)
    if isinstance(v, str):
        return v
    if isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v):
        return _short_list(v)
    if isinstance(v, dict) and len(v) > 6 and all(isinstance(x, float) for x in v.values()):
        # a score per label: the best few first
        top = sorted(v.items(), key=lambda kv: -float(kv[1]))
        text = ", ".join(f"{k} {_num(x)}" for k, x in top[:5])
        return text + (f", … (+{len(top) - 5})" if len(top) > 5 else "")
    if isinstance(v, dict) and all(not isinstance(x, (dict, list)) for x in v.values()):
        return ", ".join(f"{k}: {f'{x:.4g}' if isinstance(x, float) else _cell_text(x)}"
                         for k, x in v.items())
    text = json.dumps(v, default=str)
    return text if len(text) <= 200 else text[:199] + "…"


def _cell(v: Any, cls: str = "") -> str:
    classes = " ".join(c for c in (cls, "num" if _is_num(v) else "") if c)
    text = v if isinstance(v, _Raw) else _wrap(_cell_text(v)) if cls == "mono" else _e(
        _cell_text(v))
    return (f'<td class="{classes}">' if classes else "<td>") + text + "</td>"


def _table(rows: list[dict], columns: Sequence[str] | None = None,
           headers: Sequence[str] | None = None, *, mono: Sequence[str] = (),
           shown: int = _ROWS_SHOWN, what: str = "rows") -> str:
    """A table of records; rows past `shown` go in a fold, rows past _ROWS_MAX are left out
    (said so)."""
    rows = [r for r in rows if isinstance(r, dict)]
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    headers = list(headers) if headers is not None else list(columns)
    head = "".join(f"<th>{_wrap(h)}</th>" for h in headers)

    def body(part: list[dict]) -> str:
        return "".join("<tr>" + "".join(_cell(r.get(c), "mono" if c in mono else "")
                                         for c in columns) + "</tr>" for r in part)

    out = f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>'
    out += body(rows[:shown]) + "</tbody></table></div>"
    if len(rows) > shown:
        rest = rows[shown:_ROWS_MAX]
        out += (f"<details><summary>show {len(rest)} more {_e(what)}</summary>"
                f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body(rest)}'
                "</tbody></table></div></details>")
    if len(rows) > _ROWS_MAX:
        out += (f'<p class="muted">{len(rows) - _ROWS_MAX} more {_e(what)} are in the JSON file '
                "and not shown.</p>")
    return out


def _kv(pairs: Iterable[tuple[str, Any]], *, mono: Sequence[str] = ()) -> str:
    """A two-column table of settings; None values are left out."""
    rows = []
    for key, value in pairs:
        if value is None or value == "" or value == [] or value == {}:
            continue
        if isinstance(value, _Raw):
            text = value
        elif isinstance(value, float):
            text = _e(f"{value:.4g}")  # settings: no padding zeros
        elif key in mono:
            text = _wrap(_cell_text(value))
        else:
            text = _e(_cell_text(value))
        cls = ' class="mono"' if key in mono else ""
        rows.append(f"<tr><th>{_e(key)}</th><td{cls}>{text}</td></tr>")
    return f'<table class="kv"><tbody>{"".join(rows)}</tbody></table>' if rows else ""


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


def _records(v: Any) -> list[dict]:
    return [x for x in _list(v) if isinstance(x, dict)]


def _strs(v: Any) -> list[str]:
    return [str(x) for x in _list(v) if isinstance(x, (str, int, float))]


def _size(v: Any) -> str | None:
    """[H, W] -> 'HxW'."""
    v = _list(v)
    if len(v) == 2 and all(_is_num(x) for x in v):
        return f"{_num(v[0])}x{_num(v[1])}"
    return None


def _span(v: Any) -> str | None:
    """[start, stop] -> 'start..stop' (a channel range)."""
    v = _list(v)
    return f"{_num(v[0])}..{_num(v[1])}" if len(v) == 2 and all(map(_is_num, v)) else None


def _weights(pretrained: Any) -> str | None:
    if pretrained is None:
        return None
    return "pretrained" if pretrained else "random (--no-pretrained)"


def _layers_text(layers: Any) -> str | None:
    """A layer list as 'n: first, second, …, last' (lists are long)."""
    names = _strs(layers)
    if not names:
        return None
    if len(names) <= 4:
        return f"{len(names)}: " + ", ".join(names)
    return f"{len(names)}: {names[0]}, {names[1]}, …, {names[-1]}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _unit(unit: Any) -> str:
    """'<model>/<layer>:<channel>' -> '<layer>:<channel>' (layer names hold no '/')."""
    return str(unit).rsplit("/", 1)[-1]


_VIRIDIS = ((0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)),
            (0.75, (94, 201, 98)), (1.0, (253, 231, 37)))


def _colour(v: float) -> str:
    v = min(1.0, max(0.0, v)) if math.isfinite(v) else 0.0
    for (a, ca), (b, cb) in zip(_VIRIDIS, _VIRIDIS[1:]):
        if v <= b:
            t = (v - a) / (b - a)
            return "#%02x%02x%02x" % tuple(round(x + t * (y - x)) for x, y in zip(ca, cb))
    return "#fde725"


# ----------------------------------------------------------------------------------------------
# the page being built


@dataclass
class ReportPage:
    """A rendered report: the HTML, what was found, and every note the page shows.

    Attributes:
        html: the whole page.
        found: ``[{"analysis", "file", "ok"}]`` per result JSON file found.
        notes: ``[{"where", "text"}]`` each missing analysis, unreadable file, missing figure or
            partial run the page points out.
    """

    html: str
    found: list[dict] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)

    def write(self, path: str | Path) -> Path:
        """Write the page to `path` (through a temporary file: never a half-written page)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.html, encoding="utf-8")
        tmp.replace(path)
        return path


class _Page:
    def __init__(self, max_images: int):
        self.max_images = max_images
        self.notes: list[dict] = []
        self._anchors: set[str] = set()

    def anchor(self, text: str) -> str:
        base = _slug(text)
        a, n = base, 1
        while a in self._anchors:
            n += 1
            a = f"{base}-{n}"
        self._anchors.add(a)
        return a

    def note(self, text: str, anchor: str, where: str, *, missing: bool = False,
             code: str = "") -> str:
        """A visible note in place, also listed at the top of the page; `code` (a command) is
        appended in a code span."""
        self.notes.append({"where": where, "anchor": anchor, "text": text, "missing": missing,
                           "code": code})
        extra = f" <code>{_e(code)}</code>" if code else ""
        return f'<p class="note{" missing" if missing else ""}">{_e(text)}{extra}</p>'

    def image(self, rel: Any, folder: Path, r: _Result, alt: str, *, cls: str = "",
              what: str = "figure") -> str:
        """An <img> with the file embedded, or a note saying why it is not there."""
        if not isinstance(rel, str) or not rel:
            return self.note(f"{what}: no file named in {r.label}", r.anchor, r.label)
        path = folder / rel
        try:
            inside = path.resolve().is_relative_to(folder.resolve())
        except (OSError, RuntimeError, ValueError):  # ValueError: a NUL in the name
            inside = False
        if not inside:
            return self.note(f"{what} {rel!r} lies outside the folder of {r.label}; not embedded",
                             r.anchor, r.label)
        embedded = _embed(path)
        if isinstance(embedded, str):
            return self.note(f"{what} {rel}: {embedded}", r.anchor, r.label, missing=True)
        uri, w, h = embedded
        c = f' class="{cls}"' if cls else ""
        return f'<img{c} src="{uri}" width="{w}" height="{h}" alt="{_e(alt)}" title="{_e(rel)}">'


def _embed(path: Path) -> tuple[str, int, int] | str:
    """(data URI, width, height) of a decodable image file, or why it cannot be shown."""
    from PIL import Image

    try:
        if not path.is_file():
            return "missing"
        size = path.stat().st_size
        if size > _MAX_IMAGE_BYTES:
            return f"{size / 2**20:.0f} MiB, too large to embed"
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable ({exc})"
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
            im.load()  # a full decode: a truncated file fails here, not in the browser
    except Exception as exc:  # PIL raises many kinds on bad files
        return f"not a readable image ({type(exc).__name__})"
    if fmt not in _MIMES:
        return f"{fmt} images are not embedded (PNG, JPEG, GIF, WebP are)"
    return f"data:{_MIMES[fmt]};base64,{base64.b64encode(data).decode('ascii')}", w, h


# ----------------------------------------------------------------------------------------------
# per-analysis facts (run settings and summary rows)


def _facts(r: _Result) -> dict:
    """models, images, source, resolution, layers, weights, headline of one result."""
    d = r.data or {}
    s = _dict(d.get("settings"))
    f: dict[str, Any] = {"models": [], "images": None, "source": None, "resolution": None,
                         "layers": None, "weights": None, "headline": ""}
    if r.kind == "rosetta":
        f["models"] = _strs(d.get("models"))
        f["images"], f["source"] = d.get("images"), s.get("source")
        f["resolution"] = _size(d.get("resolution"))
        f["layers"] = "; ".join(f"{m}: {_layers_text(v)}"
                                for m, v in _dict(s.get("layers")).items() if _layers_text(v))
        f["headline"] = (f"{len(_list(d.get('sets')))} sets, "
                         f"{len(_list(d.get('concepts')))} concepts")
    elif r.kind == "compare":
        f["models"] = list(dict.fromkeys(str(d[k]) for k in ("model_a", "model_b") if d.get(k)))
        f["images"], f["source"] = d.get("images"), s.get("source")
        f["weights"] = _weights(s.get("pretrained"))
        f["layers"] = f"{len(_list(d.get('layers_a')))} x {len(_list(d.get('layers_b')))}"
        vals = [v for row in _list(d.get("matrix")) for v in _list(row) if _is_num(v)]
        metric = str(d.get("metric", "?"))
        f["headline"] = metric + (f", range {_num(min(vals))}..{_num(max(vals))}" if vals else "")
    elif r.kind == "probe":
        f["models"] = _strs(s.get("models")) or list(dict.fromkeys(
            str(x.get("model")) for x in _records(d.get("results"))))
        f["images"] = s.get("n_train") and f"{s.get('n_train')} train / {s.get('n_test')} test"
        f["source"] = s.get("train") and f"train {s.get('train')}; test {s.get('test')}"
        f["weights"] = _weights(s.get("pretrained"))
        f["layers"] = "; ".join(f"{m}: {_layers_text(v)}"
                                for m, v in _dict(s.get("layers")).items() if _layers_text(v))
        best = [b for b in _leaderboard(d) if _is_num(b.get("top1"))]
        if best:
            b = max(best, key=lambda b: b["top1"])
            f["headline"] = (f"best top-1 {_num(b['top1'])} ({b.get('model')} {b.get('method')}, "
                             f"{b.get('layer')})")
    elif r.kind in ("discover", "visualize"):
        f["models"] = [str(d["model"])] if d.get("model") else []
        images = _records(d.get("images"))
        f["images"] = len(images)
        f["resolution"] = _size(d.get("input_size"))
        f["layers"] = d.get("layer") and f"{d.get('layer')} ({d.get('feature')})"
        if r.kind == "discover":
            n = sum(len(_list(i.get("masks"))) for i in images)
            f["headline"] = f"{n} masks in {len(images)} images"
        else:
            f["headline"] = f"{d.get('kind', '?')} of {len(images)} images"
    elif r.kind == "demo":
        f["models"] = list(_dict(d.get("zoo")))
        seconds = _dict(d.get("seconds")).get("total")
        f["headline"] = (f"{d.get('images', '?')} images"
                         + (f", {_num(seconds)} s in all" if _is_num(seconds) else ""))
    elif r.kind == "extract":
        f["models"] = list(_dict(d.get("models")))
        f["images"] = d.get("images")
        f["layers"] = "; ".join(f"{m}: {_layers_text(v)}"
                                for m, v in _dict(d.get("models")).items() if _layers_text(v))
        f["headline"] = f"{d.get('extracted', '?')} of {d.get('images', '?')} images extracted"
    else:
        f["headline"] = f"analysis {d.get('analysis', '?')}"
    return f


def _safe_facts(r: _Result) -> dict:
    try:
        return _facts(r)
    except Exception as exc:  # a malformed file still gets its row
        return {"models": [], "images": None, "source": None, "resolution": None,
                "layers": None, "weights": None,
                "headline": f"settings unreadable ({type(exc).__name__})"}


# ----------------------------------------------------------------------------------------------
# per-analysis sections


def _skipped(d: dict) -> str:
    sk = d.get("skipped")
    rows = _records(sk) if isinstance(sk, list) else [
        {"split": split, **x} for split, v in _dict(sk).items() for x in _records(v)]
    if not rows:
        return ""
    return f"<h4>Skipped ({len(rows)})</h4>" + _table(rows, what="skipped images")


def _notes_list(d: dict) -> str:
    notes = _strs(d.get("notes"))
    if not notes:
        return ""
    return "<h4>Notes</h4><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"


def _extras(d: dict, kind: str, page: _Page, r: _Result) -> str:
    """Keys this renderer does not know: lists of records as tables, the rest as settings."""
    known = _KNOWN_KEYS.get(kind, {"analysis", "version"})
    out, scalars = [], []
    for key, value in d.items():
        if key in known:
            continue
        if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            out.append(f"<h4>{_e(key)}</h4>" + _table(value, what=key))
        elif isinstance(value, dict) and any(isinstance(x, list) for x in value.values()):
            for sub, v in value.items():
                if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                    out.append(f"<h4>{_e(key)}: {_e(sub)}</h4>" + _table(v, what=sub))
                else:
                    scalars.append((f"{key}.{sub}", v))
        else:
            scalars.append((key, value))
    kv = _kv(scalars)
    if kv:
        out.insert(0, kv)
    return ("<h4>Other results</h4>" + "".join(out)) if out else ""


def _render_extract(d: dict, folder: Path, page: _Page, r: _Result) -> str:
    out = [_kv([("store", d.get("store")), ("images", d.get("images")),
                ("extracted", d.get("extracted")), ("complete", d.get("complete")),
                ("last run", d.get("last_run"))], mono=("store",))]
    if d.get("complete") is False:
        out.append(page.note(f"{r.label}: the extraction is incomplete (interrupted); rerun the "
                             "same command to resume", r.anchor, r.label))
    models = _dict(d.get("models"))
    if models:
        out.append(_table([{"model": m, "layers": len(_strs(v)), "names": _strs(v)}
                           for m, v in models.items()], mono=("model",), what="models"))
    return "".join(out) + _notes_list(d) + _skipped(d)


def _render_rosetta(d: dict, folder: Path, page: _Page, r: _Result) -> str:
    s = _dict(d.get("settings"))
    models = _strs(d.get("models"))
    units = _dict(d.get("units"))
    dead = _dict(d.get("dead_units"))
    mem = s.get("max_memory")
    out = [_kv([
        ("models", _lines(models) if models else None), ("images", d.get("images")),
        ("source", s.get("source")),
        ("resolution", _size(d.get("resolution"))),
        ("best buddies", s.get("mode") and (
            f"{s['mode']} (k={s.get('k')})" if s.get("mode") == "relaxed" else f"{s['mode']}")),
        ("anchor", s.get("anchor")), ("pairwise sets", s.get("pairwise")),
        ("min correlation", s.get("min_correlation")), ("resize", s.get("resize")),
        ("passes", s.get("passes")),
        ("memory budget", f"{mem / 2**30:.3g} GiB" if _is_num(mem) else None),
    ], mono=("models", "anchor"))]
    layers = _dict(s.get("layers"))
    per_model = [{"model": m, "layers": _layers_text(layers.get(m)), "units": units.get(m),
                  "dead units": len(_list(dead.get(m))) if m in dead else None}
                 for m in (models or list(units))]
    if per_model:
        out.append(_table(per_model, mono=("model",), what="models"))

    pairs = []
    for p in _records(d.get("pairs")):
        rs = sorted((float(b["correlation"]) for b in _records(p.get("buddies"))
                     if _is_num(b.get("correlation"))), reverse=True)
        m = _strs(p.get("models")) + ["?", "?"]
        pairs.append({"model A": m[0], "model B": m[1], "best buddies": len(rs),
                      "top r": rs[0] if rs else None,
                      "median r": rs[len(rs) // 2] if rs else None})
    if pairs:
        out.append("<h4>Best buddies per model pair</h4>"
                   + _table(pairs, mono=("model A", "model B"), what="pairs"))

    sets = _records(d.get("sets"))
    concepts = _records(d.get("concepts"))
    concept_of = {int(i): c.get("id") for c in concepts for i in _list(c.get("sets"))
                  if _is_num(i) and math.isfinite(i)}
    # keyed by the JSON text of the id: whatever the id is, it is hashable then
    scores = {json.dumps(x.get("concept")): x for x in _records(d.get("concept_scores"))}
    if not sets:
        out.append(page.note(f"{r.label}: no Rosetta sets were found (no anchor unit has a best "
                             "buddy in every other model)", r.anchor, r.label))
    else:
        rows = []
        for i, st in enumerate(sets):
            row = {"#": i, "concept": concept_of.get(i), "mean r": st.get("mean_correlation")}
            units_ = _list(st.get("units"))
            for j, m in enumerate(models or [f"model {j}" for j in range(len(units_))]):
                row[m] = _unit(units_[j]) if j < len(units_) else None
            rows.append(row)
        cols = list(rows[0])
        out.append(f"<h4>Rosetta sets ({len(sets)})</h4><p class='muted'>One unit per model "
                   "(<code>layer:channel</code>), mutual best buddies with the anchor's unit; "
                   "mean r is the mean correlation of the set's pairs.</p>"
                   + _table(rows, cols, mono=cols[3:], what="sets"))

    if sets and not concepts:
        out.append(page.note(f"{r.label}: the sets were not clustered into concepts "
                             "(--concepts 0?), so there are no concept figures",
                             r.anchor, r.label))
    if concepts:
        cards = []
        more = ""
        if len(concepts) > _MAX_CONCEPT_FIGURES:
            more = (f"<p class='muted'>Showing the first {_MAX_CONCEPT_FIGURES} of "
                    f"{len(concepts)} concepts; all are listed in {_e(r.label)}.</p>")
        for c in concepts[:_MAX_CONCEPT_FIGURES]:
            cid = c.get("id")
            n_sets = len(_list(c.get("sets")))
            head = f"<h4>Concept {_e(cid)}</h4><p class='muted'>{n_sets} set(s)"
            sc = scores.get(json.dumps(cid))
            if sc is not None and sc.get("best_match") is not None:
                head += (f" · best match <b>{_e(sc['best_match'])}</b> "
                         f"(IoU {_e(_num(sc.get('iou')))})")
            head += "</p>"
            if "figure" in c:
                body = page.image(c["figure"], folder, r, f"concept {cid} heatmaps",
                                  what=f"concept {cid} figure")
            else:
                body = page.note(f"concept {cid}: no figure (the run had no --out folder)",
                                 r.anchor, r.label)
            top = _strs(c.get("top_images"))
            cap = "".join(f"<br>{_e(k)}: {_e(_short_list(v))}" for k, v in (
                ("sets", _strs(c.get("sets"))), ("top images", top)) if v)
            cap = f"<figcaption>{cap[4:]}</figcaption>" if cap else ""
            cards.append(f'<figure class="card">{head}{body}{cap}</figure>')
        out.append(f"<h4>Concepts ({len(concepts)})</h4><p class='muted'>Rows: the images that "
                   "excite the concept most; columns: the image, then each model's heatmap "
                   "(the concept's standardized unit maps, averaged over its sets).</p>"
                   f'{more}<div class="gallery concepts">{"".join(cards)}</div>')
    cs = d.get("concept_scores")
    if isinstance(cs, list) and cs:
        rows = _records(cs)
        cols = [c for c in ("concept", "best_match", "iou", "runner_up", "scores")
                if any(c in x for x in rows)]
        cols += [k for k in dict.fromkeys(k for x in rows for k in x) if k not in cols]
        out.append("<h4>Concept scores against ground truth</h4><p class='muted'>Best "
                   "ground-truth match per concept (dataset-level IoU of the thresholded "
                   "heatmap); <i>scores</i> lists the best labels first.</p>"
                   + _table(rows, cols, what="concepts"))
    elif cs is not None and not isinstance(cs, list):
        out.append("<h4>Concept scores</h4>" + _generic_value(cs))
    return "".join(out) + _skipped(d) + _extras(d, "rosetta", page, r)


def _matrix(d: dict) -> tuple[list[str], list[str], list[list[float]]] | str:
    la, lb = _strs(d.get("layers_a")), _strs(d.get("layers_b"))
    m = _list(d.get("matrix"))
    if not la or not lb:
        return "no layer names"
    if len(m) != len(la) or any(not isinstance(row, list) or len(row) != len(lb) for row in m):
        return f"the matrix is not {len(la)} x {len(lb)}"
    if any(not _is_num(v) for row in m for v in row):
        return "the matrix holds non-numbers"
    return la, lb, [[float(v) for v in row] for row in m]


def _heat_table(la: list[str], lb: list[str], m: list[list[float]]) -> str:
    head = "<th></th>" + "".join(f"<th class='mono'>{_e(b)}</th>" for b in lb)
    rows = []
    for a, row in zip(la, m):
        cells = "".join(
            f'<td style="background:{_colour(v)};color:{"#000" if v > 0.6 else "#fff"}">'
            f"{_e(_num(v))}</td>" for v in row)
        rows.append(f"<tr><th class='mono'>{_e(a)}</th>{cells}</tr>")
    return (f'<div class="scroll"><table class="heat"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _render_compare(d: dict, folder: Path, page: _Page, r: _Result) -> str:
    s = _dict(d.get("settings"))
    names = {"linear_cka": "linear CKA (exact, streaming)",
             "minibatch_unbiased_cka": "minibatch unbiased CKA", "mutual_knn": "mutual k-NN"}
    out = [_kv([
        ("metric", d.get("metric")),
        ("estimator", names.get(str(s.get("estimator")), s.get("estimator"))),
        ("model A (rows)", d.get("model_a")), ("model B (columns)", d.get("model_b")),
        ("layers A", _layers_text(d.get("layers_a"))),
        ("layers B", _layers_text(d.get("layers_b"))),
        ("images", d.get("images")), ("source", s.get("source")),
        ("features", s.get("features")), ("pooling", s.get("pooling")), ("k", s.get("k")),
        ("batch size", s.get("batch_size")), ("seed", s.get("seed") if s.get("features") == "flat"
                                              else None),
        ("minibatches", s.get("minibatches")), ("weights", _weights(s.get("pretrained"))),
    ], mono=("model A (rows)", "model B (columns)"))]
    mat = _matrix(d)
    fig = folder / _BESIDE["compare"]
    if fig.exists():
        out.append(f'<figure class="figure">{page.image(fig.name, folder, r, "similarity heatmap")}'
                   "</figure>")
    else:
        out.append(page.note(f"{r.label}: no {fig.name} beside it; the matrix is drawn as a "
                             "table below", r.anchor, r.label))
    if isinstance(mat, str):
        out.append(page.note(f"{r.label}: the similarity matrix cannot be shown: {mat}",
                             r.anchor, r.label, missing=True))
    else:
        la, lb, m = mat
        vals = [v for row in m for v in row]
        stats = [("min", min(vals)), ("mean", sum(vals) / len(vals)), ("max", max(vals))]
        if la == lb:
            stats.append(("mean of the diagonal", sum(m[i][i] for i in range(len(la))) / len(la)))
        out.append(_kv(stats))
        best = [{"layer A": a, "most similar layer B": lb[max(range(len(lb)), key=row.__getitem__)],
                 "value": max(row)} for a, row in zip(la, m)]
        out.append("<h4>Most similar layer of B for each layer of A</h4>"
                   + _table(best, mono=("layer A", "most similar layer B"), what="layers"))
        table = _heat_table(la, lb, m)
        out.append(table if not fig.exists() else
                   f"<details><summary>the matrix as numbers</summary>{table}</details>")
    return "".join(out) + _skipped(d) + _extras(d, "compare", page, r)


def _leaderboard(d: dict) -> list[dict]:
    board = _records(d.get("leaderboard"))
    if board:
        return board
    best: dict[tuple, dict] = {}  # rebuilt from the rows: best top1 (LogME: score)
    for row in _records(d.get("results")):
        key = "score" if row.get("method") == "logme" else "top1"
        if not _is_num(row.get(key)):
            continue
        k = (str(row.get("model")), str(row.get("method")))
        if k not in best or row[key] > best[k][key]:
            best[k] = row
    return list(best.values())


def _render_probe(d: dict, folder: Path, page: _Page, r: _Result) -> str:
    s = _dict(d.get("settings"))
    classes = _strs(s.get("classes"))
    out = [_kv([
        ("methods", _strs(s.get("methods"))),
        ("models", _lines(_strs(s.get("models"))) if _strs(s.get("models")) else None),
        ("train", s.get("train") and f"{s.get('train')} ({s.get('n_train')} images)"),
        ("test", s.get("test") and f"{s.get('test')} ({s.get('n_test')} images)"),
        ("classes", classes and f"{len(classes)}: {_short_list(classes)}"),
        ("k (k-NN)", _list(s.get("k"))), ("temperature", s.get("temperature")),
        ("pool", s.get("pool")), ("validation share", s.get("val_fraction")),
        ("last n blocks", s.get("n_last_blocks")), ("seed", s.get("seed")),
        ("weights", _weights(s.get("pretrained"))),
    ], mono=("models",))]
    layers = _dict(s.get("layers"))
    if layers:
        out.append(_table([{"model": m, "layers": _layers_text(v)} for m, v in layers.items()],
                          mono=("model",), what="models"))
    board = _leaderboard(d)
    if board:
        rows = [{"model": b.get("model"), "method": b.get("method"), "best layer": b.get("layer"),
                 "setting": b.get("setting"), "top-1": b.get("top1"), "top-5": b.get("top5"),
                 "LogME": b.get("score")} for b in board]
        out.append("<h4>Leaderboard</h4><p class='muted'>Best layer per model and method "
                   "(chosen on the test split, as layer-wise curves are: a report, not model "
                   "selection). LogME: higher is better.</p>"
                   + _table(rows, mono=("model",), what="entries"))
    else:
        out.append(page.note(f"{r.label}: no probe results", r.anchor, r.label, missing=True))
    fig = folder / _BESIDE["probe"]
    if fig.exists():
        out.append(f'<figure class="figure">{page.image(fig.name, folder, r, "probe curves")}'
                   "<figcaption>Top-1 per layer (each layer's best setting).</figcaption></figure>")
    elif board:
        out.append(page.note(f"{r.label}: no {fig.name} beside it", r.anchor, r.label))
    results = _records(d.get("results"))
    if results:
        cols = [c for c in ("model", "layer", "method", "setting", "top1", "top5", "score",
                            "n_train", "n_test") if any(c in x for x in results)]
        out.append(f"<details><summary>all {len(results)} result rows</summary>"
                   + _table(results, cols, mono=("model",), shown=_ROWS_MAX, what="rows")
                   + "</details>")
    return "".join(out) + _notes_list(d) + _skipped(d) + _extras(d, "probe", page, r)


def _sample(items: list, page: _Page, r: _Result, what: str) -> tuple[list, str]:
    if len(items) <= page.max_images:
        return items, ""
    return items[:page.max_images], (f"<p class='muted'>Showing {page.max_images} of "
                                     f"{len(items)} {what}; all are listed in {_e(r.label)}.</p>")


def _render_discover(d: dict, folder: Path, page: _Page, r: _Result) -> str:
    images = _records(d.get("images"))
    masks = [m for i in images for m in _records(i.get("masks"))]
    stops = Counter(str(i.get("stop_reason")) for i in images if i.get("stop_reason"))
    out = [_kv([
        ("model", d.get("model")), ("layer", d.get("layer")), ("feature", d.get("feature")),
        ("channels", _span(d.get("channels"))),
        ("patch grid", _size(d.get("grid"))), ("input size", _size(d.get("input_size"))),
        ("tau", d.get("tau")), ("eps", d.get("eps")), ("objects per image (max)",
                                                       d.get("objects")),
        ("images", len(images)), ("masks", len(masks)),
        ("masks per image", len(masks) / len(images) if images else None),
        ("stop reasons", dict(stops) if stops else None),
    ], mono=("model",))]
    # scores against ground truth (the demo adds them): per image when they line up
    gt = _dict(d.get("ground_truth"))
    per_image = _list(gt.get("best_iou_per_image"))
    if len(per_image) != len(images):
        per_image = []
    gt_rows = [(k.replace("_", " "), v) for k, v in gt.items()
               if not (per_image and k == "best_iou_per_image")]
    if gt_rows:
        out.append("<h4>Against ground truth</h4><p class='muted'>Best IoU of any discovered "
                   "mask with any ground-truth object, per image.</p>" + _kv(gt_rows))
    if d.get("complete") is False:
        out.append(page.note(f"{r.label}: partial run (interrupted); {len(images)} images were "
                             "written", r.anchor, r.label))
    if not images:
        out.append(page.note(f"{r.label}: no images with masks", r.anchor, r.label,
                             missing=True))
    shown, more = _sample(images, page, r, "images")
    cards = []
    for n, i in enumerate(shown):
        ms = _records(i.get("masks"))
        overlay = page.image(i.get("overlay"), folder, r, f"objects in {i.get('id')}", cls="px",
                             what=f"overlay of {i.get('id')}")
        thumbs = "".join(page.image(m.get("file"), folder, r, f"mask {k}", cls="px",
                                    what=f"mask {k} of {i.get('id')}")
                         for k, m in enumerate(ms))
        sc = [m.get("score") for m in ms if _is_num(m.get("score"))]
        cap = (f"<b class='mono'>{_e(i.get('id'))}</b><br>{len(ms)} object(s)"
               + (f", scores {_e(', '.join(_num(v) for v in sc))}" if sc else "")
               + (f"; stopped: {_e(i.get('stop_reason'))}" if i.get("stop_reason") else "")
               + (f"<br>best IoU with an object: {_e(_num(per_image[n]))}" if per_image else ""))
        cards.append(f'<figure class="card">{overlay}<div class="thumbs">{thumbs}</div>'
                     f"<figcaption>{cap}</figcaption></figure>")
    if cards:
        out.append("<h4>Sample of images</h4><p class='muted'>Each image with its objects "
                   "tinted and outlined, then one mask per object.</p>"
                   f'{more}<div class="gallery">{"".join(cards)}</div>')
    return "".join(out) + _notes_list(d) + _skipped(d) + _extras(d, "discover", page, r)


def _render_visualize(d: dict, folder: Path, page: _Page, r: _Result) -> str:
    images = _records(d.get("images"))
    kind = d.get("kind")
    out = [_kv([
        ("kind", kind), ("model", d.get("model")), ("layer", d.get("layer")),
        ("feature", d.get("feature")), ("patch grid", _size(d.get("grid"))),
        ("input size", _size(d.get("input_size"))), ("threshold", d.get("threshold")),
        ("heads", d.get("heads")), ("images", len(images)),
    ], mono=("model",))]
    if not images:
        out.append(page.note(f"{r.label}: no pictures", r.anchor, r.label, missing=True))
    shown, more = _sample(images, page, r, "images")
    explain = ("the image, then its patch features' first three principal components as RGB"
               if kind == "pca" else "the image, then the class token's attention per head")
    cards = []
    for i in shown:
        pic = page.image(i.get("file"), folder, r, f"{kind} of {i.get('id')}", cls="px",
                         what=f"picture of {i.get('id')}")
        fg = i.get("foreground_patches")
        cap = f"<b class='mono'>{_e(i.get('id'))}</b>" + (
            f"<br>{_e(fg)} foreground patches" if fg is not None else "")
        cards.append(f'<figure class="card">{pic}<figcaption>{cap}</figcaption></figure>')
    if cards:
        out.append(f"<h4>Pictures</h4><p class='muted'>Each row: {explain}.</p>{more}"
                   f'<div class="gallery wide">{"".join(cards)}</div>')
    return "".join(out) + _notes_list(d) + _skipped(d) + _extras(d, "visualize", page, r)


def _render_demo(d: dict, folder: Path, page: _Page, r: _Result) -> str:
    # the zoo itself is listed in the Models table, with what each model was used by
    out = _kv([("zoo", list(_dict(d.get("zoo")))), ("images", d.get("images")),
               ("seeds", d.get("seeds")), ("seconds", d.get("seconds")),
               ("torch threads", d.get("torch_threads"))])
    return out + _extras(d, "demo", page, r)


def _generic_value(v: Any, depth: int = 0) -> str:
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
        return _table(v)
    if isinstance(v, dict) and depth < 2:
        scalars = [(k, x) for k, x in v.items() if not isinstance(x, (dict, list))
                   or (isinstance(x, list) and not any(isinstance(y, (dict, list)) for y in x))]
        nested = [(k, x) for k, x in v.items() if (k, x) not in scalars]
        return _kv(scalars) + "".join(f"<h4>{_e(k)}</h4>{_generic_value(x, depth + 1)}"
                                      for k, x in nested)
    return f"<p class='mono'>{_e(_cell_text(v))}</p>"


def _render_other(d: dict, folder: Path, page: _Page, r: _Result) -> str:
    return _generic_value(d)


_RENDER = {"extract": _render_extract, "rosetta": _render_rosetta, "compare": _render_compare,
           "probe": _render_probe, "discover": _render_discover, "visualize": _render_visualize,
           "other": _render_other, "demo": _render_demo}


def _render(r: _Result, page: _Page) -> str:
    head = f'<h3 id="{r.anchor}" class="file">{_wrap(r.label)}</h3>'
    if r.error is not None:
        return head + page.note(f"{r.label} could not be read: {r.error}", r.anchor, r.label,
                                missing=True)
    d = r.data or {}
    declared = d.get("analysis")
    pre = ""
    if isinstance(declared, str) and r.kind in ANALYSES and declared != r.kind:
        pre = page.note(f"{r.label} says it holds a {declared!r} result; shown as {r.kind}",
                        r.anchor, r.label)
    try:
        body = _RENDER[r.kind](d, r.path.parent, page, r)
    except Exception as exc:  # a malformed file must not take the page down
        body = page.note(f"{r.label} is malformed and was shown only in part: "
                         f"{type(exc).__name__}: {exc}", r.anchor, r.label, missing=True)
        try:
            body += _generic_value(d)
        except Exception:  # pragma: no cover - _generic_value only formats
            pass
    return head + pre + body


# ----------------------------------------------------------------------------------------------
# the page


_CSS = """
:root{--fg:#1c2330;--muted:#5d6678;--line:#dfe3ea;--alt:#f5f7fa;--accent:#2457c5}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,
sans-serif;color:var(--fg);background:#fff}
main{max-width:1200px;margin:0 auto;padding:28px 32px 80px}
header{border-bottom:3px solid var(--accent);padding-bottom:10px;margin-bottom:18px}
h1{font-size:1.8rem;margin:0}
h2{font-size:1.35rem;margin:2.4em 0 .6em;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:1.1rem;margin:1.8em 0 .6em}
h4{font-size:.98rem;margin:1.4em 0 .4em}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.path{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:var(--muted);
font-weight:400;margin-left:.5em}
.muted{color:var(--muted);font-size:13px;margin:.2em 0 .6em}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;
overflow-wrap:break-word}
h3.file{font:600 14px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:#39414f;
background:var(--alt);border-left:4px solid var(--accent);padding:5px 10px;margin:1.4em 0 .6em}
nav.toc{background:var(--alt);border:1px solid var(--line);border-radius:8px;padding:10px 22px;
margin:12px 0}
nav.toc ol{margin:.2em 0;padding-left:1.3em}nav.toc>ol>li{margin:.15em 0}
nav.toc ol ol{font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:.4em 0 1em}
th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
thead th{background:var(--alt);font-weight:600;border-bottom:2px solid var(--line)}
tbody tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{width:200px;font-weight:600;color:#39414f;background:none}
table.kv td{overflow-wrap:break-word}
.scroll{overflow-x:auto;max-width:100%}
table.heat td{text-align:center;font-size:11px;padding:3px 6px;border:1px solid #fff;
font-variant-numeric:tabular-nums}
table.heat th{font-weight:400;font-size:11px;background:none}
.note{border-left:4px solid #d9a400;background:#fff7dc;color:#4f3b00;padding:6px 12px;
margin:.5em 0;border-radius:4px;font-size:14px;overflow-wrap:anywhere}
.note.missing{border-left-color:#c62828;background:#fdeceb;color:#6d1414}
ul.notes{padding-left:1.2em}ul.notes li{margin:.25em 0}
.ok{color:#1c7c3a}.bad{color:#b3261e}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:14px;
align-items:start}
.gallery.wide{grid-template-columns:repeat(auto-fill,minmax(340px,1fr))}
.gallery.concepts{grid-template-columns:repeat(auto-fill,minmax(440px,1fr))}
.card{margin:0;border:1px solid var(--line);border-radius:8px;padding:10px;background:#fff}
.card h4{margin:0}
.card .note{font-size:12px;padding:4px 8px;margin:6px 0 0}
.card img{display:block;width:100%;height:auto;margin:6px auto 0}
.card img.px{image-rendering:pixelated;max-width:360px}
.card .thumbs{display:flex;flex-wrap:wrap;gap:4px;margin-top:6px}
.card .thumbs img{width:52px;height:52px;margin:0;border:1px solid var(--line);
image-rendering:pixelated}
figcaption{font-size:12px;color:var(--muted);margin-top:6px;overflow-wrap:anywhere}
figure.figure{margin:.6em 0}figure.figure img{max-width:100%;height:auto}
details{margin:.4em 0 1em}details summary{cursor:pointer;color:var(--accent);font-size:13px}
footer{margin-top:4em;color:var(--muted);font-size:12px;border-top:1px solid var(--line);
padding-top:8px}
"""


def _roots(dirs) -> list[Path]:
    items = [dirs] if isinstance(dirs, (str, os.PathLike)) else list(dirs)
    if not items:
        raise InputError("dirs: name at least one folder of results")
    roots = []
    for x in items:
        p = Path(x)
        if not p.exists():
            raise InputError(f"no such folder: {str(p)!r}")
        roots.append(p)
    return roots


def render_report(dirs: str | Path | Sequence[str | Path], *, expected: Sequence[str] = EXPECTED,
                  title: str = "zoolens report", max_images: int = 12) -> ReportPage:
    """Render the report page of the results under `dirs` without writing it.

    Args:
        dirs: a folder (searched recursively), a result JSON file, or a list of them.
        expected: analyses whose absence gets a visible note (default: those of the demo).
        title: the page title.
        max_images: images shown per discovery / visualization result (all are in the JSON).

    Returns:
        A `ReportPage` with the HTML, the files found and the notes shown.
    """
    roots = _roots(dirs)
    bad = [x for x in expected if x not in ANALYSES]
    if bad:
        raise InputError(f"expected: unknown analyses {bad}; known: {', '.join(ANALYSES)}")
    page = _Page(max(1, int(max_images)))
    found = _find(roots)
    for r in found:
        r.anchor = page.anchor(f"{r.kind}-{r.label}")
    by_kind: dict[str, list[_Result]] = {}
    for r in found:
        by_kind.setdefault(r.kind, []).append(r)

    # analyses sections first: they add the notes the top of the page lists
    sections: list[tuple[str, str, str, list[_Result]]] = []  # (anchor, title, html, results)
    for kind in ANALYSES + ("other",):
        results = by_kind.get(kind, [])
        if not results and kind not in expected:
            continue
        anchor = page.anchor(_TITLES[kind])
        if not results:
            body = page.note(f"No {kind} results: no {kind}.json was found under "
                             f"{', '.join(str(p) for p in roots)}. Add them with",
                             anchor, kind, missing=True, code=_HINTS[kind])
        else:
            body = "".join(_render(r, page) for r in results)
        sections.append((anchor, _TITLES[kind], body, results))

    # the demo's run record opens the run settings
    demo_html = "".join(_render(r, page) for r in by_kind.get("demo", []))
    readable = [r for r in found if r.error is None]
    facts = {r.anchor: _safe_facts(r) for r in readable}
    runs = [r for r in readable if r.kind != "demo"]

    # a model's name and its spec may both appear (results name models by name, discover.json
    # by spec): the specs recorded beside the names map one to the other
    spec_of: dict[str, str] = {}
    for r in readable:
        d = r.data or {}
        for specs in (_dict(_dict(d.get("settings")).get("specs")), _dict(d.get("zoo"))):
            spec_of.update({str(k): str(v) for k, v in specs.items() if str(k) != str(v)})
    name_of = {v: k for k, v in spec_of.items()}

    # run settings: one row per result, then the models and where each was used
    setting_rows = []
    for r in runs:
        f = facts[r.anchor]
        setting_rows.append({"analysis": _Raw(f"<a href='#{r.anchor}'>{_e(r.kind)}</a><br>"
                                              f"<span class='path'>{_wrap(r.label)}</span>"),
                             "models": _lines(name_of.get(m, m) for m in f["models"]),
                             "images": f["images"], "source": f["source"],
                             "resolution": f["resolution"], "layers": f["layers"],
                             "weights": f["weights"]})
    used: dict[str, list[str]] = {str(m): [] for r in readable if r.kind == "demo"
                                  for m in _dict((r.data or {}).get("zoo"))}
    for r in runs:
        for m in facts[r.anchor]["models"]:
            kinds = used.setdefault(name_of.get(m, m), [])
            if r.kind not in kinds:
                kinds.append(r.kind)
    settings_html = demo_html
    if used:
        rows = [{"model": m, "spec": spec_of.get(m), "used by": ", ".join(k)}
                for m, k in used.items()]
        cols = ["model", "spec", "used by"] if spec_of else ["model", "used by"]
        settings_html += "<h3>Models</h3>" + _table(rows, cols, mono=("model", "spec"),
                                                    what="models")
    if setting_rows:
        cols = [c for c in setting_rows[0] if any(row[c] for row in setting_rows)]
        settings_html += "<h3>Runs</h3>" + _table(setting_rows, cols, mono=("models",),
                                                  what="runs")
    else:
        settings_html += "<p class='note missing'>No readable results were found.</p>"

    # summary: one row per file, linked to its section
    summary_rows = []
    for r in found:
        n_notes = sum(1 for n in page.notes if n["anchor"] == r.anchor)
        if r.error is not None:
            status, headline = "<span class='bad'>unreadable</span>", _e(r.error)
        else:
            status = ("<span class='ok'>ok</span>" if not n_notes else
                      f"<span class='bad'>{n_notes} note{'s' * (n_notes > 1)}</span>")
            headline = _e(facts[r.anchor]["headline"])
        summary_rows.append(f"<tr><td><a href='#{r.anchor}'>{_e(_TITLES[r.kind])}</a></td>"
                            f"<td class='mono'>{_e(r.label)}</td><td>{status}</td>"
                            f"<td>{headline}</td></tr>")
    summary_html = ("<div class='scroll'><table><thead><tr><th>analysis</th><th>file</th>"
                    "<th>status</th><th>result</th></tr></thead><tbody>"
                    + "".join(summary_rows) + "</tbody></table></div>") if summary_rows else ""
    missing = [k for k in expected if k not in by_kind]
    if missing:
        summary_html += (f"<p class='note missing'>Missing: {_e(', '.join(missing))} (no result "
                         "file found).</p>")

    notes_html = ""
    if page.notes:
        items = []
        for n in page.notes:
            text, where = n["text"], n["where"]
            link = f"<a href='#{_e(n['anchor'])}'>{_e(where)}</a>"
            # most notes start with the file they are about: that part becomes the link
            line = (link + _e(text[len(where):]) if text.startswith(where)
                    else f"{link}: {_e(text)}")
            if n["code"]:
                line += f" <code>{_e(n['code'])}</code>"
            items.append(f"<li>{line}</li>")
        notes_html = "<ul class='notes'>" + "".join(items) + "</ul>"

    top = [("run-settings", "Run settings", settings_html), ("summary", "Summary", summary_html)]
    if notes_html:
        top.insert(0, ("notes", f"Notes ({len(page.notes)})", notes_html))
    toc = ["<nav class='toc'><b>Contents</b><ol>"]
    for anchor, name, _ in top:
        toc.append(f"<li><a href='#{anchor}'>{_e(name)}</a></li>")
    for anchor, name, _, results in sections:
        sub = "".join(f"<li><a href='#{r.anchor}'>{_e(r.label)}</a></li>" for r in results)
        toc.append(f"<li><a href='#{anchor}'>{_e(name)}</a>"
                   + (f"<ol>{sub}</ol>" if len(results) > 1 else "")
                   + ("" if results else " <span class='bad'>(missing)</span>") + "</li>")
    toc.append("</ol></nav>")

    try:
        from .. import __version__ as version
    except ImportError:  # pragma: no cover
        version = "?"
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    where = ", ".join(str(p) for p in roots)
    parts = [
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
        # the page may not load anything: images are data URIs, the style is inline
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<link rel='icon' href='data:,'>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<header><h1>{_e(title)}</h1><p class='muted'>Results under <span class='mono'>"
        f"{_e(where)}</span> · {len(found)} result file(s) · built {when} by zoolens "
        f"{_e(version)}</p></header>",
        *toc,
    ]
    for anchor, name, body in top:
        parts.append(f"<section><h2 id='{anchor}'>{_e(name)}</h2>{body}</section>")
    for anchor, name, body, _ in sections:
        parts.append(f"<section><h2 id='{anchor}'>{_e(name)}</h2>{body}</section>")
    parts.append("<footer>Built from the result JSON files and the figures they name. "
                 "Everything is embedded in this file.</footer></main></body></html>\n")
    return ReportPage(html="".join(parts),
                      found=[{"analysis": r.kind, "file": r.label, "ok": r.error is None}
                             for r in found],
                      notes=[{"where": n["where"],
                              "text": n["text"] + (f" {n['code']}" if n["code"] else "")}
                             for n in page.notes])


def build_report(dirs: str | Path | Sequence[str | Path], out_html: Path | None = None, *,
                 expected: Sequence[str] = EXPECTED, title: str = "zoolens report",
                 max_images: int = 12) -> Path:
    """Write one self-contained HTML report of the results under `dirs`.

    Args:
        dirs: a folder of results (searched recursively: a demo folder holds rosetta/,
            compare/, probe/, discover/ ...), a result JSON file, or a list of them.
        out_html: the page to write; default ``<first folder>/report.html``.
        expected, title, max_images: as in `render_report`.

    Returns:
        The path written.
    """
    page = render_report(dirs, expected=expected, title=title, max_images=max_images)
    return page.write(default_output(dirs) if out_html is None else out_html)


def default_output(dirs: str | Path | Sequence[str | Path]) -> Path:
    """Where the report goes by default: ``report.html`` in the first folder given (beside the
    file when a JSON file is given)."""
    first = _roots(dirs)[0]
    return (first.parent if first.is_file() else first) / "report.html"
