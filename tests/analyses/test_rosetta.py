"""Rosetta mining at the array level: resizing, unit ids, best buddies, sets, concepts, result JSON."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoolens.analyses.rosetta import (RosettaResult, UnitIndex, best_buddies, cluster_sets,
                                      label_buddies, rosetta_sets, set_profiles)
from zoolens.resize import concat_resized, resize_maps
from zoolens.errors import InputError, UnknownLayerError
from zoolens.stats import CrossCorrelation, TopKPartners

# ----------------------------------------------------------------------------------------------
# resizing


def test_resize_identity_up_and_antialiased_down():
    x = torch.randn(2, 3, 8, 8)
    assert resize_maps(x, 8) is x
    up = resize_maps(x, (16, 12))
    assert up.shape == (2, 3, 16, 12) and up.dtype == x.dtype
    np.testing.assert_allclose(resize_maps(torch.full((1, 2, 5, 7), 3.0), 11).numpy(), 3.0,
                               rtol=1e-6)
    # stripes 1,0,0,0 along the width: plain bilinear at 4x samples only between the zeros, the
    # antialiased one averages the footprint (mean 1/4)
    stripes = torch.zeros(1, 1, 16, 16)
    stripes[..., ::4] = 1.0
    naive = F.interpolate(stripes, size=(4, 4), mode="bilinear", align_corners=False)
    assert naive.abs().max() == 0
    down = resize_maps(stripes, 4)
    np.testing.assert_allclose(down[..., 1:3].numpy(), 0.25, atol=1e-6)  # edges clip the kernel
    assert down.min() > 0.15
    with pytest.raises(InputError, match="B, C, h, w"):
        resize_maps(torch.zeros(3, 8, 8), 4)


def test_concat_resized_keeps_layer_order():
    l1 = torch.randn(2, 3, 4, 4)
    l2 = torch.randn(2, 5, 8, 8)
    out = concat_resized([l1, l2], 8)
    assert out.shape == (2, 8, 8, 8)
    torch.testing.assert_close(out[:, 3:], l2)
    torch.testing.assert_close(out[:, :3], resize_maps(l1, 8))


# ----------------------------------------------------------------------------------------------
# unit ids


def test_unit_index_round_trips_ids_with_slashes_in_the_model():
    idx = UnitIndex("open_clip:ViT-B-32/laion2b_s34b_b79k", [("layer1", 4), ("blocks.0.mlp.act", 8)])
    assert len(idx) == 12
    assert idx.locate(5) == ("blocks.0.mlp.act", 1)
    uid = idx.unit_id(5)
    assert uid == "open_clip:ViT-B-32/laion2b_s34b_b79k/blocks.0.mlp.act:1"
    assert UnitIndex.parse(uid) == ("open_clip:ViT-B-32/laion2b_s34b_b79k", "blocks.0.mlp.act", 1)
    assert [idx.index_of(u) for u in idx.unit_ids()] == list(range(12))
    assert idx.layer_slice("blocks.0.mlp.act") == slice(4, 12)
    with pytest.raises(UnknownLayerError, match="have layer1, blocks.0.mlp.act"):
        idx.index("layer9", 0)
    with pytest.raises(InputError):
        idx.locate(12)
    with pytest.raises(InputError, match="no '/'"):
        UnitIndex("m", [("a/b", 3)])
    with pytest.raises(InputError):
        UnitIndex.parse("no-channel")

    class Tap:  # what TapInfo offers
        def __init__(self, name, channels):
            self.name, self.channels = name, channels

    assert UnitIndex.from_taps("m", [Tap("x", 2), Tap("y", 3)]) == UnitIndex("m", [("x", 2), ("y", 3)])


# ----------------------------------------------------------------------------------------------
# best buddies


def _ref_buddies(c, mode, k, dead_a, dead_b):
    """Loop-by-loop reference: argmax to the first maximum; ranks by (value desc, index asc)."""
    live_a = [i for i in range(c.shape[0]) if not dead_a[i]]
    live_b = [j for j in range(c.shape[1]) if not dead_b[j]]
    if not live_a or not live_b:
        return []

    def best_of_row(i):
        return max(live_b, key=lambda j: (c[i, j], -j))

    def ranked_col(j):
        return sorted(live_a, key=lambda i: (-c[i, j], i))

    cands = []
    for i in live_a:
        j = best_of_row(i)
        top = ranked_col(j)[:1 if mode == "strict" else min(k, len(live_a))]
        if i in top:
            cands.append((i, j, c[i, j]))
    out, taken = [], set()
    for i, j, r in sorted(cands, key=lambda t: (-t[2], t[0])):
        if j not in taken:
            taken.add(j)
            out.append((i, j, r))
    return sorted(out, key=lambda t: (-t[2], t[0], t[1]))


def test_relaxed_adds_a_pair_that_strict_misses():
    c = np.array([[0.80, 0.10, 0.00],
                  [0.85, 0.90, 0.10],
                  [0.00, 0.20, 0.30]])
    assert best_buddies(c, "strict") == [(1, 1, 0.9), (2, 2, 0.3)]
    assert best_buddies(c, "relaxed", k=2) == [(1, 1, 0.9), (0, 0, 0.8), (2, 2, 0.3)]
    assert best_buddies(c, "relaxed", k=1) == best_buddies(c, "strict")
    assert best_buddies(c, "relaxed", k=2, min_correlation=0.5) == [(1, 1, 0.9), (0, 0, 0.8)]


def test_relaxed_never_matches_a_unit_twice_and_works_with_fewer_than_k_units():
    # every A unit's best B unit is unit 0, and with 3 < k = 5 units all are in its top-k:
    # the original code would match B unit 0 three times
    c = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    assert best_buddies(c, "relaxed", k=5) == [(0, 0, 0.9)]
    assert best_buddies(c, "strict") == [(0, 0, 0.9)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["strict", "relaxed"])
def test_table_and_topk_paths_match_the_reference(seed, mode):
    rng = np.random.default_rng(seed)
    n_a, n_b = rng.integers(2, 12, size=2)
    c = np.round(rng.uniform(-1, 1, size=(n_a, n_b)), 1)  # exact ties on purpose
    dead_a = rng.random(n_a) < 0.2
    dead_b = rng.random(n_b) < 0.2
    c[dead_a] = 0
    c[:, dead_b] = 0
    want = _ref_buddies(c, mode, 3, dead_a, dead_b)
    got = best_buddies(c, mode, k=3, dead_a=dead_a, dead_b=dead_b)
    assert got == [(i, j, pytest.approx(r)) for i, j, r in want]
    for side in (0, 1):
        units = [p[side] for p in got]
        assert len(units) == len(set(units))
    assert not any(dead_a[i] or dead_b[j] for i, j, _ in got)
    # the same from per-unit top-K built over two column blocks
    tp = TopKPartners(n_a, n_b, k=3)
    cut = n_b // 2
    for s, e in ((0, cut), (cut, n_b)):
        if e > s:
            tp.update(c[:, s:e], col_offset=s, dead_a=dead_a, dead_b=dead_b[s:e])
    assert best_buddies(tp, mode, k=3) == got


def test_dead_units_default_to_all_zero_rows_and_columns():
    c = np.array([[0.0, 0.0, 0.0],
                  [0.0, 0.5, -0.2],
                  [0.0, -0.3, -0.1]])
    # A0 and B0 are dead: excluded, A2's best live partner is B2 and B2's is A2
    assert best_buddies(c, "strict") == [(1, 1, 0.5), (2, 2, -0.1)]
    # counted as live, the dead pair matches itself and B0 (0.0) steals A2
    assert best_buddies(c, "strict", dead_a=np.zeros(3, bool), dead_b=np.zeros(3, bool)) \
        == [(1, 1, 0.5), (0, 0, 0.0)]


def test_topk_too_small_for_relaxed_k_is_refused():
    tp = TopKPartners(6, 4, k=2).update(np.random.default_rng(0).normal(size=(6, 4)))
    with pytest.raises(InputError, match="K >= k"):
        best_buddies(tp, "relaxed", k=5)
    with pytest.raises(InputError, match="missing"):
        best_buddies(TopKPartners(6, 4, k=2), "strict")


class _PlantedConv(nn.Module):
    """Random zero-sum (texture) filters + ReLU, except planted channels that average one colour."""

    def __init__(self, channels: int, stride: int, planted: dict, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(channels, 3, stride, stride, generator=g)
        w -= w.mean(dim=(2, 3), keepdim=True)
        self.register_buffer("linear", torch.zeros(channels, dtype=torch.bool))
        for ch, colour in planted.items():
            w[ch] = 0
            w[ch, colour] = 1 / stride ** 2
            self.linear[ch] = True
        self.conv = nn.Conv2d(3, channels, stride, stride, bias=False)
        self.conv.weight.data.copy_(w)

    def forward(self, x):
        y = self.conv(x)
        return torch.where(self.linear.view(1, -1, 1, 1), y, F.relu(y))


def test_planted_units_of_two_conv_models_are_strict_best_buddies():
    # model A: 16x16 maps, red in channel 0 and green in channel 5; model B: 8x8 maps, red in
    # channel 3 and green in channel 1 (pooled over 4x4 instead of 2x2)
    model_a = _PlantedConv(8, 2, {0: 0, 5: 1}, seed=1)
    model_b = _PlantedConv(6, 4, {3: 0, 1: 1}, seed=2)
    g = torch.Generator().manual_seed(0)
    acc = CrossCorrelation()
    seen_a, seen_b = [], []
    for _ in range(4):
        smooth = F.interpolate(torch.randn(8, 3, 4, 4, generator=g), size=32, mode="bilinear",
                               align_corners=False)
        images = smooth + 0.1 * torch.randn(8, 3, 32, 32, generator=g)
        with torch.no_grad():
            a, b = resize_maps(model_a(images), 16), resize_maps(model_b(images), 16)
        acc.update(a, b)
        seen_a.append(a)
        seen_b.append(b)
    corr = acc.correlation()
    a = torch.cat(seen_a).permute(0, 2, 3, 1).reshape(-1, 8).double().numpy()
    b = torch.cat(seen_b).permute(0, 2, 3, 1).reshape(-1, 6).double().numpy()
    np.testing.assert_allclose(corr, np.corrcoef(a.T, b.T)[:8, 8:], atol=1e-6)

    strict = best_buddies(corr, "strict")
    pairs = {(i, j): r for i, j, r in strict}
    assert (0, 3) in pairs and (5, 1) in pairs
    assert pairs[(0, 3)] > 0.9 and pairs[(5, 1)] > 0.9
    assert [(i, j) for i, j, r in strict if r > 0.9] == [(0, 3), (5, 1)] or \
        [(i, j) for i, j, r in strict if r > 0.9] == [(5, 1), (0, 3)]
    # no random channel is matched to a planted one, and random pairs stay far below
    for i, j, r in strict:
        if (i, j) not in ((0, 3), (5, 1)):
            assert i not in (0, 5) and j not in (3, 1) and r < 0.8
    relaxed = best_buddies(corr, "relaxed", k=5)
    assert {(0, 3), (5, 1)} <= {(i, j) for i, j, _ in relaxed}

    ia = UnitIndex("gan", [("conv", 8)])
    ib = UnitIndex("torchvision:resnet18", [("layer1", 6)])
    labelled = label_buddies(strict[:2], ia, ib)
    assert {(u, v) for u, v, _ in labelled} == {("gan/conv:0", "torchvision:resnet18/layer1:3"),
                                                ("gan/conv:5", "torchvision:resnet18/layer1:1")}


# ----------------------------------------------------------------------------------------------
# multi-model sets


PAIRS = {
    ("G", "R"): [("g1", "r1", 0.9), ("g2", "r2", 0.8), ("g3", "r3", 0.4)],
    ("D", "G"): [("d1", "g1", 0.7), ("d2", "g2", 0.6), ("d4", "g4", 0.9)],  # reversed key
    ("R", "D"): [("r1", "d1", 0.5), ("r2", "d9", 0.9)],
}


def test_anchored_sets():
    sets = rosetta_sets(PAIRS, ["G", "R", "D"], anchor="G")
    assert [s["units"] for s in sets] == [["g1", "r1", "d1"], ["g2", "r2", "d2"]]
    assert [s["mean_correlation"] for s in sets] == pytest.approx([0.8, 0.7])
    # units follow `models` order, whatever the anchor's position
    assert rosetta_sets(PAIRS, ["R", "G", "D"], anchor="G")[0]["units"] == ["r1", "g1", "d1"]


def test_pairwise_sets_and_min_correlation():
    sets = rosetta_sets(PAIRS, ["G", "R", "D"], anchor="G", pairwise=True)
    assert [s["units"] for s in sets] == [["g1", "r1", "d1"]]  # r2's buddy is d9, not d2
    assert sets[0]["mean_correlation"] == pytest.approx((0.9 + 0.7 + 0.5) / 3)
    floor = rosetta_sets(PAIRS, ["G", "R", "D"], anchor="G", min_correlation=0.65)
    assert [s["units"] for s in floor] == [["g1", "r1", "d1"]]  # g2-d2 (0.6) falls below
    two = rosetta_sets(PAIRS, ["G", "R"], anchor="G")
    assert [s["units"] for s in two] == [["g1", "r1"], ["g2", "r2"], ["g3", "r3"]]


def test_sets_refuse_missing_pairs_and_bad_anchor():
    with pytest.raises(InputError, match=r"\(G, X\)"):
        rosetta_sets(PAIRS, ["G", "R", "X"], anchor="G")
    with pytest.raises(InputError, match="anchor"):
        rosetta_sets(PAIRS, ["G", "R"], anchor="D")
    with pytest.raises(InputError, match=r"\(R, X\)"):
        rosetta_sets({**PAIRS, ("G", "X"): [("g1", "x1", 0.9)]}, ["G", "R", "X"], anchor="G",
                     pairwise=True)


# ----------------------------------------------------------------------------------------------
# concepts


def test_set_profiles_standardise_each_unit():
    rng = np.random.default_rng(0)
    pattern = rng.normal(size=(3, 4, 4))
    z = (pattern - pattern.mean()) / pattern.std()
    maps = np.stack([np.stack([5 * pattern + 2, 0.1 * pattern - 7])])  # (1 set, 2 models, 3, 4, 4)
    np.testing.assert_allclose(set_profiles(maps)[0], z.ravel(), atol=1e-12)
    given = set_profiles(maps, mean=np.array([[2.0, -7.0]]), std=np.array([[5.0, 0.1]]))
    np.testing.assert_allclose(given[0], pattern.ravel(), atol=1e-12)
    with pytest.warns(RuntimeWarning, match="zero variance"):
        out = set_profiles(np.ones((1, 2, 3, 4, 4)))
    assert (out == 0).all()


@pytest.mark.parametrize("method", ["average", "kmeans"])
def test_cluster_sets_recovers_planted_concepts(method):
    rng = np.random.default_rng(1)
    bases = rng.normal(size=(3, 60))
    truth = np.array([0, 1, 2, 0, 1, 2, 2, 1, 0, 0, 1, 2])
    # scaled, shifted, noisy copies: a correlation-based clustering must not care about scale
    profiles = np.stack([rng.uniform(0.2, 5) * bases[t] + rng.normal() + 0.3 * rng.normal(size=60)
                         for t in truth])
    labels = cluster_sets(profiles, 3, seed=0, method=method)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, truth)  # numbered by first appearance, like truth
    np.testing.assert_array_equal(cluster_sets(profiles, 3, seed=0, method=method), labels)


def test_cluster_sets_edge_cases():
    with pytest.warns(UserWarning, match="exceeds"):
        np.testing.assert_array_equal(cluster_sets(np.eye(3), 5), [0, 1, 2])
    assert cluster_sets(np.zeros((0, 4)), 2).shape == (0,)
    x = np.vstack([np.ones(5), np.arange(5.0), np.arange(5.0) * 2, -np.arange(5.0)])
    labels = cluster_sets(x, 2)  # a constant profile: distance 1 to all, no NaN
    assert labels[1] == labels[2] and labels[3] != labels[1]


# ----------------------------------------------------------------------------------------------
# result


def test_result_json_round_trip():
    result = RosettaResult(
        models=["diffusers:tiny-unet", "open_clip:ViT-B-32/laion2b"], images=40, resolution=16,
        units={"diffusers:tiny-unet": 64, "open_clip:ViT-B-32/laion2b": 3072},
        pairs={("diffusers:tiny-unet", "open_clip:ViT-B-32/laion2b"): RosettaResult.pair_records(
            [("diffusers:tiny-unet/up.0:1", "open_clip:ViT-B-32/laion2b/mlp.gelu:7", 0.5),
             ("diffusers:tiny-unet/up.0:3", "open_clip:ViT-B-32/laion2b/mlp.gelu:2", 0.8)])},
        sets=[{"units": ["diffusers:tiny-unet/up.0:3", "open_clip:ViT-B-32/laion2b/mlp.gelu:2"],
               "mean_correlation": 0.8}],
        concepts=[{"id": 0, "sets": [0]}],
        dead_units={"diffusers:tiny-unet": ["diffusers:tiny-unet/up.0:9"]},
        skipped=[{"item": "img/broken.png", "reason": "cannot decode"}],
        settings={"mode": "strict", "k": 5, "anchor": "diffusers:tiny-unet",
                  "min_correlation": None, "pairwise": False})
    key = ("diffusers:tiny-unet", "open_clip:ViT-B-32/laion2b")
    assert [p["correlation"] for p in result.pairs[key]] == [0.8, 0.5]  # sorted descending
    text = result.to_json()
    d = json.loads(text)
    assert d["analysis"] == "rosetta" and d["resolution"] == [16, 16]
    assert d["pairs"][0]["models"] == list(key)
    back = RosettaResult.from_json(text)
    assert back == result
