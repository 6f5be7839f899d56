"""The HTML pieces every report section is built from: escaping, numbers, tables, key-value
blocks, embedded images and the notes a page collects.

Every piece of text goes through `esc` (or `wrap`); markup already escaped travels as `Raw`.
Nothing here knows any analysis: `sections/` holds one module per analysis, `html.py` assembles
the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["ROWS_MAX", "Result", "Page", "Raw", "esc", "wrap", "lines", "num", "is_num",
           "short_list", "cell_text", "table", "kv", "generic_value", "skipped", "notes_list",
           "as_dict", "as_list", "records", "strs", "size_text", "span_text", "weights_text",
           "layers_text", "models_layers_text"]

_ROWS_SHOWN = 25  # table rows shown before a "show all" fold
ROWS_MAX = 500  # rows rendered at most in any table
_MAX_IMAGE_BYTES = 32 * 2**20
_MIMES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}


@dataclass
class Result:
    """One result JSON file found, as the page knows it."""

    kind: str  # a key of sections.SECTIONS, or "other"
    path: Path  # the JSON file
    label: str  # how the page names it: <root name>/<relative path>
    data: dict | None = None
    error: str | None = None
    anchor: str = ""

    @property
    def folder(self) -> Path:
        """Where the figures the JSON names lie (paths in it are relative to its folder)."""
        return self.path.parent


# ----------------------------------------------------------------------------------------------
# text and numbers


def esc(x: Any) -> str:
    """`x` as HTML text (quotes escaped too: safe inside attributes)."""
    return html.escape(str(x), quote=True).replace("\x00", "\ufffd")


class Raw(str):
    """Markup already escaped (a table cell built from parts)."""


def wrap(text: Any) -> str:
    """Escaped text with break opportunities after '?', '&', '/' and ',': model specs and
    paths are long and have no spaces."""
    return re.sub(r"(\?|&amp;|/|,)", r"\1<wbr>", esc(text))


def lines(items: Iterable[Any]) -> Raw:
    """One item per line (model lists)."""
    return Raw("<br>".join(wrap(x) for x in items))


def num(v: Any) -> str:
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


def is_num(v: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def short_list(items: list, limit: int = 12) -> str:
    """The first `limit` items, then how many more there are."""
    shown = ", ".join(num(x) if is_num(x) else str(x) for x in items[:limit])
    return shown + (f", … (+{len(items) - limit} more)" if len(items) > limit else "")


def cell_text(v: Any) -> str:
    """Plain text of a table cell (not escaped yet)."""
    if v is None:
        return "–"
    if isinstance(v, (bool, int, float)):
        return num(v)
    if isinstance(v, str):
        return v
    if isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v):
        return short_list(v)
    if isinstance(v, dict) and len(v) > 6 and all(isinstance(x, float) for x in v.values()):
        # a score per label: the best few first
        top = sorted(v.items(), key=lambda kv: -float(kv[1]))
        text = ", ".join(f"{k} {num(x)}" for k, x in top[:5])
        return text + (f", … (+{len(top) - 5})" if len(top) > 5 else "")
    if isinstance(v, dict) and all(not isinstance(x, (dict, list)) for x in v.values()):
        return ", ".join(f"{k}: {f'{x:.4g}' if isinstance(x, float) else cell_text(x)}"
                         for k, x in v.items())
    text = json.dumps(v, default=str)
    return text if len(text) <= 200 else text[:199] + "…"


# ----------------------------------------------------------------------------------------------
# reading JSON values that may have any type


def as_dict(v: Any) -> dict:
    """`v` if it is a dict, else an empty one."""
    return v if isinstance(v, dict) else {}


def as_list(v: Any) -> list:
    """`v` if it is a list, else an empty one."""
    return v if isinstance(v, list) else []


def records(v: Any) -> list[dict]:
    """The dicts of a list."""
    return [x for x in as_list(v) if isinstance(x, dict)]


def strs(v: Any) -> list[str]:
    """The strings (and numbers, as strings) of a list."""
    return [str(x) for x in as_list(v) if isinstance(x, (str, int, float))]


def size_text(v: Any) -> str | None:
    """[H, W] -> 'HxW'."""
    v = as_list(v)
    if len(v) == 2 and all(is_num(x) for x in v):
        return f"{num(v[0])}x{num(v[1])}"
    return None


def span_text(v: Any) -> str | None:
    """[start, stop] -> 'start..stop' (a channel range)."""
    v = as_list(v)
    return f"{num(v[0])}..{num(v[1])}" if len(v) == 2 and all(map(is_num, v)) else None


def weights_text(pretrained: Any) -> str | None:
    """The `pretrained` setting in words."""
    if pretrained is None:
        return None
    return "pretrained" if pretrained else "random (--no-pretrained)"


def layers_text(layers: Any) -> str | None:
    """A layer list as 'n: first, second, …, last' (lists are long)."""
    names = strs(layers)
    if not names:
        return None
    if len(names) <= 4:
        return f"{len(names)}: " + ", ".join(names)
    return f"{len(names)}: {names[0]}, {names[1]}, …, {names[-1]}"


def models_layers_text(per_model: Any) -> str | None:
    """{model: layer list} as 'model: n: first, …, last; other: …' (None when none has any)."""
    parts = [f"{m}: {text}" for m, v in as_dict(per_model).items() if (text := layers_text(v))]
    return "; ".join(parts) or None


# ----------------------------------------------------------------------------------------------
# tables


def _cell(v: Any, cls: str = "") -> str:
    classes = " ".join(c for c in (cls, "num" if is_num(v) else "") if c)
    text = v if isinstance(v, Raw) else wrap(cell_text(v)) if cls == "mono" else esc(
        cell_text(v))
    return (f'<td class="{classes}">' if classes else "<td>") + text + "</td>"


def table(rows: list[dict], columns: Sequence[str] | None = None,
          headers: Sequence[str] | None = None, *, mono: Sequence[str] = (),
          shown: int = _ROWS_SHOWN, what: str = "rows") -> str:
    """A table of records; rows past `shown` go in a fold, rows past ROWS_MAX are left out
    (said so)."""
    rows = [r for r in rows if isinstance(r, dict)]
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    headers = list(headers) if headers is not None else list(columns)
    head = "".join(f"<th>{wrap(h)}</th>" for h in headers)

    def body(part: list[dict]) -> str:
        return "".join("<tr>" + "".join(_cell(r.get(c), "mono" if c in mono else "")
                                         for c in columns) + "</tr>" for r in part)

    out = f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>'
    out += body(rows[:shown]) + "</tbody></table></div>"
    if len(rows) > shown:
        rest = rows[shown:ROWS_MAX]
        out += (f"<details><summary>show {len(rest)} more {esc(what)}</summary>"
                f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body(rest)}'
                "</tbody></table></div></details>")
    if len(rows) > ROWS_MAX:
        out += (f'<p class="muted">{len(rows) - ROWS_MAX} more {esc(what)} are in the JSON file '
                "and not shown.</p>")
    return out


def kv(pairs: Iterable[tuple[str, Any]], *, mono: Sequence[str] = ()) -> str:
    """A two-column table of settings; empty values are left out."""
    rows = []
    for key, value in pairs:
        if value is None or value == "" or value == [] or value == {}:
            continue
        if isinstance(value, Raw):
            text = value
        elif isinstance(value, float):
            text = esc(f"{value:.4g}")  # settings: no padding zeros
        elif key in mono:
            text = wrap(cell_text(value))
        else:
            text = esc(cell_text(value))
        cls = ' class="mono"' if key in mono else ""
        rows.append(f"<tr><th>{esc(key)}</th><td{cls}>{text}</td></tr>")
    return f'<table class="kv"><tbody>{"".join(rows)}</tbody></table>' if rows else ""


def generic_value(v: Any, depth: int = 0) -> str:
    """Any JSON value: lists of records as tables, dicts as settings (two levels deep)."""
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
        return table(v)
    if isinstance(v, dict) and depth < 2:
        scalars = [(k, x) for k, x in v.items() if not isinstance(x, (dict, list))
                   or (isinstance(x, list) and not any(isinstance(y, (dict, list)) for y in x))]
        nested = [(k, x) for k, x in v.items() if (k, x) not in scalars]
        return kv(scalars) + "".join(f"<h4>{esc(k)}</h4>{generic_value(x, depth + 1)}"
                                     for k, x in nested)
    return f"<p class='mono'>{esc(cell_text(v))}</p>"


def skipped(d: dict) -> str:
    """The images a run skipped (a list, or a list per split), as a table."""
    sk = d.get("skipped")
    rows = records(sk) if isinstance(sk, list) else [
        {"split": split, **x} for split, v in as_dict(sk).items() for x in records(v)]
    if not rows:
        return ""
    return f"<h4>Skipped ({len(rows)})</h4>" + table(rows, what="skipped images")


def notes_list(d: dict) -> str:
    """The notes a run recorded, as a list."""
    notes = strs(d.get("notes"))
    if not notes:
        return ""
    return "<h4>Notes</h4><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"


# ----------------------------------------------------------------------------------------------
# the page being built: anchors, notes, images


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


class Page:
    """What the sections of one page share: unique anchors, the notes shown, the image limit."""

    def __init__(self, max_images: int):
        self.max_images = max_images
        self.notes: list[dict] = []
        self._anchors: set[str] = set()

    def anchor(self, text: str) -> str:
        """A new element id made from `text`."""
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
        extra = f" <code>{esc(code)}</code>" if code else ""
        return f'<p class="note{" missing" if missing else ""}">{esc(text)}{extra}</p>'

    def image(self, rel: Any, r: Result, alt: str, *, cls: str = "",
              what: str = "figure") -> str:
        """An <img> with the file `rel` (relative to the folder of `r`) embedded, or a note
        saying why it is not there."""
        if not isinstance(rel, str) or not rel:
            return self.note(f"{what}: no file named in {r.label}", r.anchor, r.label)
        path = r.folder / rel
        try:
            inside = path.resolve().is_relative_to(r.folder.resolve())
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
        return f'<img{c} src="{uri}" width="{w}" height="{h}" alt="{esc(alt)}" title="{esc(rel)}">'

    def sample(self, items: list, r: Result, what: str) -> tuple[list, str]:
        """The first `max_images` items, and a line saying so when some are left out."""
        if len(items) <= self.max_images:
            return items, ""
        return items[:self.max_images], (f"<p class='muted'>Showing {self.max_images} of "
                                         f"{len(items)} {what}; all are listed in "
                                         f"{esc(r.label)}.</p>")


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
