"""The curate commands end to end on scikit-image photographs with planted edited copies
(recompressed, cropped, mirrored, enlarged), embedded by a fixed `file:` model (mirror-symmetric
8x8 thumbnails, centred per image) that keeps such copies near and tells the photographs apart.

Answers are checked against what was planted and against NumPy / the array functions run
directly on the stored features; a later command on the same images runs no model; the report
shows every section with its contact sheet; bad flags fail in one line before anything is made.
"""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

import zoolens
from zoolens.analyses.curate import (CurateResult, DatasetsResult, balanced_sample,
                                     compare_datasets, hierarchical_kmeans, kmeans, prototypes,
                                     retrieve_by_clusters, retrieve_nearest)
from zoolens.analyses.curate import commands as cc
from zoolens.cli import app
from zoolens.errors import InputError

DISTINCT = ["astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "moon", "page",
            "text", "clock", "hubble_deep_field", "immunohistochemistry", "colorwheel", "brick",
            "grass", "gravel"]
# the planted copies: each group, first in source order (natural sort) first
PLANTED = [{"astronaut.png", "astronaut_q30.jpg"},
           {"chelsea.png", "chelsea_big.png", "chelsea_crop.png"},
           {"coffee.png", "coffee_flip.png", "coffee_flip_small.jpg"}]
FAST = dict(num_workers=0, progress=False)
ZOO = '''
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

class Thumbnails(nn.Module):
    """Mirror-symmetric 8x8 thumbnails, centred per image (cosine = pixel correlation)."""
    def forward(self, x):
        t = F.adaptive_avg_pool2d(x, 8)
        t = (t + t.flip(-1)).flatten(1)
        return t - t.mean(1, keepdim=True)

def squash(image):
    a = np.asarray(image.resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255
    return torch.from_numpy(a).permute(2, 0, 1)

def thumbnails(pretrained=True):
    return {"module": Thumbnails(), "preprocess": squash, "input_size": 32}
'''
runner = CliRunner()


def _photo(name: str, width: int = 96) -> Image.Image:
    from skimage import data

    img = Image.fromarray(getattr(data, name)()).convert("RGB")
    return img.resize((width, max(8, round(width * img.height / img.width))))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Photographs with planted copies, a broken file and a blank image; query images; a
    second image set; the zoo file."""
    root = tmp_path_factory.mktemp("curate")
    photos = root / "photos"
    photos.mkdir()
    for name in DISTINCT:
        _photo(name).save(photos / f"{name}.png")
    _photo("astronaut").save(photos / "astronaut_q30.jpg", quality=30)
    cat = _photo("chelsea")
    cat.crop((4, 3, cat.width - 4, cat.height - 3)).save(photos / "chelsea_crop.png")
    _photo("chelsea", 192).save(photos / "chelsea_big.png")  # the most pixels of its group
    ImageOps.mirror(_photo("coffee")).save(photos / "coffee_flip.png")
    ImageOps.mirror(_photo("coffee", 64)).save(photos / "coffee_flip_small.jpg", quality=80)
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (40, 30), (90, 90, 90)).save(photos / "blank.png")  # features all zero
    queries = root / "queries"
    queries.mkdir()
    astro = _photo("astronaut", 120)
    astro.crop((6, 6, 114, 114)).save(queries / "astro_crop.png")
    _photo("coins").save(queries / "coins.jpg", quality=50)
    other = root / "scenes"  # a second set: synthetic scenes, unlike any photograph
    other.mkdir()
    source = zoolens.open_source("synthetic:scenes?n=16&size=48&seed=3")
    for i in range(len(source)):
        source.decode(i).image.save(other / f"scene_{i:02d}.png")
    zoo = root / "zoo.py"
    zoo.write_text(textwrap.dedent(ZOO))
    model = zoolens.load(f"px=file:{zoo}:thumbnails", device="cpu")
    return {"root": root, "photos": photos, "queries": queries, "scenes": other, "zoo": zoo,
            "model": model, "spec": f"px=file:{zoo}:thumbnails"}


@pytest.fixture(scope="module")
def first(world):
    """The first command on the photographs: extracts their features into out/features."""
    out = world["root"] / "out"
    res = cc.dedup(world["model"], world["photos"], threshold=0.9, keep="first", out=out,
                   **FAST)
    return out, res


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _stored(out: Path, res, role: str = "images"):
    """(ids, float64 features) of the usable images, read from the store the command names."""
    store = zoolens.open_store(out / res.settings["sets"][role]["store"])
    x = np.asarray(store.features("px", "output", "mean"), np.float64)
    ok = store.valid & (x != 0).any(1)
    return [i for i, k in zip(store.ids, ok) if k], x[ok]


def _names(out: Path, res, role: str = "images") -> list[str]:
    """Every id of an image set, by source position (a result's indices are positions)."""
    return zoolens.open_store(out / res.settings["sets"][role]["store"]).ids


def _components(ids, x, t):
    """Connected components (size >= 2) of the pairs with cosine > t, by union-find."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    parent = list(range(len(ids)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(u @ u.T, 1) > t)):
        parent[find(i)] = find(j)
    groups = {}
    for i in range(len(ids)):
        groups.setdefault(find(i), set()).add(ids[i])
    return sorted((g for g in groups.values() if len(g) > 1), key=sorted)


# ----------------------------------------------------------------------------------------------
# dedup


def test_dedup_finds_exactly_the_planted_groups(first):
    out, res = first
    folder = out / "dedup"
    names = _names(out, res)
    groups = [{names[i] for i in g} for g in res.result.groups]
    assert sorted(groups, key=sorted) == sorted(PLANTED, key=sorted)
    ids, x = _stored(out, res)
    assert _components(ids, x, 0.9) == sorted(PLANTED, key=sorted)  # NumPy, all pairs
    # keep.csv: every usable image but the duplicates; one per group, the first in source order
    kept = [r[0] for r in _csv(folder / "keep.csv")[1:]]
    firsts = {sorted(g, key=ids.index)[0] for g in PLANTED}
    assert kept == [i for i in ids if i in firsts or not any(i in g for g in PLANTED)]
    removed = _csv(folder / "removed.csv")
    assert removed[0] == ["id", "reason", "group", "kept_id", "reference_id", "similarity"]
    for row in removed[1:]:
        group = next(g for g in PLANTED if row[0] in g)
        assert row[1] == "duplicate" and row[3] == sorted(group, key=ids.index)[0]
        a, b = x[ids.index(row[0])], x[ids.index(row[3])]
        assert float(row[5]) == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b),
                                              abs=1e-6)
    assert sorted(r[0] for r in removed[1:]) == sorted(set().union(*PLANTED) - firsts)
    # images that could not be used are listed with the reason, never dropped silently
    skipped = {r[1]: r[2] for r in _csv(folder / "skipped.csv")[1:]}
    assert set(skipped) == {"broken.jpg", "blank.png"}
    assert "all zero" in skipped["blank.png"] and skipped["broken.jpg"]
    data = json.loads((folder / "curate.json").read_text())
    assert data["analysis"] == "curate" and data["step"] == "dedup"
    assert data["counts"]["used"] == len(ids) == data["counts"]["images"] - 2
    assert data["counts"]["groups"] == 3 and data["counts"]["removed"] == 5
    assert data["settings"]["weights"]["spec"].startswith("file:")
    assert data["settings"]["weights"]["weights_fingerprint"].startswith("sha256:")
    assert data["settings"]["sets"]["images"]["source"].startswith("folder:")
    assert {s["id"] for s in data["skipped"]["images"]} == {"broken.jpg", "blank.png"}
    assert CurateResult.from_json(json.dumps(data)).to_dict() == data
    assert Image.open(folder / "dedup.png").size[1] > 3 * 96  # three rows of thumbnails


def test_later_commands_on_the_same_images_run_no_model(first, world, forward_calls):
    out, _ = first
    res = cc.dedup(world["model"], world["photos"], keep="resolution", out=out, **FAST)
    cc.find_prototypes(world["model"], world["photos"], n_clusters=4, out=out, **FAST)
    cc.sample(world["model"], world["photos"], budget=5, out=out, **FAST)
    assert forward_calls == []  # all read from out/features
    # keep="resolution": the decoded sizes come from the store; the enlarged copy wins its
    # group, and the others (equal sizes) keep the first
    names = _names(out, res)
    kept = {names[k] for k in res.result.group_kept}
    assert kept == {"astronaut.png", "chelsea_big.png", "coffee.png"}


def test_dedup_against_a_reference_set_drops_whole_groups(first, world):
    out, _ = first
    res = cc.dedup(world["model"], world["photos"], threshold=0.9, reference=world["queries"],
                   reference_threshold=0.9, out=world["root"] / "ref", **FAST)
    ids, x = _stored(world["root"] / "ref", res)
    qids, q = _stored(world["root"] / "ref", res, "reference")
    u, v = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (x, q))
    dirty = {ids[i] for i in np.flatnonzero((u @ v.T).max(1) > 0.9)}
    assert dirty == {"astronaut.png", "astronaut_q30.jpg", "coins.png"}
    removed = {r[0]: r[1] for r in _csv(world["root"] / "ref" / "dedup" / "removed.csv")[1:]}
    assert {i for i, why in removed.items() if why == "matches the reference"} == dirty
    kept = {r[0] for r in _csv(world["root"] / "ref" / "dedup" / "keep.csv")[1:]}
    assert not kept & (dirty | PLANTED[0])  # the astronaut group is gone whole


def test_an_existing_store_is_read_and_a_wrong_one_refused(first, world, forward_calls,
                                                          tmp_path):
    store = world["root"] / "extracted"
    zoolens.extract(world["model"], world["photos"], layers="output", out=store, **FAST)
    forward_calls.clear()
    res = cc.dedup(world["model"], world["photos"], store=store, out=tmp_path, **FAST)
    assert forward_calls == []
    assert res.counts["groups"] == 3 and Path(res.settings["sets"]["images"]["store"]) == store
    with pytest.raises(InputError, match="extracted from other images"):
        cc.dedup(world["model"], world["queries"], store=store, out=tmp_path, **FAST)
    other = zoolens.load(f"py=file:{world['zoo']}:thumbnails", device="cpu")
    with pytest.raises(InputError, match=r"features of px, not of py \(name the model"):
        cc.dedup(other, world["photos"], store=store, out=tmp_path, **FAST)
    assert not (store / "py").exists()  # nothing written into a store the user gave


# ----------------------------------------------------------------------------------------------
# sample, retrieve, prototypes


def test_sample_is_the_array_functions_and_the_same_for_a_seed(first, world):
    out, _ = first
    texts, runs = [], []
    for s in (5, 5, 6):
        runs.append(cc.sample(world["model"], world["photos"], budget=7, levels="6,3", seed=s,
                              out=out, **FAST))
        texts.append((out / "sample" / "keep.csv").read_text())
    assert texts[0] == texts[1] != texts[2]  # the same seed, the same sample; another, another
    ids, x = _stored(out, runs[0])
    h = hierarchical_kmeans(x.astype(np.float32), [6, 3], spherical=True, seed=5)
    ref = balanced_sample(h, 7, seed=5).indices
    names = _names(out, runs[0])
    assert [names[i] for i in runs[0].result.indices] == [ids[i] for i in ref]
    assert texts[0].split() == ["id"] + [ids[i] for i in ref]  # source order
    rows = _csv(out / "sample" / "clusters.csv")  # of the last run (seed 6)
    assert rows[0] == ["id", "level_1", "level_2", "sampled"] and len(rows) == len(ids) + 1
    assert sum(int(r[3]) for r in rows[1:]) == 7
    assert (out / "sample" / "sample.png").exists()


def test_sample_from_the_images_dedup_kept(first, world):
    out, _ = first
    res = cc.sample(world["model"], world["photos"], budget=100, subset=out / "dedup" /
                    "keep.csv", out=world["root"] / "sub", **FAST)
    kept = [r[0] for r in _csv(out / "dedup" / "keep.csv")[1:]]
    assert [r[0] for r in _csv(world["root"] / "sub" / "sample" / "keep.csv")[1:]] == kept
    assert res.counts["used"] == len(kept) and res.counts["excluded"] == 23 - len(kept)
    assert any("exceeds" in n for n in res.notes)  # budget above the images: a note


def test_retrieve_rows_equal_the_array_function(first, world):
    out = world["root"] / "out"
    res = cc.retrieve(world["model"], world["queries"], world["photos"], k=3, out=out, **FAST)
    qids, q = _stored(out, res, "queries")
    pids, p = _stored(out, res, "pool")
    ref = retrieve_nearest(q.astype(np.float32), p.astype(np.float32), 3)
    rows = _csv(out / "retrieve" / "retrieved.csv")
    assert rows[0] == ["query_id", "rank", "pool_id", "similarity"]
    assert [(r[0], int(r[1]), r[2]) for r in rows[1:]] == [
        (qids[i], r + 1, pids[j]) for i in range(len(qids)) for r, j in
        enumerate(ref.neighbors[i])]
    np.testing.assert_allclose([float(r[3]) for r in rows[1:]], ref.similarities.ravel(),
                               atol=1e-6)
    u, v = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (q, p))
    assert set(np.argsort(-(u @ v.T)[0])[:2]) == {pids.index("astronaut.png"),
                                                 pids.index("astronaut_q30.jpg")}
    assert [r[0] for r in _csv(out / "retrieve" / "keep.csv")[1:]] == [
        pids[j] for j in ref.selected]
    # clusters mode: the pool clusters that hold a query, all of their images
    res = cc.retrieve(world["model"], world["queries"], world["photos"], mode="clusters",
                      n_clusters=5, seed=2, out=out, **FAST)
    km = kmeans(p.astype(np.float32), 5, spherical=True, seed=2)
    ref = retrieve_by_clusters(q.astype(np.float32), p.astype(np.float32), clusters=km)
    assert [r[0] for r in _csv(out / "retrieve" / "keep.csv")[1:]] == [
        pids[j] for j in ref.selected]
    assert res.counts["retrieved"] == len(ref.selected)


def test_prototypes_equal_the_array_function(first, world):
    out, _ = first
    res = cc.find_prototypes(world["model"], world["photos"], n_clusters=4, seed=1, out=out,
                             **FAST)
    ids, x = _stored(out, res)
    ref = prototypes(x.astype(np.float32), 4, seed=1)
    names = _names(out, res)
    assert [names[i] for i in res.result.medoids] == [ids[i] for i in ref.medoids]
    rows = _csv(out / "prototypes" / "prototypes.csv")[1:]
    assert [int(r[0]) for r in rows] == ref.order.tolist()
    assert [int(r[1]) for r in rows] == ref.sizes[ref.order].tolist()
    assert [r[0] for r in _csv(out / "prototypes" / "keep.csv")[1:]] == sorted(
        (ids[i] for i in ref.medoids), key=ids.index)
    assert (out / "prototypes" / "prototypes.png").exists()


# ----------------------------------------------------------------------------------------------
# datasets


def test_datasets_compare_equals_the_array_functions(world):
    out = world["root"] / "cmp"
    res = cc.datasets(world["model"], world["photos"], world["scenes"], k=3, n_clusters=6,
                      out=out, **FAST)
    ids_a, a = _stored(out, res, "a")
    ids_b, b = _stored(out, res, "b")
    ref = compare_datasets(a.astype(np.float32), b.astype(np.float32), k=3, n_clusters=6)
    data = json.loads((out / "datasets.json").read_text())
    assert data["analysis"] == "datasets" and data["names"] == ["photos", "scenes"]
    assert data["counts"]["frechet"] == pytest.approx(ref.frechet, rel=1e-12)
    for key in ("precision", "recall", "density", "coverage"):
        assert data["counts"][key] == getattr(ref.prdc, key)
    assert data["result"]["prototypes"]["counts_a"] == ref.prototypes.counts_a.tolist()
    assert DatasetsResult.from_json(json.dumps(data)).to_dict() == data
    rows = _csv(out / "clusters.csv")
    assert rows[0][:3] == ["cluster", "count_photos", "count_scenes"]
    assert [int(r[1]) for r in rows[1:]] == ref.prototypes.counts_a[ref.prototypes.order].tolist()
    # photographs and drawn scenes share few clusters: the sheet shows the one-sided ones
    assert len(ref.prototypes.only_a) + len(ref.prototypes.only_b) > 0
    assert (out / "datasets.png").exists() and data["files"]["sheet"] == "datasets.png"


# ----------------------------------------------------------------------------------------------
# report and CLI


def test_report_sections_render_with_their_sheets(first, world):
    from zoolens.report.html import render_report

    out, _ = first
    cc.find_prototypes(world["model"], world["photos"], n_clusters=4, out=out, **FAST)
    cmp = world["root"] / "cmp2"
    cc.datasets(world["model"], world["photos"], world["scenes"], k=3, n_clusters=6, out=cmp,
                **FAST)
    html = render_report([out, cmp], expected=()).html
    for text in ("Data curation", "Dataset comparison", "Duplicate groups", "chelsea_crop.png",
                 "Prototypes", "Fréchet distance", "skipped"):
        assert text in html, text
    assert html.count('src="data:image/png;base64,') >= 3  # dedup, prototypes, datasets sheets


def test_cli_runs_a_step_and_prints_json(first, world):
    out, _ = first
    res = runner.invoke(app, ["curate", "prototypes", "-m", world["spec"], "-i",
                              str(world["photos"]), "-o", str(out), "--clusters", "3",
                              "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    assert "done: prototypes: 21 of 23 images; 3 prototypes" in " ".join(res.output.split())
    data = json.loads(res.stdout[res.stdout.index("{"):])
    assert data["step"] == "prototypes" and data["counts"]["prototypes"] == 3
    res = runner.invoke(app, ["datasets", "compare", "-m", world["spec"], "--images-a",
                              str(world["photos"]), "--images-b", str(world["scenes"]), "-o",
                              str(world["root"] / "cmp3"), "--k", "3", "--names", "p,s",
                              "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "only in p" in " ".join(res.output.split())


def _one_error_line(res, *words):
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    line = " ".join(res.output[res.output.index("error:"):].split())
    for w in words:
        assert w in line, (w, line)


@pytest.mark.parametrize("command, flags, words", [
    ("dedup", ["--threshold", "1.5"], ["--threshold 1.5"]),
    ("dedup", ["--keep", "biggest"], ["--keep 'biggest'", "centroid, first, resolution"]),
    ("dedup", ["--reference-threshold", "0.5"], ["--reference-threshold", "without --reference"]),
    ("dedup", ["--reference", "nowhere/"], ["--reference", "no such file or folder"]),
    ("dedup", ["--max-neighbors", "0"], ["--max-neighbors 0"]),
    ("dedup", ["--pool", "max"], ["--pool 'max'", "mean, cls"]),
    ("dedup", ["--layer", "nope"], ["nope"]),
    ("sample", ["--budget", "0"], ["--budget 0"]),
    ("sample", ["--budget", "5", "--levels", "3,9"], ["--levels '3,9'", "at most as many"]),
    ("sample", ["--budget", "5", "--strategy", "best"], ["--strategy 'best'"]),
    ("prototypes", ["--clusters", "0"], ["--clusters 0"]),
    ("prototypes", ["--dtype", "int8"], ["--dtype 'int8'"]),
])
def test_bad_flags_fail_in_one_line_before_anything_is_made(world, tmp_path, command, flags,
                                                             words):
    out = tmp_path / "o"
    budget = ["--budget", "3"] if command == "sample" and "--budget" not in flags else []
    res = runner.invoke(app, ["curate", command, "-m", world["spec"], "-i",
                              str(world["photos"]), "-o", str(out), "--workers", "0",
                              *budget, *flags])
    _one_error_line(res, *words)
    assert not out.exists()


def test_bad_flags_of_retrieve_and_datasets(world, tmp_path):
    out = tmp_path / "o"
    base = ["-m", world["spec"], "-o", str(out), "--workers", "0"]
    retrieve = ["curate", "retrieve", *base, "--queries", str(world["queries"]),
                "--pool-images", str(world["photos"])]
    _one_error_line(runner.invoke(app, [*retrieve, "--mode", "knn"]), "--mode 'knn'")
    _one_error_line(runner.invoke(app, [*retrieve, "--k", "0"]), "--k 0")
    compare = ["datasets", "compare", *base, "--images-a", str(world["photos"]),
               "--images-b", str(world["scenes"])]
    _one_error_line(runner.invoke(app, [*compare, "--metric", "l1"]), "--metric 'l1'")
    _one_error_line(runner.invoke(app, [*compare, "--min-purity", "0.3"]), "--min-purity 0.3")
    _one_error_line(runner.invoke(app, [*compare, "--names", "x,x"]), "--names")
    _one_error_line(runner.invoke(app, ["curate", "dedup", *base, "-i", str(world["photos"]),
                                        "--subset", str(tmp_path / "none.csv")]), "--subset")
    _one_error_line(runner.invoke(app, ["curate", "dedup", *base, "-i", str(world["photos"]),
                                        "--address", "auto"]), "--address", "--backend ray")
    assert not out.exists()
