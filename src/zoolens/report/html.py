"""One self-contained HTML page from the result JSON of zoolens analyses.

`build_report(dirs)` walks the folders (recursively) for the JSON files the commands write:
``<kind>.json`` for each analysis in `sections.SECTIONS` (``rosetta.json``, ``compare.json`` ...),
and any other small JSON file whose top level carries an ``"analysis"`` key; a file's
``"analysis"`` key says what it holds, its name says so when the key does not. Each analysis has a
section module (`sections/`) that renders its result: run settings, summary tables, figures; keys
it does not know, and results of analyses with no section, are shown generically (lists of
records as tables, the rest as settings).

The page is built from the JSON alone plus the figure files those JSON files name (relative to
their folder), and the figures the commands write beside them by fixed names (``compare.png``,
``probe_curves.png``). Every image is embedded as a base64 data URI after being decoded once, so
a broken file becomes a note, never a broken image; the page has inline CSS, no script, and a
Content-Security-Policy that forbids any request. Expected analyses that are absent, unreadable
JSON files, missing figures and partial runs each get a visible note, in place and listed at the
top. Nothing here imports torch or the analyses.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import InputError
from .page import Page, Raw, Result, as_dict, esc, generic_value, kv, lines, table, wrap
from .sections import SECTIONS, Facts

__all__ = ["build_report", "render_report", "default_output", "ReportPage", "ANALYSES",
           "EXPECTED"]

ANALYSES = tuple(k for k, s in SECTIONS.items() if not s.record)
EXPECTED = tuple(k for k, s in SECTIONS.items() if s.expected)  # what the demo runs

_OTHER = "other"  # the kind of a result whose analysis has no section
_OTHER_TITLE = "Other results"
_MAX_JSON_BYTES = 256 * 2**20
_MAX_OTHER_JSON_BYTES = 2 * 2**20  # other *.json files are read only to look for "analysis"
_SKIP_JSON = {"manifest.json", "ids.json"}  # feature-store files, never results
# what a file says about itself (its kind is read from it): never shown as one of its results
_SELF_KEYS = frozenset({"analysis", "version"})


# ----------------------------------------------------------------------------------------------
# finding and reading results


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


def _read_result(path: Path, by_name: str | None) -> tuple[str, dict | None, str | None] | None:
    """(kind, data, error) of one JSON file, or None when it holds no result. The file's
    ``"analysis"`` key says what it holds; where that names no section, its name (`by_name`,
    a file the commands write: its errors are shown) does."""
    data, error = _read_json(path, _MAX_JSON_BYTES if by_name else _MAX_OTHER_JSON_BYTES)
    if error is None and not isinstance(data, dict):
        data, error = None, f"expected a JSON object at the top level, got {type(data).__name__}"
    declared = data.get("analysis") if isinstance(data, dict) else None
    if isinstance(declared, str) and declared in SECTIONS:
        return declared, data, None
    if by_name is not None:
        return by_name, data, error
    if isinstance(declared, str):
        return _OTHER, data, None
    return None


def _find(roots: Sequence[Path]) -> list[Result]:
    names = {f"{k}.json": k for k in SECTIONS}
    found: list[Result] = []
    seen: set[Path] = set()
    for root in roots:
        paths = [root] if root.is_file() else _walk(root)
        base = root.parent if root.is_file() else root
        for path in paths:
            real = path.resolve()
            if real in seen or path.name in _SKIP_JSON:
                continue
            seen.add(real)
            read = _read_result(path, names.get(path.name))
            if read is None:
                continue
            kind, data, error = read
            rel = path.relative_to(base).as_posix()
            label = f"{root.name}/{rel}" if root.is_dir() and len(roots) > 1 else rel
            found.append(Result(kind, path, label, data, error))
    order = {k: i for i, k in enumerate([*SECTIONS, _OTHER])}
    found.sort(key=lambda r: (order[r.kind], r.label))
    return found


# ----------------------------------------------------------------------------------------------
# one result: its section's rendering, then what that does not know


def _title(kind: str) -> str:
    return SECTIONS[kind].title if kind in SECTIONS else _OTHER_TITLE


def _extras(d: dict, known: frozenset[str]) -> str:
    """Keys a section does not know: lists of records as tables, the rest as settings."""
    out, scalars = [], []
    for key, value in d.items():
        if key in known:
            continue
        if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            out.append(f"<h4>{esc(key)}</h4>" + table(value, what=key))
        elif isinstance(value, dict) and any(isinstance(x, list) for x in value.values()):
            for sub, v in value.items():
                if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                    out.append(f"<h4>{esc(key)}: {esc(sub)}</h4>" + table(v, what=sub))
                else:
                    scalars.append((f"{key}.{sub}", v))
        else:
            scalars.append((key, value))
    settings = kv(scalars)
    if settings:
        out.insert(0, settings)
    return ("<h4>Other results</h4>" + "".join(out)) if out else ""


def _render(r: Result, page: Page) -> str:
    head = f'<h3 id="{r.anchor}" class="file">{wrap(r.label)}</h3>'
    if r.error is not None:
        return head + page.note(f"{r.label} could not be read: {r.error}", r.anchor, r.label,
                                missing=True)
    d = r.data or {}
    declared = d.get("analysis")
    section = SECTIONS.get(r.kind)
    pre = ""
    if isinstance(declared, str) and section is not None and declared != r.kind:
        pre = page.note(f"{r.label} says it holds a {declared!r} result; shown as {r.kind}",
                        r.anchor, r.label)
    try:
        body = (generic_value(d) if section is None
                else section.render(d, page, r) + _extras(d, section.known_keys | _SELF_KEYS))
    except Exception as exc:  # a malformed file must not take the page down
        body = page.note(f"{r.label} is malformed and was shown only in part: "
                         f"{type(exc).__name__}: {exc}", r.anchor, r.label, missing=True)
        try:
            body += generic_value(d)
        except Exception:  # pragma: no cover - generic_value only formats
            pass
    return head + pre + body


def _facts(r: Result) -> Facts:
    d = r.data or {}
    section = SECTIONS.get(r.kind)
    try:
        if section is None:
            return Facts(headline=f"analysis {d.get('analysis', '?')}")
        return section.facts(d)
    except Exception as exc:  # a malformed file still gets its row
        return Facts(headline=f"settings unreadable ({type(exc).__name__})")


# ----------------------------------------------------------------------------------------------
# the parts of the page


def _sections(by_kind: dict[str, list[Result]], expected: Sequence[str], roots: list[Path],
              page: Page) -> list[tuple[str, str, str, list[Result]]]:
    """(anchor, title, html, results) of each analysis found or expected, in page order."""
    out = []
    for kind in [*ANALYSES, _OTHER]:
        results = by_kind.get(kind, [])
        if not results and kind not in expected:
            continue
        anchor = page.anchor(_title(kind))
        if not results:
            body = page.note(f"No {kind} results: no {kind}.json was found under "
                             f"{', '.join(str(p) for p in roots)}. Add them with",
                             anchor, kind, missing=True, code=SECTIONS[kind].hint)
        else:
            body = "".join(_render(r, page) for r in results)
        out.append((anchor, _title(kind), body, results))
    return out


def _is_record(kind: str) -> bool:
    return kind in SECTIONS and SECTIONS[kind].record


def _settings(found: list[Result], facts: dict[str, Facts], page: Page) -> str:
    """The run records, then the models and where each was used, then one row per run."""
    out = "".join(_render(r, page) for r in found if _is_record(r.kind))
    readable = [r for r in found if r.error is None]
    runs = [r for r in readable if not _is_record(r.kind)]

    # a model's name and its spec may both appear (results name models by name, discover.json
    # by spec): the specs recorded beside the names map one to the other
    spec_of: dict[str, str] = {}
    for r in readable:
        d = r.data or {}
        for specs in (as_dict(as_dict(d.get("settings")).get("specs")), as_dict(d.get("zoo"))):
            spec_of.update({str(k): str(v) for k, v in specs.items() if str(k) != str(v)})
    name_of = {v: k for k, v in spec_of.items()}

    # a run record's models are listed even where no analysis used them
    used: dict[str, list[str]] = {m: [] for r in readable if _is_record(r.kind)
                                  for m in facts[r.anchor].models}
    for r in runs:
        for m in facts[r.anchor].models:
            kinds = used.setdefault(name_of.get(m, m), [])
            if r.kind not in kinds:
                kinds.append(r.kind)
    if used:
        rows = [{"model": m, "spec": spec_of.get(m), "used by": ", ".join(k)}
                for m, k in used.items()]
        cols = ["model", "spec", "used by"] if spec_of else ["model", "used by"]
        out += "<h3>Models</h3>" + table(rows, cols, mono=("model", "spec"), what="models")

    setting_rows = []
    for r in runs:
        f = facts[r.anchor]
        setting_rows.append({"analysis": Raw(f"<a href='#{r.anchor}'>{esc(r.kind)}</a><br>"
                                             f"<span class='path'>{wrap(r.label)}</span>"),
                             "models": lines(name_of.get(m, m) for m in f.models),
                             "images": f.images, "source": f.source,
                             "resolution": f.resolution, "layers": f.layers,
                             "weights": f.weights})
    if not setting_rows:
        return out + "<p class='note missing'>No readable results were found.</p>"
    cols = [c for c in setting_rows[0] if any(row[c] for row in setting_rows)]
    return out + "<h3>Runs</h3>" + table(setting_rows, cols, mono=("models",), what="runs")


def _summary(found: list[Result], facts: dict[str, Facts], page: Page,
             expected: Sequence[str]) -> str:
    """One row per file, linked to its section, then the expected analyses not found."""
    rows = []
    for r in found:
        n_notes = sum(1 for n in page.notes if n["anchor"] == r.anchor)
        if r.error is not None:
            status, headline = "<span class='bad'>unreadable</span>", esc(r.error)
        else:
            status = ("<span class='ok'>ok</span>" if not n_notes else
                      f"<span class='bad'>{n_notes} note{'s' * (n_notes > 1)}</span>")
            headline = esc(facts[r.anchor].headline)
        rows.append(f"<tr><td><a href='#{r.anchor}'>{esc(_title(r.kind))}</a></td>"
                    f"<td class='mono'>{esc(r.label)}</td><td>{status}</td>"
                    f"<td>{headline}</td></tr>")
    out = ("<div class='scroll'><table><thead><tr><th>analysis</th><th>file</th>"
           "<th>status</th><th>result</th></tr></thead><tbody>"
           + "".join(rows) + "</tbody></table></div>") if rows else ""
    kinds = {r.kind for r in found}
    missing = [k for k in expected if k not in kinds]
    if missing:
        out += (f"<p class='note missing'>Missing: {esc(', '.join(missing))} (no result "
                "file found).</p>")
    return out


def _notes(notes: list[dict]) -> str:
    """Every note of the page, each linking to its place."""
    items = []
    for n in notes:
        text, where = n["text"], n["where"]
        link = f"<a href='#{esc(n['anchor'])}'>{esc(where)}</a>"
        # most notes start with the file they are about: that part becomes the link
        line = (link + esc(text[len(where):]) if text.startswith(where)
                else f"{link}: {esc(text)}")
        if n["code"]:
            line += f" <code>{esc(n['code'])}</code>"
        items.append(f"<li>{line}</li>")
    return "<ul class='notes'>" + "".join(items) + "</ul>"


def _toc(top: list[tuple[str, str, str]],
         sections: list[tuple[str, str, str, list[Result]]]) -> str:
    toc = ["<nav class='toc'><b>Contents</b><ol>"]
    for anchor, name, _ in top:
        toc.append(f"<li><a href='#{anchor}'>{esc(name)}</a></li>")
    for anchor, name, _, results in sections:
        sub = "".join(f"<li><a href='#{r.anchor}'>{esc(r.label)}</a></li>" for r in results)
        toc.append(f"<li><a href='#{anchor}'>{esc(name)}</a>"
                   + (f"<ol>{sub}</ol>" if len(results) > 1 else "")
                   + ("" if results else " <span class='bad'>(missing)</span>") + "</li>")
    toc.append("</ol></nav>")
    return "".join(toc)


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


def _document(title: str, roots: list[Path], n_found: int, top: list[tuple[str, str, str]],
              sections: list[tuple[str, str, str, list[Result]]]) -> str:
    """The whole page: head, header, contents, then each part."""
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
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<header><h1>{esc(title)}</h1><p class='muted'>Results under <span class='mono'>"
        f"{esc(where)}</span> · {n_found} result file(s) · built {when} by zoolens "
        f"{esc(version)}</p></header>",
        _toc(top, sections),
    ]
    for anchor, name, body, *_ in [*top, *sections]:
        parts.append(f"<section><h2 id='{anchor}'>{esc(name)}</h2>{body}</section>")
    parts.append("<footer>Built from the result JSON files and the figures they name. "
                 "Everything is embedded in this file.</footer></main></body></html>\n")
    return "".join(parts)


# ----------------------------------------------------------------------------------------------
# the page


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


def _roots(dirs: str | Path | Sequence[str | Path]) -> list[Path]:
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
    page = Page(max(1, int(max_images)))
    found = _find(roots)
    for r in found:
        r.anchor = page.anchor(f"{r.kind}-{r.label}")
    by_kind: dict[str, list[Result]] = {}
    for r in found:
        by_kind.setdefault(r.kind, []).append(r)

    # the analyses' sections first: they add the notes the top of the page lists
    sections = _sections(by_kind, expected, roots, page)
    facts = {r.anchor: _facts(r) for r in found if r.error is None}
    top = [("run-settings", "Run settings", _settings(found, facts, page)),
           ("summary", "Summary", _summary(found, facts, page, expected))]
    if page.notes:
        top.insert(0, ("notes", f"Notes ({len(page.notes)})", _notes(page.notes)))
    return ReportPage(html=_document(title, roots, len(found), top, sections),
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
