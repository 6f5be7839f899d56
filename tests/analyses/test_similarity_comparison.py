"""`compare()` end to end on tiny models, against float64 NumPy references written here on
features taken with plain forward hooks (not through the engine or `taps.pool`)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import zoolens
from cka_reference import ref_hsic1
from zoolens.analyses.similarity import CompareResult, compare, plot_matrix
from zoolens.analyses.similarity import mutual_knn
from zoolens.errors import InputError, UnknownLayerError
from zoolens.sources import BadImage, open_source

VIT = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2"  # 4x4 grid + 1 CLS token
FAST = dict(pretrained=False, num_workers=0, progress=False)


# ----------------------------------------------------------------------------- references

def _ref_cka(x, y):
    """Kornblith et al. 2019: HSIC = tr(K H L H) / (n - 1)^2 with linear kernels, float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_))


def _ref_minibatch_cka(x, y, parts):
    kl = sum(ref_hsic1(x[p], y[p]) for p in parts)
    kk = sum(ref_hsic1(x[p], x[p]) for p in parts)
    ll = sum(ref_hsic1(y[p], y[p]) for p in parts)
    return kl / np.sqrt(kk * ll)


def _hooked(model, images, layers, flat=False):
    """Per layer a float64 (n_good, d) array: map/patch-token outputs averaged over positions
    (CLS excluded), or flattened whole (flat=True). Bad files are left out."""
    src = open_source(images)
    good = []
    for i in range(len(src)):
        try:
            good.append(model.preprocess(src.decode(i).image))
        except BadImage:
            pass
    prefix = model.adapter.prefix_tokens
    outs = {}
    modules = dict(model.module.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: outs.__setitem__(n, o))
               for n in layers]
    try:
        with torch.no_grad():
            model.forward(torch.stack(good).to(model.device))
    finally:
        for h in handles:
            h.remove()
    feats = []
    for n in layers:
        t = outs[n].double().cpu()
        if t.ndim == 3:  # (B, T, D) tokens
            t = t[:, prefix:]
            feats.append(t.flatten(1) if flat else t.mean(1))
        else:  # (B, C, H, W) maps
            feats.append(t.flatten(1) if flat else t.mean((2, 3)))
    return [f.numpy() for f in feats]


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def cnn(tiny_cnn_file):
    return zoolens.load(f"file:{tiny_cnn_file}:tiny_cnn", pretrained=False, device="cpu")


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return zoolens.load(VIT, pretrained=False, device="cpu")


@pytest.fixture(scope="module")
def scenes_with_bad_files(tmp_path_factory):
    """14 synthetic scenes as PNG files, plus a fake JPEG, an empty PNG and a text file."""
    root = tmp_path_factory.mktemp("scenes")
    src = open_source("synthetic:scenes?n=14&size=32&seed=3")
    for i in range(len(src)):
        src.decode(i).image.save(root / f"img_{i:02d}.png")
    (root / "img_05b.jpg").write_text("not a jpeg")
    (root / "img_09b.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return root


# ----------------------------------------------------------------------------- pooled CKA

def test_pooled_cka_matches_numpy_reference_and_reports_skips(cnn, vit, scenes_with_bad_files):
    res = compare(cnn, vit, scenes_with_bad_files, layers_a="blocks", layers_b="blocks",
                  batch_size=5, **FAST)
    assert res.layers_a == ["0", "2", "3"] and res.layers_b == ["blocks.0", "blocks.1"]
    assert res.metric == "cka" and res.settings["estimator"] == "linear_cka"
    assert res.images == 14
    assert {s["id"].rsplit("/", 1)[-1] for s in res.skipped} == \
        {"img_05b.jpg", "img_09b.png", "notes.txt"}
    fa = _hooked(cnn, scenes_with_bad_files, res.layers_a)
    fb = _hooked(vit, scenes_with_bad_files, res.layers_b)
    want = np.array([[_ref_cka(x, y) for y in fb] for x in fa])
    np.testing.assert_allclose(res.array, want, atol=1e-6, rtol=0)
    assert want.min() < 0.99  # a real comparison, not a matrix of ones


def test_model_against_itself_runs_once_symmetric_unit_diagonal(cnn, monkeypatch):
    seen = []
    forward = cnn.forward
    monkeypatch.setattr(cnn, "forward", lambda x: (seen.append(len(x)), forward(x))[1])
    images = "synthetic:scenes?n=20&size=32&seed=1"
    res = compare(cnn, None, images, layers_a="0,1,2,3", batch_size=8, **FAST)
    assert sum(seen) == 20  # each image through the model once, not twice
    m = res.array
    assert res.model_a == res.model_b and res.settings["same_model"]
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-12)
    np.testing.assert_allclose(m, m.T, atol=1e-12)
    f = _hooked(cnn, images, res.layers_a)
    want = np.array([[_ref_cka(x, y) for y in f] for x in f])
    np.testing.assert_allclose(m, want, atol=1e-6, rtol=0)
    # The same model passed twice is also run once.
    seen.clear()
    compare(cnn, cnn, images, layers_a="3", layers_b="0", batch_size=8, **FAST)
    assert sum(seen) == 20


def test_same_spec_loaded_once(tiny_cnn_file):
    spec = f"file:{tiny_cnn_file}:tiny_cnn"
    res = compare(spec, spec, "synthetic:scenes?n=8&size=32", layers_a="3", **FAST)
    assert res.settings["same_model"] and res.matrix == [[pytest.approx(1.0, abs=1e-12)]]


def test_constant_layer_gives_zero_with_a_warning_naming_it(cnn):
    # An all-black batch makes every layer constant over the images.
    images = torch.zeros(6, 3, 32, 32)
    with pytest.warns(RuntimeWarning, match=r"/0\b"):
        res = compare(cnn, None, images, layers_a="0", **FAST)
    assert res.matrix == [[0.0]]


# ----------------------------------------------------------------------------- flat CKA

@pytest.mark.parametrize("n, parts", [(26, [8, 8, 10]), (22, [8, 8, 6])])
def test_flat_unbiased_cka_matches_reference(cnn, vit, n, parts):
    images = f"synthetic:scenes?n={n}&size=32&seed=2"
    res = compare(cnn, vit, images, layers_a="0,3", layers_b="blocks.1", features="flat",
                  batch_size=8, seed=5, **FAST)
    assert res.settings["estimator"] == "minibatch_unbiased_cka"
    assert res.settings["minibatches"] == len(parts) and res.settings["unused"] == []
    assert res.images == n
    order = np.random.default_rng(5).permutation(n)  # the documented visiting order
    splits = np.split(order, np.cumsum(parts)[:-1])
    fa = _hooked(cnn, images, res.layers_a, flat=True)
    fb = _hooked(vit, images, res.layers_b, flat=True)
    want = np.array([[_ref_minibatch_cka(x, y, splits) for y in fb] for x in fa])
    np.testing.assert_allclose(res.array, want, atol=1e-5, rtol=0)
    # The result does depend on the partition: a different order gives a different value.
    other = [np.arange(n)[s:s + p] for s, p in zip(np.cumsum([0] + parts[:-1]), parts)]
    assert abs(_ref_minibatch_cka(fa[0], fb[0], other) - want[0, 0]) > 1e-4


def test_flat_against_itself_has_unit_diagonal(cnn):
    res = compare(cnn, None, "synthetic:scenes?n=16&size=32&seed=0", layers_a="blocks",
                  features="flat", batch_size=4, **FAST)
    m = res.array
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-9)
    np.testing.assert_allclose(m, m.T, atol=1e-12)
    assert res.settings["minibatches"] == 4 and res.settings["pooling"] == "none (flattened)"


# ----------------------------------------------------------------------------- mutual k-NN

def test_flat_with_bad_files_keeps_rows_aligned(cnn, vit, scenes_with_bad_files):
    res = compare(cnn, vit, scenes_with_bad_files, layers_a="2", layers_b="blocks.0",
                  features="flat", batch_size=8, seed=11, **FAST)
    src = open_source(scenes_with_bad_files)  # 16 listed files, 2 of them unreadable
    bad = {i for i, name in enumerate(src.ids) if name.endswith(("05b.jpg", "09b.png"))}
    good = [i for i in range(len(src)) if i not in bad]
    assert len(src) == 16 and res.images == 14 and len(res.skipped) == 3
    order = np.random.default_rng(11).permutation(16)
    halves = [[good.index(i) for i in h if i not in bad] for h in (order[:8], order[8:])]
    # A batch thinned by bad files waits for the next one to fill its minibatch of 8.
    parts = halves if len(halves[0]) >= 8 else [halves[0] + halves[1]]
    assert res.settings["minibatches"] == len(parts)
    fa = _hooked(cnn, scenes_with_bad_files, res.layers_a, flat=True)
    fb = _hooked(vit, scenes_with_bad_files, res.layers_b, flat=True)
    want = _ref_minibatch_cka(fa[0], fb[0], [np.array(p) for p in parts])
    assert abs(res.matrix[0][0] - want) < 1e-5


def test_mknn_matches_mutual_knn_on_hooked_features(cnn, vit, scenes_with_bad_files):
    res = compare(cnn, vit, scenes_with_bad_files, metric="mknn", k=3, batch_size=5, **FAST)
    assert res.images == 14
    fa = _hooked(cnn, scenes_with_bad_files, res.layers_a)
    fb = _hooked(vit, scenes_with_bad_files, res.layers_b)
    want = np.array([[mutual_knn(x, y, k=3) for y in fb] for x in fa])
    np.testing.assert_allclose(res.array, want, atol=1e-12)
    assert 0 < want.min() and want.max() < 1

    images = "synthetic:scenes?n=24&size=32&seed=4"
    res = compare(cnn, vit, images, metric="mknn", k=5, batch_size=7, **FAST)
    assert res.settings["k"] == 5 and res.settings["estimator"] == "mutual_knn"
    fa = _hooked(cnn, images, res.layers_a)
    fb = _hooked(vit, images, res.layers_b)
    want = np.array([[mutual_knn(x, y, k=5) for y in fb] for x in fa])
    np.testing.assert_allclose(res.array, want, atol=1e-12)
    assert 0 < want.min() and want.max() < 1
    same = compare(vit, None, images, metric="mknn", k=5, batch_size=7, **FAST)
    np.testing.assert_allclose(np.diag(same.array), 1.0)


def test_mknn_refuses_k_not_below_n(cnn):
    with pytest.raises(InputError, match=r"k=8.*\(8\)"):
        compare(cnn, None, "synthetic:scenes?n=8&size=32", metric="mknn", k=8, **FAST)
    with pytest.raises(InputError, match="k"):
        compare(cnn, None, "synthetic:scenes?n=8&size=32", metric="mknn", k=0, **FAST)


# ----------------------------------------------------------------------------- inputs, JSON, figure

@pytest.mark.parametrize("kwargs, match", [
    (dict(metric="rsa"), "metric"),
    (dict(features="cls"), "features"),
    (dict(metric="mknn", features="flat"), "flat"),
    (dict(features="flat", batch_size=3), "batch_size"),
])
def test_bad_options_are_named(cnn, kwargs, match):
    with pytest.raises(InputError, match=match):
        compare(cnn, None, "synthetic:scenes?n=8&size=32", **{**FAST, **kwargs})


def test_bad_layer_is_named(cnn):
    with pytest.raises(UnknownLayerError, match="blocks.99"):
        compare(cnn, None, "synthetic:scenes?n=8&size=32", layers_a="blocks.99", **FAST)


def test_json_roundtrip_and_heatmap(cnn, tmp_path):
    res = compare(cnn, None, "synthetic:scenes?n=8&size=32", layers_a="blocks", **FAST)
    d = json.loads(res.to_json())
    assert {"metric", "layers_a", "layers_b", "matrix", "images", "skipped", "settings"} <= set(d)
    back = CompareResult.from_json(res.to_json())
    assert back == res and CompareResult.from_json(d) == res
    with pytest.raises(InputError):
        CompareResult.from_json({"analysis": "rosetta"})
    path = plot_matrix(res, tmp_path / "sub" / "m.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_matrix(res, tmp_path / "big.png", annotate=False)
