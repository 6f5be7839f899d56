"""The HTML report: built from real Rosetta and compare outputs of tiny runs plus hand-made probe,
discover and visualize folders (the formats their commands write), and from partial, malformed
and hostile folders. The page is parsed back: sections, tables, every embedded image."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import warnings
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import zoolens.cli.report  # noqa: F401  (registers `zoolens report` on the shared app)
from zoolens.cli import app
from zoolens.errors import InputError
from zoolens.report.html import EXPECTED, build_report, render_report
from zoolens.report.sections import SECTIONS

VIT = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2"
SCENES = "synthetic:scenes?n=8&size=32&seed=0"
runner = CliRunner()


# ----------------------------------------------------------------------------------------------
# building result folders


def _png(path: Path, seed: int, size=(32, 32), mode="RGB") -> Path:
    """A distinct small PNG (random pixels, so no two files share bytes)."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def _write_probe(folder: Path) -> dict:
    models = ["file:zoo.py:tiny_cnn", VIT]
    layers = {models[0]: ["0", "2", "3"], models[1]: ["blocks.0", "blocks.1"]}
    results = []
    for m in models:
        for i, layer in enumerate(layers[m]):
            for k in (5, 10):
                results.append({"model": m, "layer": layer, "layer_index": i, "method": "knn",
                                "setting": f"mean k={k}", "pool": "mean", "k": k, "k_used": k,
                                "temperature": 0.07, "top1": round(0.2 + 0.1 * i + 0.01 * k, 4),
                                "top5": None, "n_train": 16, "n_test": 8, "num_classes": 4})
            results.append({"model": m, "layer": layer, "layer_index": i, "method": "logme",
                            "setting": "mean", "pool": "mean", "score": -0.9 + 0.05 * i,
                            "n_train": 16, "num_classes": 4})
    board = [{"model": m, "method": "knn", "layer": layers[m][-1],
              "layer_index": len(layers[m]) - 1, "setting": "mean k=10",
              "top1": round(0.3 + 0.1 * (len(layers[m]) - 1), 4), "top5": None, "score": None}
             for m in models]
    data = {"analysis": "probe", "version": 1, "results": results,
            "settings": {"methods": ["knn", "logme"], "k": [5, 10], "temperature": 0.07,
                         "pool": "mean", "val_fraction": 0.2, "seed": 0, "pretrained": False,
                         "models": models, "layers": layers, "train": SCENES,
                         "test": "synthetic:scenes?n=8&size=32&seed=1", "n_train": 16,
                         "n_test": 8, "classes": ["circle", "cross", "square", "triangle"]},
            "skipped": {"train": [], "test": [{"index": 3, "id": "bad.jpg",
                                               "reason": "truncated file"}]},
            "notes": ["zeroshot skipped for file:zoo.py:tiny_cnn: not an image-text model"],
            "leaderboard": board}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "probe.json").write_text(json.dumps(data, indent=1))
    _png(folder / "probe_curves.png", 100, (120, 60))
    return data


def _write_discover(folder: Path, n_images: int = 3, seed: int = 200) -> dict:
    images = []
    for i in range(n_images):
        stem = f"{i:06d}_scene_0_{i:06d}"
        masks = []
        for k in range(1 + i % 2):
            rel = f"masks/{stem}_{k}.png"
            _png(folder / rel, seed + 10 * i + k, mode="L")
            masks.append({"file": rel, "area": 100 + k, "bbox": [1, 2, 20, 21],
                          "score": 0.5 + 0.1 * k, "ncut": 0.4, "eigenvalue": 0.2, "patches": 5})
        _png(folder / f"overlays/{stem}.png", seed + 10 * i + 9)
        images.append({"id": f"scene_0_{i:06d}", "index": i, "size": [32, 32],
                       "stop_reason": "overlap", "overlay": f"overlays/{stem}.png",
                       "masks": masks})
    data = {"model": VIT, "layer": "blocks.1.attn.qkv", "feature": "keys", "channels": [32, 64],
            "features": "keys", "grid": [4, 4], "input_size": [32, 32], "tau": 0.2, "eps": 1e-5,
            "objects": 3, "notes": [], "images": images, "skipped": [], "complete": True}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "discover.json").write_text(json.dumps(data, indent=1))
    return data


def _write_visualize(folder: Path) -> dict:
    images = []
    for i in range(2):
        rel = f"pca/{i:06d}_scene_0_{i:06d}.png"
        _png(folder / rel, 300 + i, (64, 32))
        images.append({"id": f"scene_0_{i:06d}", "index": i, "size": [32, 32], "file": rel,
                       "foreground_patches": 7 + i})
    data = {"model": VIT, "kind": "pca", "layer": "blocks.1", "feature": "tokens",
            "grid": [4, 4], "input_size": [32, 32], "threshold": None, "heads": None,
            "notes": [], "arrays": "visualize.npz", "images": images, "skipped": []}
    (folder / "visualize.json").write_text(json.dumps(data, indent=1))
    return data


def make_results(root: Path, cnn_file: Path) -> Path:
    """A demo-like folder: real rosetta (with real concept scores) and compare runs of two tiny
    models, hand-made probe, discover and visualize results."""
    from zoolens.analyses.similarity import compare, plot_matrix
    from zoolens.demo.scoring import score_concepts
    from zoolens.analyses.rosetta import rosetta
    from zoolens.sources import open_source

    cnn = f"file:{cnn_file}:tiny_cnn"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead units of random tiny models
        res = rosetta([cnn, VIT], SCENES, pretrained=False, num_workers=0, progress=False,
                      concepts=2, profile_images=4, batch_size=8, out=root / "rosetta")
    d = res.to_dict()
    d["concept_scores"] = score_concepts(res, open_source(SCENES), root / "rosetta")
    (root / "rosetta" / "rosetta.json").write_text(json.dumps(d, indent=1))
    cmp = compare(cnn, VIT, SCENES, pretrained=False, num_workers=0, progress=False,
                  batch_size=8)
    (root / "compare").mkdir(parents=True)
    (root / "compare" / "compare.json").write_text(cmp.to_json(indent=1))
    plot_matrix(cmp, root / "compare" / "compare.png")
    _write_probe(root / "probe")
    _write_discover(root / "discover")
    _write_visualize(root / "visualize")
    _write_ood(root / "ood", cnn)
    return root


def _write_ood(root: Path, cnn: str) -> None:
    """A real (tiny) OOD run: scenes with shapes the training scenes never show."""
    from zoolens.analyses.ood import evaluate

    evaluate(cnn, SCENES, "synthetic:scenes?n=8&size=32&seed=1",
        {"stars": "synthetic:scenes?n=6&size=32&seed=2&shapes=star,ring"},
        methods="knn,feature_norm", k=3, out=root, pretrained=False, num_workers=0,
        progress=False, batch_size=8)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_cnn_file) -> Path:
    return make_results(tmp_path_factory.mktemp("demo"), tiny_cnn_file)


# ----------------------------------------------------------------------------------------------
# reading the page back


_VOID = {"br", "wbr", "img", "meta", "link", "hr", "input", "col", "area", "base", "source"}


class _Page(HTMLParser):
    """Ids, links, images, tables (cell texts), and tag balance of a page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.ids, self.hrefs, self.imgs, self.tables = [], [], [], []
        self.stack, self.errors = [], []
        self._row = self._cell = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if "href" in a:
            self.hrefs.append(a["href"])
        if tag == "img":
            self.imgs.append(a)
        if tag not in _VOID:
            self.stack.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def table(self, header: str) -> list[list[str]]:
        """The first table with a column named `header` (rows after the header row)."""
        for t in self.tables:
            if t and header in t[0]:
                return t[1:]
        raise AssertionError(f"no table with a column {header!r}")


def _payloads(page: _Page) -> list[bytes]:
    out = []
    for img in page.imgs:
        m = re.fullmatch(r"data:image/(png|jpeg|gif|webp);base64,([A-Za-z0-9+/=]+)", img["src"])
        assert m, img["src"][:60]
        out.append(base64.b64decode(m.group(2), validate=True))
    return out


def _check_structure(text: str) -> _Page:
    page = _Page(text)
    assert page.errors == [] and page.stack == []  # every element closed in order
    assert len(page.ids) == len(set(page.ids))
    for href in page.hrefs:  # nothing outside the page is referenced
        assert href.startswith("#") or href.startswith("data:"), href
        if href.startswith("#"):
            assert href[1:] in page.ids, href
    assert "<script" not in text.lower() and "url(" not in text
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    return page


# ----------------------------------------------------------------------------------------------
# a complete folder


def test_full_report_sections_tables_and_images(demo):
    out = build_report(demo)
    assert out == demo / "report.html"
    text = out.read_text(encoding="utf-8")
    page = _check_structure(text)
    for section in ("run-settings", "summary", "rosetta-neurons", "layer-similarity", "probes",
                    "out-of-distribution-detection", "object-discovery", "visualization"):
        assert section in page.ids
        assert f"#{section}" in page.hrefs  # in the table of contents
    assert "notes" not in page.ids and "Missing:" not in text  # nothing to point out
    assert render_report(demo).notes == []

    # every image on the page is one of the files the results name, byte for byte
    ros = json.loads((demo / "rosetta" / "rosetta.json").read_text())
    disc = json.loads((demo / "discover" / "discover.json").read_text())
    vis = json.loads((demo / "visualize" / "visualize.json").read_text())
    files = [demo / "rosetta" / c["figure"] for c in ros["concepts"]]
    files += [demo / "compare" / "compare.png", demo / "probe" / "probe_curves.png"]
    for i in disc["images"]:
        files += [demo / "discover" / i["overlay"]]
        files += [demo / "discover" / m["file"] for m in i["masks"]]
    files += [demo / "visualize" / i["file"] for i in vis["images"]]
    figures = json.loads((demo / "ood" / "ood.json").read_text())["figures"]
    files += [demo / "ood" / f for f in [*figures["auroc"].values(), figures["curves"],
                                         figures["examples"]]]
    payloads = _payloads(page)
    assert Counter(payloads) == Counter(f.read_bytes() for f in files)
    for data, img in zip(payloads, page.imgs):
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert [str(v) for v in im.size] == [img["width"], img["height"]]

    # Rosetta: sets in the JSON's order, units without the model prefix, concept of each set
    concept_of = {s: c["id"] for c in ros["concepts"] for s in c["sets"]}
    rows = page.table("mean r")
    assert len(rows) == len(ros["sets"])  # 10 sets < 25: no fold
    for i, (row, s) in enumerate(zip(rows, ros["sets"])):
        units = [u[len(m) + 1:] for m, u in zip(ros["models"], s["units"])]
        assert row == [str(i), str(concept_of.get(i, "–")), f"{s['mean_correlation']:.3f}",
                       *units]
    # concept scores: a table, and each concept card names its best match
    scores = ros["concept_scores"]
    assert len(scores) == len(ros["concepts"]) > 0
    score_rows = page.table("best_match")
    assert [r[:3] for r in score_rows] == [[str(s["concept"]), s["best_match"], f"{s['iou']:.3f}"]
                                           for s in scores]
    for s in scores:
        assert (f"best match <b>{s['best_match']}</b> (IoU {s['iou']:.3f})") in text

    # compare: summary numbers and each row's most similar layer, from the matrix
    cmp = json.loads((demo / "compare" / "compare.json").read_text())
    m = np.asarray(cmp["matrix"])
    stats = {r[0]: r[1] for t in page.tables for r in t if r and r[0] in ("min", "mean", "max")}
    assert stats == {"min": f"{m.min():.4g}", "mean": f"{m.mean():.4g}", "max": f"{m.max():.4g}"}
    best = page.table("most similar layer B")
    assert [r[1] for r in best] == [cmp["layers_b"][j] for j in m.argmax(axis=1)]

    # probe: the leaderboard in the JSON's order, notes and skipped test images shown
    probe = json.loads((demo / "probe" / "probe.json").read_text())
    board = page.table("best layer")
    assert [(r[0], r[1], r[2], r[4]) for r in board] == [
        (b["model"], b["method"], b["layer"], f"{b['top1']:.3f}") for b in probe["leaderboard"]]
    assert "not an image-text model" in text and "truncated file" in text

    # discovery: one card per image, one thumbnail per mask
    assert text.count("object(s)") == len(disc["images"])
    # run settings: every model and the analyses that used it
    used = {r[0]: r[1] for r in page.table("used by")}
    assert set(used) == set(ros["models"]) | {"file:zoo.py:tiny_cnn"}  # the last from probe
    assert used[VIT] == "rosetta, compare, probe, discover, visualize"


def test_default_out_list_of_dirs_and_single_file(demo, tmp_path):
    out = build_report([demo / "compare", demo / "probe"], tmp_path / "sub" / "r.html")
    text = out.read_text()
    assert "compare/compare.json" in text and "probe/probe.json" in text
    page = render_report(demo / "compare" / "compare.json")
    assert [f["analysis"] for f in page.found] == ["compare"]
    # the four expected analyses not given are pointed out
    assert sorted(n["where"] for n in page.notes) == ["discover", "ood", "probe", "rosetta"]
    assert build_report(demo / "probe" / "probe.json") == demo / "probe" / "report.html"
    with pytest.raises(InputError, match="no such folder"):
        build_report(tmp_path / "nowhere")
    with pytest.raises(InputError, match="unknown analyses"):
        render_report(demo, expected=["rosseta"])


# ----------------------------------------------------------------------------------------------
# partial, malformed and hostile folders


def test_empty_folder_says_what_is_missing(tmp_path):
    page = render_report(tmp_path)
    _check_structure(page.html)
    assert [n["where"] for n in page.notes] == list(EXPECTED)
    for kind in EXPECTED:
        assert f"No {kind} results: no {kind}.json was found" in page.html
    assert "Missing: rosetta, compare, probe, ood, discover" in page.html
    assert "No readable results were found." in page.html
    assert render_report(tmp_path, expected=()).notes == []


def test_malformed_files_become_notes(tmp_path, demo):
    (tmp_path / "rosetta").mkdir()
    (tmp_path / "rosetta" / "rosetta.json").write_text("{not json")
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "probe.json").write_text("[1, 2, 3]")
    (tmp_path / "compare").mkdir()
    bad = json.loads((demo / "compare" / "compare.json").read_text())
    bad["matrix"] = [[0.5, "x"]]  # wrong shape and a string; and no compare.png beside it
    (tmp_path / "compare" / "compare.json").write_text(json.dumps(bad))
    d = _write_discover(tmp_path / "discover", n_images=3)
    (tmp_path / "discover" / d["images"][0]["overlay"]).unlink()  # missing
    mask = tmp_path / "discover" / d["images"][1]["masks"][0]["file"]
    mask.write_bytes(mask.read_bytes()[:60])  # truncated PNG
    _png(tmp_path / "secret.png", 1)
    d["images"][2]["overlay"] = "../secret.png"  # outside the result folder
    d["images"][2]["masks"][0]["file"] = 42  # not a path
    d["complete"] = False
    (tmp_path / "discover" / "discover.json").write_text(json.dumps(d))
    (tmp_path / "visualize").mkdir()
    (tmp_path / "visualize" / "visualize.json").write_bytes(b"\xff\xfe\x00garbage")

    page = render_report(tmp_path)
    parsed = _check_structure(page.html)
    notes = {(n["where"], n["text"]) for n in page.notes}
    text = "\n".join(t for _, t in notes)
    assert "rosetta/rosetta.json could not be read: JSONDecodeError" in text
    assert ("probe/probe.json could not be read: expected a JSON object at the top level, "
            "got list") in text
    assert "visualize/visualize.json could not be read: UnicodeDecodeError" in text
    assert "compare/compare.json: no compare.png beside it" in text
    assert (f"the similarity matrix cannot be shown: the matrix is not "
            f"{len(bad['layers_a'])} x {len(bad['layers_b'])}") in text
    assert f"overlay of scene_0_000000 {d['images'][0]['overlay']}: missing" in text
    assert "not a readable image" in text
    assert "'../secret.png' lies outside the folder" in text
    assert "mask 0 of scene_0_000002: no file named" in text
    assert "partial run (interrupted)" in text
    # the unreadable ones are listed as such in the summary, every shown image decodes
    assert page.html.count("unreadable</span>") == 3
    for data in _payloads(parsed):
        Image.open(io.BytesIO(data)).load()
    assert (tmp_path / "secret.png").read_bytes() not in _payloads(parsed)
    # the notes are listed at the top, each linking to its place
    assert "notes" in parsed.ids and len(page.notes) >= 9


def test_wrong_types_and_a_failing_renderer(tmp_path, monkeypatch):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "rosetta.json").write_text(json.dumps({
        "analysis": "rosetta", "models": 3, "sets": "oops", "units": [1],
        "concepts": [{"id": 0, "figure": 5}, {"id": 1}], "pairs": [{"buddies": [{}]}],
        "settings": None, "concept_scores": {"quantile": 0.8}}))
    page = render_report(tmp_path, expected=())
    _check_structure(page.html)
    text = " ".join(n["text"] for n in page.notes)
    assert "no Rosetta sets were found" in text
    assert "concept 0 figure: no file named" in text and "concept 1: no figure" in text
    assert "quantile" in page.html  # a non-list concept_scores still shown, generically

    def boom(*args):
        raise KeyError("layers_a")

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "compare.json").write_text(json.dumps({"analysis": "compare",
                                                             "metric": "<cka>"}))
    monkeypatch.setitem(SECTIONS, "compare", dataclasses.replace(SECTIONS["compare"], render=boom))
    page = render_report(tmp_path, expected=())
    _check_structure(page.html)
    assert any("c/compare.json is malformed and was shown only in part: KeyError" in n["text"]
               for n in page.notes)
    assert "&lt;cka&gt;" in page.html and "<cka>" not in page.html  # the raw keys, escaped


def test_text_is_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    folder = tmp_path / "a<b>&c"
    d = _write_discover(folder, n_images=1)
    d["model"] = evil
    d["notes"] = ['<img src=x onerror="alert(2)">']
    d["images"][0]["id"] = "</td></tr></table><b>"
    d["extra_scores"] = [{"<k>": "<v>", "score": 0.5}]
    (folder / "discover.json").write_text(json.dumps(d))
    (tmp_path / "other.json").write_text(json.dumps({"analysis": "x\"'><i>", "v": evil}))
    page = render_report(tmp_path, expected=())
    parsed = _check_structure(page.html)
    assert "<script" not in page.html and "onerror=" not in page.html.replace(
        "onerror=&quot;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.html
    assert "a&lt;b&gt;&amp;<wbr>c/<wbr>discover.json" in page.html
    assert "&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;&lt;b&gt;" in page.html
    assert all(src["src"].startswith("data:image/") for src in parsed.imgs)
    # extra lists of records become tables, an unknown analysis goes to "Other results"
    assert page.html.count("<th>&lt;k&gt;</th>") == 1
    assert "other-results" in parsed.ids and "other.json" in page.html


def test_demo_record_names_and_ground_truth(tmp_path):
    # what `zoolens demo` adds: demo.json with the zoo (name -> spec), and discover.json naming
    # its model by spec, with scores against ground truth
    zoo = {"cnn": "file:zoo.py:cnn", "vit": "file:zoo.py:vit"}
    (tmp_path / "demo.json").write_text(json.dumps({
        "zoo": zoo, "images": 8, "seeds": {"rosetta": 101}, "torch_threads": 2,
        "seconds": {"rosetta": 10.25, "total": 12.5}, "concept_scores": [], "discovery": {}}))
    d = _write_discover(tmp_path / "discover", n_images=3)
    d["model"] = zoo["vit"]
    d["ground_truth"] = {"images": 3, "mean_best_iou": 0.5, "best_iou_per_image": [0.25, 0.5,
                                                                                   0.75]}
    (tmp_path / "discover" / "discover.json").write_text(json.dumps(d))
    page = render_report(tmp_path, expected=())
    parsed = _check_structure(page.html)
    models = {r[0]: r[1:] for r in parsed.table("used by")}
    assert models == {"cnn": [zoo["cnn"], ""], "vit": [zoo["vit"], "discover"]}
    runs = parsed.table("resolution")
    assert [r[1] for r in runs] == ["vit"]
    demo = {r[0]: r[1] for t in parsed.tables for r in t if r and r[0] in ("seconds", "zoo")}
    assert demo == {"seconds": "rosetta: 10.25, total: 12.5", "zoo": "cnn, vit"}
    assert "8 images, 12.500 s in all" in page.html
    for v in (0.25, 0.5, 0.75):
        assert f"best IoU with an object: {v:.3f}" in page.html
    gt = {r[0]: r[1] for t in parsed.tables for r in t if r and r[0].startswith("mean best")}
    assert gt == {"mean best iou": "0.5"}
    assert "best iou per image" not in page.html  # shown per image instead


def test_recognised_by_analysis_key_then_by_name(tmp_path):
    files = {"features/extract.json": {"analysis": "extract", "models": {"m": ["l1"]},
                                       "images": 4, "extracted": 4, "complete": True},
             "a/results.json": {"analysis": "compare", "metric": "cka"},  # any name
             "b/rosetta.json": {"analysis": "compare", "metric": "cka"},  # the key wins
             "c/probe.json": {"analysis": "probe-v9", "results": []}}  # no such section: name
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir()
        (tmp_path / rel).write_text(json.dumps(data))
    page = render_report(tmp_path, expected=())
    assert [(f["analysis"], f["file"]) for f in page.found] == [
        ("extract", "features/extract.json"), ("compare", "a/results.json"),
        ("compare", "b/rosetta.json"), ("probe", "c/probe.json")]
    assert any("says it holds a 'probe-v9' result; shown as probe" in n["text"]
               for n in page.notes)
    assert "Other results" not in page.html  # "analysis" is not shown as a result


def test_sample_of_many_images(tmp_path):
    _write_discover(tmp_path / "discover", n_images=15, seed=500)
    page = render_report(tmp_path, expected=(), max_images=4)
    assert page.html.count("object(s)") == 4
    assert "Showing 4 of 15 images" in page.html
    assert "15 masks in" not in page.html and "22 masks in 15 images" in page.html


# ----------------------------------------------------------------------------------------------
# CLI


def test_cli_report(demo, tmp_path):
    out = tmp_path / "page.html"
    res = runner.invoke(app, ["report", str(demo / "compare"), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["report"] == str(out) and out.read_text().startswith("<!DOCTYPE html>")
    assert [f["analysis"] for f in summary["found"]] == ["compare"]
    assert sorted(n["where"] for n in summary["notes"]) == ["discover", "ood", "probe",
                                                             "rosetta"]
    res = runner.invoke(app, ["report", str(demo / "probe"), "--expect", ""])
    assert res.exit_code == 0, res.output
    assert (demo / "probe" / "report.html").exists() and "0 note(s)" in res.output
    res = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "no such folder" in res.output
