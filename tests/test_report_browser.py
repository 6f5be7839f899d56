"""The HTML report in a real browser: headless Chromium (Debian's `chromium` package) driven by
Playwright's Python package, with no browser download (`executable_path`). The page must load
with no console error, page error or request for anything but itself, every image must render,
the page must not scroll sideways, and a full-page screenshot is kept as a test artifact in
$ZOOLENS_ARTIFACTS (default tests/artifacts/).

Skipped, saying why, where chromium or playwright is missing. CI installs them with
`apt-get install -y chromium` and `pip install playwright` (no `playwright install`)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = os.environ.get("ZOOLENS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the playwright Python package is not installed (pip install playwright)")
if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set "
                "ZOOLENS_CHROMIUM)", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent))
from test_report import _write_discover, make_results  # noqa: E402  (shared result builders)

from zoolens.report.html import build_report  # noqa: E402


def _artifacts() -> Path:
    path = Path(os.environ.get("ZOOLENS_ARTIFACTS") or Path(__file__).parent / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A fresh Chromium profile per module; nothing outside the page is fetched."""
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM,
            headless=True, args=ARGS, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(30_000)
        yield context
        context.close()


def _open(context, html: Path):
    """Load the page; returns (page, console errors, page errors, requests for other URLs)."""
    page = context.new_page()
    errors, crashes, requests = [], [], []
    url = html.resolve().as_uri()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: crashes.append(str(e)))
    page.on("request", lambda r: requests.append(r.url)
            if r.url != url and not r.url.startswith("data:") else None)
    page.goto(url, wait_until="load")
    return page, errors, crashes, requests


def _images(page) -> list[dict]:
    return page.evaluate("""Array.from(document.images).map(i => ({
        complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, title: i.title}))""")


def _screenshot(page, name: str) -> Path:
    path = _artifacts() / name
    page.screenshot(path=str(path), full_page=True)
    with Image.open(path) as im:
        assert im.width == 1280 and im.height > 900
    return path


def test_full_report_in_chromium(browser, tmp_path, tiny_cnn_file):
    demo = make_results(tmp_path / "demo", tiny_cnn_file)
    html = build_report(demo)
    page, errors, crashes, requests = _open(browser, html)
    assert errors == [] and crashes == [] and requests == []
    imgs = _images(page)
    assert len(imgs) == html.read_text().count("<img")
    broken = [i["title"] for i in imgs if not i["complete"] or i["w"] == 0 or i["h"] == 0]
    assert broken == []
    # wide tables scroll inside their box; the page itself never scrolls sideways
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    for heading in ("Run settings", "Summary", "Rosetta neurons", "Layer similarity", "Probes",
                    "Out-of-distribution detection", "Object discovery", "Visualization"):
        assert page.get_by_role("heading", name=heading, exact=True).is_visible()
    # a link of the table of contents lands on its section
    page.click("nav.toc >> text=Probes")
    assert page.evaluate("location.hash") == "#probes"
    assert page.evaluate("document.getElementById('probes').getBoundingClientRect().top") < 50
    _screenshot(page, "report.png")
    page.close()


def test_partial_report_in_chromium(browser, tmp_path):
    # discover only, one overlay missing and one mask corrupt; a broken probe.json
    d = _write_discover(tmp_path / "discover", n_images=2)
    (tmp_path / "discover" / d["images"][0]["overlay"]).unlink()
    (tmp_path / "discover" / d["images"][1]["masks"][0]["file"]).write_bytes(b"\x89PNG junk")
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "probe.json").write_text('{"results": [')
    (tmp_path / "discover" / "discover.json").write_text(json.dumps(d))
    html = build_report(tmp_path)
    page, errors, crashes, requests = _open(browser, html)
    assert errors == [] and crashes == [] and requests == []
    imgs = _images(page)
    assert len(imgs) == 3  # image 0's mask; image 1's overlay and its second mask
    assert all(i["complete"] and i["w"] > 0 for i in imgs)
    missing = page.locator("p.note.missing")
    # rosetta, compare and ood absent (in place and in the summary's "Missing:" line),
    # probe.json unreadable, an overlay missing, a mask corrupt
    assert missing.count() == 7
    assert all(missing.nth(i).is_visible() for i in range(missing.count()))
    assert page.locator("p.note", has_text="No rosetta results").is_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    _screenshot(page, "report_partial.png")
    page.close()
