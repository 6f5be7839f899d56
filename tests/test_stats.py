"""Streaming correlation accumulators against a float64 NumPy Pearson on materialised activations."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoolens.errors import InputError, NotFittedError
from zoolens.stats import CrossCorrelation, TopKPartners, plan_column_blocks


def _maps(n=12, offset=0.0, seed=0):
    """Two 'models': A (n, 5, 8, 8) and B (n, 7, 4, 4) upsampled to 8x8, with shared signal."""
    g = torch.Generator().manual_seed(seed)
    latent = F.interpolate(torch.randn(n, 3, 2, 2, generator=g), size=(8, 8), mode="bilinear",
                           align_corners=False)  # smooth, so it survives B's coarser grid
    a = torch.randn(n, 5, 8, 8, generator=g)
    a[:, :3] += 2 * latent
    b = torch.randn(n, 7, 4, 4, generator=g)
    b[:, 4:] += 2 * F.avg_pool2d(latent, 2)
    b = F.interpolate(b, size=(8, 8), mode="bilinear", align_corners=False)
    a = (a + offset * torch.arange(1, 6).view(1, 5, 1, 1)).float()
    b = (b + offset).float()
    return a, b


def _pearson(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Float64 reference on the materialised samples: (B*H*W, C) per group."""
    x = a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]).double().numpy()
    y = b.permute(0, 2, 3, 1).reshape(-1, b.shape[1]).double().numpy()
    x = x - x.mean(0)
    y = y - y.mean(0)
    return (x.T @ y) / np.outer(np.sqrt((x * x).sum(0)), np.sqrt((y * y).sum(0)))


def _fill(a, b, batch, **kw):
    acc = CrossCorrelation(**kw)
    for s in range(0, a.shape[0], batch):
        acc.update(a[s:s + batch], b[s:s + batch])
    return acc


@pytest.mark.parametrize("offset", [0.0, 1000.0])
@pytest.mark.parametrize("batch", [1, 3, 12])
def test_matches_float64_pearson_any_batch_size(batch, offset):
    a, b = _maps(offset=offset)
    ref = _pearson(a, b)
    assert np.abs(ref).max() > 0.5  # the planted signal is there
    acc = _fill(a, b, batch)
    assert acc.n == 12 * 64
    np.testing.assert_allclose(acc.correlation(), ref, rtol=0, atol=1e-6)
    # float32 centring rounds each sample by ~6e-8 of its spread: means/stds agree to ~1e-8
    np.testing.assert_allclose(acc.mean_a, a.double().mean((0, 2, 3)).numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(acc.std_b, b.double().permute(1, 0, 2, 3).reshape(7, -1)
                               .std(1, unbiased=False).numpy(), rtol=1e-7)


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_random_split_into_three_merged_accumulators(offset):
    a, b = _maps(n=20, offset=offset, seed=1)
    ref = _pearson(a, b)
    rng = np.random.default_rng(0)
    owner = rng.integers(0, 3, size=20)
    owner[:3] = [0, 1, 2]  # every part non-empty
    parts = []
    for p in range(3):
        idx = np.flatnonzero(owner == p)
        acc = CrossCorrelation()
        for s in range(0, len(idx), 2):  # each part has its own shift (its first batch's mean)
            acc.update(a[idx[s:s + 2]], b[idx[s:s + 2]])
        parts.append(acc)
    assert not np.allclose(parts[0].state_dict()["shift_a"], parts[1].state_dict()["shift_a"])
    merged = CrossCorrelation().merge(parts[0]).merge(parts[1]).merge(parts[2])
    assert merged.n == 20 * 64
    np.testing.assert_allclose(merged.correlation(), ref, rtol=0, atol=1e-6)


def test_large_batch_with_offset_stays_within_1e6():
    # 131 072 samples in one batch, units correlated at 0.999 around levels of 1000 and -500:
    # one float32 product over all samples is off by 1.4e-6 even centred (measured); in chunks
    # of 4096 by 5e-8.
    g = torch.Generator().manual_seed(3)
    base = torch.randn(128, 1, 32, 32, generator=g)
    a = (base + 0.03 * torch.randn(128, 3, 32, 32, generator=g) + 1000).float()
    b = (base + 0.03 * torch.randn(128, 2, 32, 32, generator=g) - 500).float()
    ref = _pearson(a, b)
    assert ref.min() > 0.998
    np.testing.assert_allclose(CrossCorrelation().update(a, b).correlation(), ref, rtol=0,
                               atol=1e-6)


def test_float64_product_and_tiny_chunks_and_lists_agree():
    a, b = _maps(offset=10.0)
    ref = _pearson(a, b)
    np.testing.assert_allclose(_fill(a, b, 5, matmul_dtype="float64").correlation(), ref, atol=1e-9)
    np.testing.assert_allclose(_fill(a, b, 5, chunk_size=7).correlation(), ref, atol=1e-6)
    # a list of layers is concatenated along units
    acc = CrossCorrelation().update([a[:, :2], a[:, 2:]], [b[:, :3], b[:, 3:]])
    np.testing.assert_allclose(acc.correlation(), ref, atol=1e-6)


def test_sample_matrix_input():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (x[:, :2] @ rng.normal(size=(2, 3)) + rng.normal(size=(300, 3))).astype(np.float32)
    ref = np.corrcoef(x.astype(np.float64).T, y.astype(np.float64).T)[:4, 4:]
    acc = CrossCorrelation().update(x[:100], y[:100]).update(x[100:], y[100:])
    np.testing.assert_allclose(acc.correlation(), ref, atol=1e-6)


def test_dead_units_give_zero_and_are_flagged():
    a, b = _maps(offset=0.0)
    a[:, 1] = 0.0
    a[:, 3] = 3.5
    b[:, 6] = -1000.0
    acc = _fill(a, b, 4)
    with pytest.warns(RuntimeWarning, match="zero variance"):
        r = acc.correlation()
    assert np.isfinite(r).all()
    np.testing.assert_array_equal(acc.dead_a, [False, True, False, True, False])
    np.testing.assert_array_equal(acc.dead_b, [False] * 6 + [True])
    assert (r[[1, 3]] == 0).all() and (r[:, 6] == 0).all()
    live = _pearson(a[:, [0, 2, 4]], b[:, :6])
    np.testing.assert_allclose(r[np.ix_([0, 2, 4], range(6))], live, atol=1e-6)


def test_single_sample_is_all_dead_not_nan():
    acc = CrossCorrelation().update(np.ones((1, 2), np.float32), np.zeros((1, 3), np.float32))
    with pytest.warns(RuntimeWarning):
        r = acc.correlation()
    np.testing.assert_array_equal(r, np.zeros((2, 3)))


def test_save_load_round_trip_and_resume(tmp_path):
    a, b = _maps(offset=100.0)
    acc = _fill(a[:7], b[:7], 3)
    path = acc.save(tmp_path / "acc.npz")
    back = CrossCorrelation.load(path)
    for key, value in acc.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value)
    np.testing.assert_array_equal(back.correlation(), acc.correlation())
    # resuming after a load equals the uninterrupted run
    back.update(a[7:], b[7:])
    np.testing.assert_allclose(back.correlation(), _pearson(a, b), atol=1e-6)
    empty = CrossCorrelation.load(CrossCorrelation().save(tmp_path / "empty.npz"))
    assert empty.n == 0
    np.testing.assert_allclose(empty.merge(acc).correlation(), acc.correlation(), atol=0)


def test_errors_name_the_problem():
    a, b = _maps()
    with pytest.raises(NotFittedError):
        CrossCorrelation().correlation()
    with pytest.raises(InputError, match="one spatial size"):
        CrossCorrelation().update(a, b[:, :, :4, :4])
    acc = CrossCorrelation().update(a[:2], b[:2])
    before = acc.state_dict()
    bad = a[2:4].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        acc.update(bad, b[2:4])
    for key, value in before.items():  # the failed batch left no trace
        np.testing.assert_array_equal(acc.state_dict()[key], value)
    with pytest.raises(InputError, match="units"):
        acc.update(a[:2, :4], b[:2])
    with pytest.raises(InputError, match="merge"):
        acc.merge(CrossCorrelation().update(a[:2, :4], b[:2]))
    with pytest.raises(InputError):
        CrossCorrelation(matmul_dtype="float16")


def test_column_block_equals_slice_of_full_table():
    a, b = _maps(offset=5.0)
    full = _fill(a, b, 4).correlation()
    block = _fill(a, b, 4, cols=(2, 5))
    assert (block.n_a, block.n_b) == (5, 3)
    np.testing.assert_allclose(block.correlation(), full[:, 2:5], atol=1e-6)
    with pytest.raises(InputError, match="merge"):
        block.merge(_fill(a, b, 4, cols=(0, 2)))


def test_plan_column_blocks_covers_and_fits():
    assert plan_column_blocks(100, 50, 10**9) == [(0, 50)]
    blocks = plan_column_blocks(100, 50, 100 * 7 * 20)
    assert blocks[0][0] == 0 and blocks[-1][1] == 50
    assert all(s1 == e0 for (_, e0), (s1, _) in zip(blocks, blocks[1:]))
    assert all((e - s) * 100 * 20 <= 100 * 7 * 20 for s, e in blocks)
    assert len(blocks) == 8  # ceil(50 / 7)
    with pytest.raises(InputError, match="too small"):
        plan_column_blocks(100, 50, 100)


def _reference_topk(values: np.ndarray, k: int):
    """Stable sort by (value desc, index asc), written independently of the module."""
    out_v, out_i = [], []
    for row in values:
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        order = [j for j in order if np.isfinite(row[j])][:k]
        out_i.append(order + [-1] * (k - len(order)))
        out_v.append([row[j] for j in order] + [-np.inf] * (k - len(order)))
    return np.array(out_v), np.array(out_i)


def test_topk_from_blocks_matches_full_table_with_ties_and_dead_units():
    rng = np.random.default_rng(0)
    corr = np.round(rng.uniform(-1, 1, size=(9, 13)), 1)  # many exact ties
    dead_a = np.zeros(9, bool)
    dead_a[4] = True
    dead_b = np.zeros(13, bool)
    dead_b[[0, 7]] = True
    corr[dead_a] = 0
    corr[:, dead_b] = 0
    masked = corr.copy()
    masked[dead_a] = -np.inf
    masked[:, dead_b] = -np.inf
    rv, ri = _reference_topk(masked, 4)
    cv, ci = _reference_topk(masked.T, 4)

    blocks = [(0, 5), (5, 6), (6, 13)]
    left = TopKPartners(9, 13, k=4)
    right = TopKPartners(9, 13, k=4)
    for n, (s, e) in enumerate(blocks):
        (left if n < 2 else right).update(corr[:, s:e], col_offset=s, dead_a=dead_a,
                                          dead_b=dead_b[s:e])
    assert not left.complete
    tp = left.merge(right)
    assert tp.complete
    np.testing.assert_array_equal(tp.row_index, ri)
    np.testing.assert_array_equal(tp.row_values, rv)
    np.testing.assert_array_equal(tp.col_index, ci)
    np.testing.assert_array_equal(tp.col_values, cv)
    back = TopKPartners(1, 1).load_state_dict(tp.state_dict())
    np.testing.assert_array_equal(back.col_index, ci)
    with pytest.raises(InputError, match="overlap"):
        tp.update(corr[:, :2])


def test_blocked_passes_give_the_full_table():
    """The memory-budgeted flow: one pass per column block, reduced to top-K partners."""
    a, b = _maps(offset=3.0)
    full = _fill(a, b, 12).correlation()
    blocks = plan_column_blocks(5, 7, 5 * 3 * CrossCorrelation.bytes_per_entry)
    assert len(blocks) == 3
    tp = TopKPartners(5, 7, k=2)
    for s, e in blocks:
        acc = _fill(a, b, 4, cols=(s, e))  # a new pass over the data per block
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tp.update(acc.correlation(), col_offset=s, dead_a=acc.dead_a, dead_b=acc.dead_b)
    ref_v, ref_i = _reference_topk(full, 2)
    np.testing.assert_array_equal(tp.row_index, ref_i)
    np.testing.assert_allclose(tp.row_values, ref_v, atol=1e-6)


def test_reduced_precision_matmul_setting_falls_back_to_float64():
    # "medium" lets oneDNN run float32 CPU matmuls in bf16 (TF32 on CUDA for "high"): the
    # accumulator must notice, keep the global setting as it is, and stay exact
    a, b = _maps(offset=50.0)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        with pytest.warns(RuntimeWarning, match="float64"):
            r = _fill(a, b, 6).correlation()
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)
    np.testing.assert_allclose(r, _pearson(a, b), atol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fill(a, b, 6)


# ----------------------------------------------------------------------------------------------
# layers at their own grids (resolution=...)


def _resized_reference(layers, size):
    """Each layer resized to `size` in float64 by F.interpolate (bilinear, antialiased when a
    side shrinks), concatenated along units."""
    out = []
    for x in layers:
        h, w = x.shape[-2:]
        out.append(F.interpolate(x.double(), size=size, mode="bilinear", align_corners=False,
                                 antialias=size[0] < h or size[1] < w))
    return torch.cat(out, dim=1)


def _zoo_layers(n=10, seed=0):
    """Layers finer than, equal to and coarser than a 12x12 grid (square and not), sharing a
    smooth signal; A's 4x4 and 6x6 layers and B's 6x6, 3x6 and 2x2 layers are coarse enough to
    be multiplied at their own grids."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 1, 3, 3, generator=g)

    def layer(c, h, w, level=0.0):
        x = torch.randn(n, c, h, w, generator=g) + level
        x[:, :2] += 3 * F.interpolate(latent, size=(h, w), mode="bilinear", align_corners=False)
        return x.float()

    a = [layer(3, 20, 20), layer(40, 6, 6, level=50.0), layer(4, 12, 12), layer(30, 4, 4),
         layer(25, 6, 6)]
    b = [layer(50, 6, 6, level=-20.0), layer(5, 12, 12), layer(36, 3, 6), layer(30, 2, 2),
         layer(3, 24, 16)]
    return a, b


def test_layers_at_their_own_grids_match_resized_float64_pearson():
    from zoolens.stats import _native_grids

    size = (12, 12)
    a, b = _zoo_layers()
    # the fast path is exercised on both sides, including a same-grid pair (6x6 with 6x6)
    assert _native_grids([tuple(t.shape[-2:]) for t in a], [t.shape[1] for t in a],
                         size) == [(6, 6), (4, 4)]
    assert _native_grids([tuple(t.shape[-2:]) for t in b], [t.shape[1] for t in b],
                         size) == [(6, 6), (3, 6), (2, 2)]
    ref = _pearson(_resized_reference(a, size), _resized_reference(b, size))
    assert np.abs(ref).max() > 0.8
    for batch in (3, 10):
        acc = CrossCorrelation(resolution=12)
        for s in range(0, 10, batch):
            acc.update([t[s:s + batch] for t in a], [t[s:s + batch] for t in b])
        assert acc.n == 10 * 144
        np.testing.assert_allclose(acc.correlation(), ref, rtol=0, atol=1e-6)
    acc64 = CrossCorrelation(resolution=12, matmul_dtype="float64").update(a, b)
    np.testing.assert_allclose(acc64.correlation(), ref, rtol=0, atol=1e-12)
    # same moments as the resized maps
    resized_a = _resized_reference(a, size)
    np.testing.assert_allclose(acc64.mean_a, resized_a.mean((0, 2, 3)).numpy(), atol=1e-12)
    np.testing.assert_allclose(acc64.std_a, resized_a.permute(1, 0, 2, 3).reshape(102, -1)
                               .std(1, unbiased=False).numpy(), rtol=1e-10)
    # a column block cutting through layers, and accumulators of two halves merged
    block = CrossCorrelation(resolution=12, cols=(40, 100)).update(a, b)
    np.testing.assert_allclose(block.correlation(), ref[:, 40:100], atol=1e-6)
    halves = [CrossCorrelation(resolution=12).update([t[i::2] for t in a], [t[i::2] for t in b])
              for i in (0, 1)]
    np.testing.assert_allclose(halves[0].merge(halves[1]).correlation(), ref, atol=1e-6)


def test_own_grid_dead_units_and_resolution_bookkeeping(tmp_path):
    a, b = _zoo_layers(n=4, seed=1)
    a[1][:, 5] = 7.0  # a constant unit in a layer multiplied at its own 6x6 grid
    b[3][:, 0] = 0.0
    acc = CrossCorrelation(resolution=(12, 12)).update(a, b)
    with pytest.warns(RuntimeWarning, match="zero variance"):
        r = acc.correlation()
    assert np.isfinite(r).all()
    assert np.flatnonzero(acc.dead_a).tolist() == [3 + 5]
    assert np.flatnonzero(acc.dead_b).tolist() == [50 + 5 + 36]
    back = CrossCorrelation.load(acc.save(tmp_path / "acc.npz"))
    assert back.resolution == (12, 12)
    with pytest.raises(InputError, match="resolutions"):
        back.merge(CrossCorrelation(resolution=8).update(a, b))
    with pytest.raises(InputError, match="one spatial size"):
        CrossCorrelation().update(a, b)


def test_resize_maps_is_interpolate_as_two_products():
    from zoolens.resize import interpolation_matrix, resize_maps

    g = torch.Generator().manual_seed(0)
    for (h, w), size in [((5, 7), (12, 9)), ((20, 20), (12, 12)), ((24, 6), (12, 12)),
                         ((3, 3), (3, 8))]:
        x = torch.randn(2, 3, h, w, generator=g, dtype=torch.float64)
        ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                            antialias=size[0] < h or size[1] < w)
        np.testing.assert_allclose(resize_maps(x, size).numpy(), ref.numpy(), atol=1e-12)
        m = interpolation_matrix(h, size[0], other=(w, size[1]))
        assert m.shape == (size[0], h)
        np.testing.assert_allclose(m.sum(1).numpy(), 1.0, atol=1e-12)  # centring commutes


def test_prepared_batch_shared_by_accumulators_and_column_blocks():
    # what Rosetta mining does: each model's batch is prepared once and shared by its pairs,
    # B cut into column blocks that cross layer and grid boundaries
    a, b = _zoo_layers(n=6, seed=2)
    ref = _pearson(_resized_reference(a, (12, 12)), _resized_reference(b, (12, 12)))
    blocks = [(0, 37), (37, 90), (90, 124)]
    accs = [CrossCorrelation(resolution=12, cols=c) for c in blocks]
    full = CrossCorrelation(resolution=12)
    for s in (0, 3):
        side_a = full.prepare([t[s:s + 3] for t in a], "m0")
        side_b = full.prepare([t[s:s + 3] for t in b], "m1")
        full.update(side_a, side_b)
        for acc in accs:  # each takes its own column block of the shared b
            acc.update(side_a, side_b)
    np.testing.assert_allclose(full.correlation(), ref, atol=1e-6)
    for (start, stop), acc in zip(blocks, accs):
        assert acc.n_b == stop - start
        np.testing.assert_allclose(acc.correlation(), ref[:, start:stop], atol=1e-6)


def test_resized_layers_far_from_zero_keep_their_digits():
    # units at levels of 1000-5000 with a spread of 0.5, resized up and down to 32x32: resizing
    # before centring would round away ~3e-6 of the correlation in float32 (measured)
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(64, 1, 4, 4, generator=g)

    def layer(c, side, level):
        x = 0.5 * torch.randn(64, c, side, side, generator=g) + level
        x[:, :2] += F.interpolate(latent, size=(side, side), mode="bilinear",
                                  align_corners=False)
        return x.float()

    a = [layer(6, 32, 1000.0), layer(8, 8, -500.0), layer(5, 16, 3000.0), layer(4, 40, 2000.0)]
    b = [layer(7, 8, 1000.0), layer(4, 4, 200.0), layer(6, 32, 0.0), layer(3, 20, 5000.0)]
    ref = _pearson(_resized_reference(a, (32, 32)), _resized_reference(b, (32, 32)))
    assert np.abs(ref).max() > 0.8
    acc = CrossCorrelation(resolution=32)
    for s in range(0, 64, 16):
        acc.update([t[s:s + 16] for t in a], [t[s:s + 16] for t in b])
    np.testing.assert_allclose(acc.correlation(), ref, rtol=0, atol=1e-6)
