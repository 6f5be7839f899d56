"""`probe()` end to end on synthetic scenes: results checked against an independent NumPy k-NN
on the stored features, the linear head's choice independent of the test split, the feature
store reused by later runs, zero-shot against a manual computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import zoolens
import zoolens.engine
from zoolens.analyses.probes import evaluation as ev
from zoolens.analyses.probes import ProbeResult, probe
from zoolens.errors import InputError

VIT = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2"
TRAIN = "synthetic:scenes?n=48&size=32&seed=0"
TEST = "synthetic:scenes?n=24&size=32&seed=1"
TEST2 = "synthetic:scenes?n=24&size=32&seed=2"
KS = (5, 10, 100)
FAST = dict(pretrained=False, num_workers=0, progress=False, batch_size=16)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)  # random weights: one loaded model serves runs that must agree
    return zoolens.load(VIT, pretrained=False, device="cpu")


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory, vit):
    out = tmp_path_factory.mktemp("probe_vit")
    res = probe([vit], TRAIN, TEST, methods=("knn", "linear", "logme"), out=out, k=KS,
                n_last_blocks=2, **FAST)
    return out, res


def _dino_knn_top1(xtr, ytr, xte, yte, k, temperature=0.07) -> float:
    """The DINO k-NN rule written directly in float64 NumPy."""
    xtr = np.asarray(xtr, np.float64)
    xte = np.asarray(xte, np.float64)
    xtr /= np.linalg.norm(xtr, axis=1, keepdims=True)
    xte /= np.linalg.norm(xte, axis=1, keepdims=True)
    classes, codes = np.unique(ytr, return_inverse=True)
    sims = xte @ xtr.T
    k = min(k, len(ytr))
    nn = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(sims, nn, axis=1) / temperature)
    votes = np.zeros((len(xte), len(classes)))
    np.add.at(votes, (np.repeat(np.arange(len(xte)), k), codes[nn].ravel()), weights.ravel())
    return float(np.mean(classes[votes.argmax(1)] == np.asarray(yte)))


def test_writes_json_rows_leaderboard_and_png(vit_run):
    out, res = vit_run
    data = json.loads((out / "probe.json").read_text())
    assert data["analysis"] == "probe" and data == json.loads(res.to_json())
    rows = data["results"]
    layers = ["blocks.0", "blocks.1"]
    assert data["settings"]["layers"] == {VIT: layers}
    # 2 layers x (2 pools x 3 k) k-NN rows, 2 pools LogME rows, 1 linear row per layer.
    assert len([r for r in rows if r["method"] == "knn"]) == 12
    assert len([r for r in rows if r["method"] == "logme"]) == 4
    assert len([r for r in rows if r["method"] == "linear"]) == 2
    for r in rows:
        assert r["model"] == VIT and r["layer"] in layers
        if r["method"] == "logme":
            assert np.isfinite(r["score"]) and "top1" not in r
        else:
            assert 0.0 <= r["top1"] <= 1.0
            assert r["top5"] is None  # 4 classes: top-5 would be 1 by construction
            assert r["n_train"] == 48 and r["n_test"] == 24
    assert {r["k_used"] for r in rows if r["method"] == "knn" and r["k"] == 100} == {48}
    assert any("k=[100] exceed" in n for n in data["notes"])
    board = data["leaderboard"]
    assert [b["method"] for b in board] == ["knn", "linear", "logme"]
    best_knn = max(r["top1"] for r in rows if r["method"] == "knn")
    assert board[0]["top1"] == best_knn
    assert ProbeResult.from_json(data).leaderboard() == board
    png = (out / "probe_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_knn_rows_equal_numpy_dino_knn_on_stored_features(vit_run):
    _, res = vit_run
    stores = res.settings["stores"][VIT]
    checked = 0
    for r in res.rows("knn"):
        tr = zoolens.open_store(stores["train"][r["pool"]])
        te = zoolens.open_store(stores["test"][r["pool"]])
        assert tr.info(VIT, r["layer"], r["pool"])["pool"] == r["pool"]
        expected = _dino_knn_top1(tr.features(VIT, r["layer"], r["pool"]), tr.labels,
                                  te.features(VIT, r["layer"], r["pool"]), te.labels, r["k"])
        assert r["top1"] == pytest.approx(expected, abs=1e-12), r["setting"]
        checked += 1
    assert checked == 12


def test_logme_rows_use_the_train_features_of_their_layer(vit_run):
    _, res = vit_run
    stores = res.settings["stores"][VIT]
    for r in res.rows("logme"):
        st = zoolens.open_store(stores["train"][r["pool"]])
        x = np.asarray(st.features(VIT, r["layer"], r["pool"]), np.float32)
        assert r["score"] == pytest.approx(zoolens.logme(x, st.labels), rel=1e-9)


def test_linear_rows_report_the_head_chosen_on_validation(vit_run):
    _, res = vit_run
    rows = {r["layer"]: r for r in res.rows("linear")}
    # Feature choices: CLS, mean of patches, both (DINOv2 avgpool), and last-2 blocks concatenated
    # where two tapped blocks exist.
    assert {g["feature"] for g in rows["blocks.0"]["grid"]} == {"cls", "mean", "cls+mean"}
    assert {g["feature"] for g in rows["blocks.1"]["grid"]} == {
        "cls", "mean", "cls+mean", "last2_cls", "last2_cls+mean"}
    for r in rows.values():
        assert len(r["grid"]) == 13 * len({g["feature"] for g in r["grid"]})
        best = max(r["grid"], key=lambda g: g["val_top1"])  # first maximum in grid order
        assert (r["head"], r["feature"], r["lr"], r["val_top1"]) == (
            best["name"], best["feature"], best["lr"], best["val_top1"])
        assert r["setting"] == r["head"] and r["head"].startswith(r["feature"] + "_lr_")
        assert r["n_fit"] + r["n_val"] == 48 and r["n_val"] == 10  # 20% of TRAIN
        assert r["epochs"] == 200  # 38 rows = 1 step per epoch: epochs raised to 200 steps


def test_validation_split_never_touches_test(tmp_path, monkeypatch, vit, vit_run):
    _, first = vit_run
    fits = []

    class SpyProbe(ev.LinearProbe):
        def fit(self, features, labels):
            fits.append((dict(features), np.asarray(labels)))
            return super().fit(features, labels)

    monkeypatch.setattr(ev, "LinearProbe", SpyProbe)
    # Another test split: the heads chosen (and every validation score) must not change.
    again = probe([vit], TRAIN, TEST2, methods=("linear",), out=tmp_path, n_last_blocks=2,
                  **FAST)
    train_store = zoolens.open_store(again.settings["stores"][VIT]["train"]["cls"])
    train_cls = {layer: np.asarray(train_store.features(VIT, layer, "cls"), np.float32)
                 for layer in ("blocks.0", "blocks.1")}
    assert len(fits) == 2
    for (feats, labels), layer in zip(fits, ("blocks.0", "blocks.1")):
        np.testing.assert_array_equal(labels, train_store.labels)  # train rows only
        np.testing.assert_array_equal(feats["cls"], train_cls[layer])
    for a, b in zip(first.rows("linear"), again.rows("linear")):
        assert a["layer"] == b["layer"]
        assert (a["head"], a["val_top1"], a["grid"]) == (b["head"], b["val_top1"], b["grid"])


def test_second_run_extracts_nothing(tmp_path, forward_calls, tiny_cnn_file):
    cnn = f"file:{tiny_cnn_file}:tiny_cnn"
    first = probe([cnn], TRAIN, TEST, methods=("knn",), out=tmp_path, pool="mean", k=(10,),
                  **FAST)
    assert sum(forward_calls) == 48 + 24  # every image once
    forward_calls.clear()
    second = probe([cnn], TRAIN, TEST, methods=("logme", "knn"), out=tmp_path, pool="mean",
                   k=(10,), **FAST)
    assert forward_calls == []
    assert [r["top1"] for r in second.rows("knn")] == [r["top1"] for r in first.rows("knn")]
    assert len(second.rows("logme")) == 3  # blocks 0, 2, 3
    # A subset of the stored layers is read from the same store too.
    third = probe([cnn], TRAIN, TEST, methods=("knn",), layers="blocks[-1:]", out=tmp_path,
                  pool="mean", k=(10,), **FAST)
    assert forward_calls == [] and [r["layer"] for r in third.rows("knn")] == ["3"]


def test_both_pools_in_one_pass_write_the_stores_extract_writes(tmp_path, forward_calls):
    res = probe([VIT], TRAIN, TEST, methods=("knn",), out=tmp_path, k=(10,), **FAST)
    assert sum(forward_calls) == 48 + 24  # mean and cls stores from ONE forward pass
    forward_calls.clear()
    stores = res.settings["stores"][VIT]["train"]
    for pool in ("mean", "cls"):
        before = np.array(zoolens.open_store(stores[pool]).features(VIT, "blocks.1", pool))
        # zoolens.extract finds a finished store that holds what it asks: does nothing.
        zoolens.extract([VIT], TRAIN, layers="blocks", out=stores[pool], pool=pool, **FAST)
        np.testing.assert_array_equal(
            zoolens.open_store(stores[pool]).features(VIT, "blocks.1", pool), before)
    assert forward_calls == []
    cls_t = np.asarray(zoolens.open_store(stores["cls"]).features(VIT, "blocks.1", "cls"))
    mean_t = np.asarray(zoolens.open_store(stores["mean"]).features(VIT, "blocks.1", "mean"))
    assert np.abs(cls_t - mean_t).max() > 1e-3  # two different poolings, not one copied


def test_zeroshot_in_probe_matches_manual(tmp_path, monkeypatch, open_clip_tiny):
    import open_clip

    clip = f"open_clip:{open_clip_tiny}"
    model = zoolens.load(clip, pretrained=False, device="cpu")
    seen = []
    real_scores = ev.zeroshot_scores
    monkeypatch.setattr(ev, "zeroshot_scores",
                        lambda *a: seen.append(real_scores(*a)) or seen[-1])
    res = probe([model, VIT], TRAIN, TEST, methods=("zeroshot",), out=tmp_path, pool="cls",
                templates=["a photo of a {}.", "a drawing of a {}."], **FAST)
    (row,) = res.rows("zeroshot")
    assert row["model"] == clip and row["layer"] == "output" and row["layer_index"] is None
    assert any(n.startswith(f"zeroshot: skipped {VIT}") for n in res.notes)

    # The stored test features are the model's final image embedding (encode_image).
    st = zoolens.open_store(res.settings["stores"][clip]["test"]["cls"])
    assert st.info(clip, "visual.transformer.resblocks.1", "cls")["pool"] == "cls"
    img = np.asarray(st.features(clip, "output"), np.float64)
    src = zoolens.open_source(TEST)
    x = torch.stack([model.preprocess(src.decode(i).image) for i in range(len(src))])
    with torch.no_grad():
        np.testing.assert_allclose(img, model.module.encode_image(x).numpy(), rtol=2e-3,
                                   atol=2e-3)  # float16 store
    # Manual classifier: tokenize -> encode_text -> normalise -> mean -> renormalise.
    tok = open_clip.get_tokenizer(open_clip_tiny)
    classes = sorted(set(zoolens.open_source(TRAIN).labels) | set(st.labels))
    with torch.no_grad():
        w = []
        for c in classes:
            e = model.module.encode_text(tok([f"a photo of a {c}.", f"a drawing of a {c}."]))
            e = e.double().numpy()
            e /= np.linalg.norm(e, axis=1, keepdims=True)
            w.append(e.mean(0) / np.linalg.norm(e.mean(0)))
    scores = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ np.stack(w).T
    (used,) = seen
    np.testing.assert_allclose(used, scores, atol=1e-6)
    expected = np.mean(np.asarray(classes)[scores.argmax(1)] == np.asarray(st.labels))
    assert row["top1"] == pytest.approx(expected, abs=1e-12)
    assert row["top5"] is None and row["num_classes"] == len(classes)


def test_bad_inputs_name_the_problem(tmp_path, messy_dir):
    with pytest.raises(InputError, match="has no labels"):
        probe([VIT], messy_dir, TEST, out=tmp_path, **FAST)
    with pytest.raises(InputError, match="use any of knn, linear, zeroshot, logme"):
        probe([VIT], TRAIN, TEST, methods=("knn", "svm"), out=tmp_path, **FAST)
    with pytest.raises(InputError, match="pool"):
        probe([VIT], TRAIN, TEST, pool="max", out=tmp_path, **FAST)
    with pytest.raises(InputError, match="where the class name goes"):
        probe([VIT], TRAIN, TEST, methods=("zeroshot",), templates=["a photo"], out=tmp_path,
              **FAST)
    with pytest.raises(InputError, match="out=DIR"):
        probe([VIT], TRAIN, TEST, **FAST)
