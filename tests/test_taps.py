"""Taps: layouts, batch-axis detection, pooling, selectors — against hand-made tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoolens.errors import InputError, UnknownLayerError
from zoolens.taps import describe_output, find_blocks, first_tensor, pool, select_layers


def test_sequence_first_tokens_are_detected_and_pooled():
    b, t, d, prefix = 2, 1 + 9, 6, 1
    batch_first = torch.randn(b, t, d)
    seq_first = batch_first.transpose(0, 1).contiguous()  # (T, B, D), as old open_clip emits
    info = describe_output("blk", seq_first, b, input_size=(24, 24), prefix_tokens=prefix,
                           patch_grid=(3, 3))
    assert (info.batch_axis, info.layout, info.grid, info.prefix_tokens) == (1, "tokens", (3, 3), 1)
    expected_mean = batch_first[:, 1:].mean(dim=1)
    torch.testing.assert_close(pool(seq_first, info, "mean"), expected_mean)
    torch.testing.assert_close(pool(seq_first, info, "cls"), batch_first[:, 0])
    grid = pool(seq_first, info, "none")
    assert grid.shape == (b, d, 3, 3)
    # patch (row 1, col 2) is token 1 + 1*3 + 2
    torch.testing.assert_close(grid[:, :, 1, 2], batch_first[:, 1 + 5])


def test_tie_between_batch_and_token_counts_uses_the_hint():
    x = torch.randn(4, 4, 8)  # T == B == 4: only the adapter's hint can tell
    assert describe_output("a", x, 4, input_size=(8, 8)).batch_axis == 0
    assert describe_output("a", x, 4, input_size=(8, 8), sequence_first=True).batch_axis == 1


def test_channels_last_maps_and_vectors():
    nhwc = torch.randn(2, 5, 7, 3)
    info = describe_output("s", nhwc, 2, input_size=(20, 28), channels_last=True)
    assert (info.channels, info.grid, info.stride) == (3, (5, 7), 4.0)
    torch.testing.assert_close(pool(nhwc, info, "mean"), nhwc.mean(dim=(1, 2)))
    vec = torch.randn(2, 10)
    vinfo = describe_output("fc", vec, 2, input_size=(8, 8))
    assert vinfo.layout == "vector"
    torch.testing.assert_close(pool(vec, vinfo, "cls"), vec)
    with pytest.raises(InputError):
        pool(torch.randn(2, 10, 3), describe_output("x", torch.randn(2, 10, 3), 2,
                                                    input_size=(8, 8)), "none")


def test_cls_falls_back_to_mean_on_maps():
    x = torch.randn(2, 4, 3, 3)
    info = describe_output("m", x, 2, input_size=(9, 9))
    torch.testing.assert_close(pool(x, info, "cls"), x.mean(dim=(2, 3)))


def test_first_tensor_of_structured_outputs():
    t = torch.ones(1)
    assert first_tensor((None, t)) is t
    assert first_tensor({"last_hidden_state": t, "other": torch.zeros(1)}) is t
    assert first_tensor([[t]]) is t
    assert first_tensor(None) is None


def test_find_blocks_skips_primitive_repeats():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Linear(2, 2)

    net = nn.Sequential(nn.Sequential(nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1)),  # not blocks
                        nn.ModuleList([Block(), Block(), Block()]))
    assert find_blocks(net) == ["1.0", "1.1", "1.2"]


def test_selectors():
    infos = [describe_output(n, torch.randn(1, 4, 2, 2), 1, input_size=(4, 4))
             for n in ("stem", "layer1.0", "layer1.1", "layer2.0", "head")]
    blocks = ["layer1.0", "layer1.1", "layer2.0"]
    sel = lambda s: select_layers(infos, s, blocks=blocks)  # noqa: E731
    assert sel("blocks") == blocks
    assert sel("blocks[-1]") == ["layer2.0"]
    assert sel("blocks[:2]") == ["layer1.0", "layer1.1"]
    assert sel("head,layer1.*") == ["layer1.0", "layer1.1", "head"]  # model order
    assert sel("all") == ["stem", "layer1.0", "layer1.1", "layer2.0", "head"]
    with pytest.raises(UnknownLayerError, match="did you mean .*layer1.0"):
        sel("layer1.O")
    with pytest.raises(UnknownLayerError, match="unknown layer 'x.*'"):
        sel("x.*")
