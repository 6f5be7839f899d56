"""`zoolens.ood.evaluate()` and `zoolens ood` end to end on planted data: a `file:` model that maps flat images
far from textured scenes. Every row is recomputed here from the stored features; the best
choice, its threshold and `score()` are checked against their definitions."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from zoolens.analyses.ood import (METHODS, OODResult, check_methods, default_vim_dim,
                                  deployment_threshold, energy, evaluate, feature_norm, knn,
                                  mahalanobis, max_logit, metrics, msp, negative_aware_norm,
                                  score, vim)
from zoolens.analyses.ood.evaluation import split_source_name
from zoolens.cli import app
from zoolens.errors import InputError
from zoolens.sources.memory import TensorSource
from zoolens.store import Store, slug

TRAIN = "synthetic:scenes?n=48&size=32&seed=0"
ID_TEST = "synthetic:scenes?n=24&size=32&seed=1"
K = 5
FAST = dict(num_workers=0, progress=False, batch_size=16)

runner = CliRunner()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A planted zoo: layer "0" is each pixel's distance from its image's channel mean (zero
    on a flat image), layer "1" adds a constant channel; "planted" ends in a Linear head
    (a classifier), "headless" does not."""
    path = tmp_path_factory.mktemp("ood_zoo") / "zoo.py"
    path.write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class Spread(nn.Module):
            def forward(self, x):
                return (x - x.mean((2, 3), keepdim=True)).abs()

        class Level(nn.Module):
            def forward(self, x):
                return torch.cat([x, torch.full_like(x[:, :1], 0.05)], 1)

        def planted(pretrained=True, head=True):
            layers = [Spread(), Level(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            if head:
                layers.append(nn.Linear(4, 3))
            return {"module": nn.Sequential(*layers), "input_size": 32,
                    "block_names": ["0", "1"], "classifier": head}

        def headless(pretrained=True):
            return planted(pretrained, head=False)
    '''))
    return {"planted": f"planted=file:{path}:planted", "headless": f"headless=file:{path}:headless"}


def _flat(n: int, seed: int) -> np.ndarray:
    """(n, 32, 32, 3) uint8 images of one random colour each."""
    colours = np.random.default_rng(seed).integers(0, 256, (n, 1, 1, 3), dtype=np.uint8)
    return np.broadcast_to(colours, (n, 32, 32, 3)).copy()


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ood_sets") / "flat_grey"
    root.mkdir()
    for i, img in enumerate(_flat(10, 7)):
        Image.fromarray(img).save(root / f"{i:02d}.png")
    (root / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, zoo, flat_folder):
    out = tmp_path_factory.mktemp("ood_run")
    sets = {"flat": TensorSource(_flat(12, 3)), "grey": str(flat_folder)}
    result = evaluate([zoo["planted"], zoo["headless"]], TRAIN, ID_TEST, sets, k=K, out=out,
                 pretrained=False, **FAST)
    return out, result


def _stored(out, model: str, split: str, layer: str) -> np.ndarray:
    store = Store(out / "features" / slug(model) / split)
    return np.asarray(store.features(model, layer, "mean", valid_only=True), dtype=np.float32)


def _labels(out, model: str) -> np.ndarray:
    store = Store(out / "features" / slug(model) / "train")
    return np.asarray(store.labels, dtype=object)[store.valid]


def _head(zoo):
    import zoolens

    linear = zoolens.load(zoo["planted"], pretrained=False).module[4]
    return linear.weight.detach().double().numpy(), linear.bias.detach().double().numpy()


def _reference(out, zoo, row) -> tuple[np.ndarray, np.ndarray]:
    """The confidences of the ID test set and of the row's OOD set, each split scored on its
    own with the array functions."""
    m, layer, method = row["model"], row["layer"], row["method"]
    split = f"ood/{row['ood']}"
    te, oo = _stored(out, m, "id", layer), _stored(out, m, split, layer)
    tr = _stored(out, m, "train", layer)
    if method == "knn":
        return knn(tr, te, K), knn(tr, oo, K)
    if method in ("mahalanobis", "rmds"):
        y = _labels(out, m)
        rel = method == "rmds"
        return mahalanobis(tr, y, te, relative=rel), mahalanobis(tr, y, oo, relative=rel)
    if method in ("vim",):
        w, b = _head(zoo)
        return vim(tr, te, w, b, 2), vim(tr, oo, w, b, 2)
    fn = {"feature_norm": feature_norm, "negative_aware_norm": negative_aware_norm,
          "energy": energy, "msp": msp, "max_logit": max_logit}[method]
    return fn(te), fn(oo)


def test_rows_are_the_array_functions_on_the_stored_features(run, zoo):
    out, result = run
    data = json.loads((out / "ood.json").read_text())
    assert data["analysis"] == "ood" and data == json.loads(result.to_json())
    rows = data["results"]
    assert {r["ood"] for r in rows} == {"flat", "grey"}
    # every method on the classifier, in its own place; feature scores only without a head
    where = {(r["model"], r["method"]): set() for r in rows}
    for r in rows:
        where[(r["model"], r["method"])].add(r["layer"])
    assert {m for (model, m) in where if model == "planted"} == set(METHODS)
    assert where[("planted", "knn")] == {"0", "1", "penultimate"}
    assert where[("planted", "energy")] == {"output"}
    assert where[("planted", "vim")] == {"penultimate"}
    assert {m for (model, m) in where if model == "headless"} == {
        "knn", "mahalanobis", "rmds", "feature_norm", "negative_aware_norm"}
    assert where[("headless", "knn")] == {"0", "1"}
    for r in rows:
        conf_id, conf_ood = _reference(out, zoo, r)
        ref = metrics(conf_id, conf_ood)
        assert (r["auroc"], r["aupr_in"], r["aupr_out"], r["fpr"]) == pytest.approx(
            (ref.auroc, ref.aupr_in, ref.aupr_out, ref.fpr), abs=1e-12), r
        # and AUROC independently: the chance an OOD image scores below an ID one
        y = np.r_[np.zeros(len(conf_id)), np.ones(len(conf_ood))]
        assert r["auroc"] == pytest.approx(roc_auc_score(y, -np.r_[conf_id, conf_ood]))
        assert (r["n_id"], r["n_ood"]) == (24, 12 if r["ood"] == "flat" else 10)


def test_planted_ood_sets_are_found_by_the_feature_scores(run):
    _, result = run
    for method in ("knn", "mahalanobis", "feature_norm", "negative_aware_norm"):
        for model in ("planted", "headless"):
            rows = [r for r in result.rows(method, model) if r["layer"] == "1"]
            assert [r["auroc"] for r in rows] == pytest.approx([1.0, 1.0], abs=1e-12), \
                (method, model)


def test_best_layers_and_the_best_choice(run):
    _, result = run
    rows = result.results
    for b in result.best_layers():
        mine = [r for r in rows if r["model"] == b["model"] and r["method"] == b["method"]]
        means = {}
        for r in mine:
            means.setdefault((r["layer_index"], r["layer"]), []).append(r["auroc"])
        top = max(round(np.mean(v), 12) for v in means.values())
        earliest = min(k for k, v in means.items() if round(np.mean(v), 12) == top)
        assert (b["layer_index"], b["layer"]) == earliest
        assert b["mean_auroc"] == pytest.approx(top, abs=1e-12)
    best = result.best
    assert best["mean_auroc"] == pytest.approx(1.0, abs=1e-12)
    # ties at 1.0: the first model, then the earliest layer, then the first method in METHODS
    assert (best["model"], best["layer"], best["method"]) == ("planted", "0", "mahalanobis")


def test_the_threshold_keeps_95_percent_of_the_id_test_images(run):
    out, result = run
    best = result.best
    conf_id = np.array([c["confidence"] for c in best["confidences"]["id"]])
    stored = _stored(out, "planted", "id", "0")
    tr = _stored(out, "planted", "train", "0")
    assert conf_id == pytest.approx(mahalanobis(tr, _labels(out, "planted"), stored))
    assert [c["id"] for c in best["confidences"]["id"]] == [f"scene_1_{i:06d}" for i in range(24)]
    t = best["threshold"]
    assert np.mean(conf_id >= t) >= 0.95  # keeps at least 95%
    assert np.mean(conf_id > t) < 0.95  # and no larger threshold does
    assert t in conf_id and best["id_kept"] == np.mean(conf_id >= t)
    for name, conf in best["confidences"]["ood"].items():
        values = np.array([c["confidence"] for c in conf])
        assert best["flagged"][name] == np.mean(values < t) == 1.0  # AUROC 1: all flagged
    assert len(best["confidences"]["ood"]["grey"]) == 10  # the broken file is not scored
    assert [s["id"] for s in result.skipped["ood"]["grey"]] == ["broken.png"]
    ex = best["examples"]
    pooled = sorted((c["confidence"] for conf in best["confidences"]["ood"].values()
                     for c in conf), reverse=True)
    assert [e["confidence"] for e in ex["most_in_distribution"]] == pooled[:8]
    assert [e["confidence"] for e in ex["least_in_distribution"]] == pooled[::-1][:8]


def test_deployment_threshold_definition():
    conf = np.arange(20.0)  # 95% of 20 = 19 images kept: t is the 19th largest, 1.0
    assert deployment_threshold(conf) == 1.0
    assert deployment_threshold(np.r_[np.zeros(3), np.ones(17)]) == 0.0  # 17/20 < 95%
    assert deployment_threshold([5.0, 5.0, 5.0], keep=0.5) == 5.0
    assert deployment_threshold(np.arange(100.0), keep=0.9) == 10.0
    with pytest.raises(InputError, match="keep"):
        deployment_threshold([1.0], keep=0)


def test_notes_say_what_was_skipped_and_why(run):
    _, result = run
    notes = " | ".join(result.notes)
    assert "energy, msp, max_logit: skipped headless: it has no classification head" in notes
    assert "vim: skipped headless" in notes
    assert not result.rows("energy", "headless")
    assert not any("planted" in n and "skipped" in n for n in result.notes)
    assert result.settings["vim_dim"] == {"planted": default_vim_dim(4, 48), "headless": None}
    assert default_vim_dim(4, 48) == 2
    assert (default_vim_dim(2048), default_vim_dim(768), default_vim_dim(512)) == (1000, 512, 256)
    assert default_vim_dim(512, n_train=100) == 99


def test_a_second_run_extracts_nothing(run, zoo, flat_folder, forward_calls):
    out, first = run
    try:
        again = evaluate([zoo["planted"], zoo["headless"]], TRAIN, ID_TEST,
                    {"flat": TensorSource(_flat(12, 3)), "grey": str(flat_folder)},
                    methods="knn,energy", k=K, out=out, pretrained=False, plot=False, **FAST)
    finally:  # leave the module's run as the other tests expect it
        (out / "ood.json").write_text(first.to_json(indent=1))
    assert forward_calls == []
    assert again.rows("knn") == first.rows("knn") and again.rows("energy") == first.rows("energy")


def test_score_new_images_with_the_best_choice(run, zoo):
    out, result = run
    best = result.best
    scores = score(out, ID_TEST, num_workers=0, progress=False)
    assert (scores.model, scores.layer, scores.method) == ("planted", "0", "mahalanobis")
    expected = [c["confidence"] for c in best["confidences"]["id"]]
    np.testing.assert_allclose(scores.confidence, expected, rtol=1e-6, atol=1e-9)
    assert scores.threshold == best["threshold"]
    np.testing.assert_array_equal(scores.flagged, scores.confidence < best["threshold"])
    flat = score(out, _flat(5, 11), num_workers=0, progress=False)
    assert flat.flagged.all() and len(flat.ids) == 5
    import zoolens

    other = zoolens.load(zoo["planted"], pretrained=False, seed=1)  # other head weights
    with pytest.raises(InputError, match="not those"):
        score(out, ID_TEST, model=other, progress=False)
    with pytest.raises(InputError, match="holds no ood.json"):
        score(out / "features", ID_TEST)


@pytest.mark.parametrize("method", ["knn", "vim"])
def test_score_reproduces_the_run_for_other_choices(tmp_path, zoo, method):
    sets = {"flat": TensorSource(_flat(12, 3))}
    result = evaluate(zoo["planted"], TRAIN, ID_TEST, sets, methods=method, layers="1", k=K,
                 out=tmp_path, pretrained=False, plot=False, **FAST)
    assert result.best["method"] == method
    scores = score(tmp_path, ID_TEST, num_workers=0, progress=False, store=tmp_path / "new")
    np.testing.assert_allclose(scores.confidence,
                               [c["confidence"] for c in result.best["confidences"]["id"]],
                               rtol=1e-6, atol=1e-9)
    assert (tmp_path / "new" / "manifest.json").exists()


def test_figures_are_figures_and_leave_pyplot_alone(run):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from zoolens.analyses.ood.figures import auroc_heatmap

    out, result = run
    assert result.figures["auroc"] == {"planted": "ood_auroc_planted.png",
                                       "headless": "ood_auroc_headless.png"}
    for name in [*result.figures["auroc"].values(), result.figures["curves"],
                 result.figures["examples"]]:
        with Image.open(out / name) as im:
            assert im.size[0] > 300
    assert isinstance(auroc_heatmap(result, "planted"), Figure)
    assert plt.get_fignums() == []


def test_the_report_section_renders(run):
    from zoolens.report.html import build_report

    out, _ = run
    html = build_report(out, out / "report.html").read_text()
    start = html.index("Out-of-distribution detection</h2>")
    section = html[start:]
    assert "Best choice, for deployment" in section and "Best layer per model and method" in section
    assert section.count("data:image/png;base64") >= 4  # 2 heatmaps, curves, examples
    assert "malformed" not in html and "broken.png" in section


def test_errors_name_the_input(tmp_path, zoo):
    base = dict(out=tmp_path, pretrained=False, **FAST)
    with pytest.raises(InputError, match="nothing could be scored: energy: skipped headless: "
                                         "it has no classification head"):
        evaluate(zoo["headless"], TRAIN, ID_TEST, TensorSource(_flat(4, 0)), methods="energy", **base)
    with pytest.raises(InputError, match=r"methods 'knn,svm': unknown 'svm'; use any of knn"):
        evaluate(zoo["planted"], TRAIN, ID_TEST, TensorSource(_flat(4, 0)), methods="knn,svm", **base)
    with pytest.raises(InputError, match="two sets are named 'a'"):
        evaluate(zoo["planted"], TRAIN, ID_TEST, ["a=" + ID_TEST, "a=" + TRAIN], **base)
    with pytest.raises(InputError, match="needs out=DIR"):
        evaluate(zoo["planted"], TRAIN, ID_TEST, ID_TEST)
    assert check_methods("all") == list(METHODS)
    assert check_methods(["KNN", " vim", "knn"]) == ["knn", "vim"]


def test_ood_set_names(tmp_path):
    assert split_source_name("photos=./photos") == ("photos", "./photos")
    assert split_source_name("new-shapes=synthetic:scenes?n=8&shapes=star") == \
        ("new-shapes", "synthetic:scenes?n=8&shapes=star")
    assert split_source_name("synthetic:scenes?n=8") == (None, "synthetic:scenes?n=8")
    assert split_source_name("runs/lr=0.1") == (None, "runs/lr=0.1")
    odd = tmp_path / "a=b"
    odd.mkdir()
    assert split_source_name(str(odd)) == (None, str(odd))  # an existing folder is a folder


def test_unnamed_sets_are_named_after_their_folder_file_or_url(tmp_path):
    import fsspec
    from PIL import Image

    from zoolens.analyses.ood.evaluation import _ood_sources

    folder = tmp_path / "new.shapes"
    folder.mkdir()
    Image.new("RGB", (16, 16), (9, 8, 7)).save(folder / "a.png")
    (tmp_path / "night.csv").write_text("new.shapes/a.png,x\n")
    (tmp_path / "list.v2.txt").write_text("new.shapes/a.png\n")
    fs = fsspec.filesystem("memory")
    fs.pipe("/ood-bucket/sketches/a.png", (folder / "a.png").read_bytes())
    try:
        names = list(_ood_sources([str(folder), str(tmp_path / "night.csv"),
                                   str(tmp_path / "list.v2.txt"), "memory://ood-bucket/sketches/",
                                   "synthetic:scenes?n=2&size=16", "mine=" + str(folder)]))
    finally:
        fs.rm("/ood-bucket", recursive=True)
    assert names == ["new.shapes", "night", "list.v2", "sketches", "synthetic:scenes?n=2&size=16",
                     "mine"]


# ---------------------------------------------------------------------------------------------
# the command


def test_cli_json_is_ood_json(tmp_path, zoo, flat_folder):
    out = tmp_path / "cli"
    args = ["ood", "-m", zoo["planted"], "--train", TRAIN, "--id", ID_TEST,
            "--ood", str(flat_folder), "--ood", "stars=synthetic:scenes?n=6&size=32&seed=4"
            "&shapes=star,ring", "--methods", "knn,energy", "--k", "5", "--out", str(out),
            "--no-pretrained", "--workers", "0", "--batch-size", "16", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary == json.loads((out / "ood.json").read_text())
    assert list(summary["settings"]["ood"]) == ["flat_grey", "stars"]
    assert {r["method"] for r in summary["results"]} == {"knn", "energy"}
    text = " ".join(res.stderr.split())  # the console wraps long lines
    assert "best layer per model and method" in text and "best: planted" in text
    assert "is flagged OOD" in text and "1 image(s) skipped" in text
    assert OODResult.from_json(summary).best == summary["best"]


@pytest.mark.parametrize("extra, message", [
    (["--methods", "knn,foo"], "--methods 'knn,foo': unknown 'foo'; use any of"),
    (["--keep", "1.5"], "--keep 1.5: give a share in (0, 1]"),
    (["--k", "0"], "--k 0: the k-NN's k is a positive integer"),
])
def test_cli_checks_flags_before_any_model_runs(tmp_path, zoo, forward_calls, extra, message):
    out = tmp_path / "never"
    res = runner.invoke(app, ["ood", "-m", zoo["planted"], "--train", TRAIN, "--id", ID_TEST,
                              "--ood", ID_TEST, "--out", str(out), "--no-pretrained",
                              "--workers", "0", *extra])
    assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output and forward_calls == [] and not out.exists()


def test_cli_says_why_nothing_could_be_scored(tmp_path, zoo):
    res = runner.invoke(app, ["ood", "-m", zoo["headless"], "--train", TRAIN, "--id", ID_TEST,
                              "--ood", "synthetic:scenes?n=4&size=32&seed=9", "--methods",
                              "energy,vim", "--out", str(tmp_path), "--no-pretrained",
                              "--workers", "0"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "nothing could be scored" in text
    assert "it has no classification head" in text and "Traceback" not in res.output
