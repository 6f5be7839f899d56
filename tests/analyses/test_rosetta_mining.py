"""Rosetta mining end to end: exact correlations, planted units found across resolutions,
generators as zoo members, the memory-budgeted path, resumption, and the CLI."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import zoolens
import zoolens.engine
import zoolens.plan
from zoolens.analyses.rosetta import mining
from zoolens.cli import app

IMAGES = "synthetic:scenes?n=24&size=32&seed=1"
PLANTED_A, PLANTED_B, DEAD_B = 2, 5, 7


@pytest.fixture(scope="module")
def zoo_file(tmp_path_factory):
    """Two CNNs seeing the image at strides 2 and 4; channel PLANTED_A of A and PLANTED_B of B
    both compute redness (R - (G + B) / 2) averaged over their receptive field; B's channel
    DEAD_B is constant. A generator maps a latent to a 32-px image."""
    path = tmp_path_factory.mktemp("rosetta_zoo") / "zoo.py"
    path.write_text(textwrap.dedent(f'''
        import torch
        from torch import nn

        def _cnn(stride, planted, channels, seed, dead=None):
            torch.manual_seed(seed)
            conv = nn.Conv2d(3, channels, kernel_size=stride, stride=stride)
            with torch.no_grad():
                conv.weight[planted] = 0
                conv.weight[planted, 0] = 1.0 / stride ** 2
                conv.weight[planted, 1:] = -0.5 / stride ** 2
                conv.bias[planted] = 0
                if dead is not None:
                    conv.weight[dead] = 0
                    conv.bias[dead] = 1.0
            body = nn.Sequential()
            body.add_module("conv", conv)
            body.add_module("act", nn.Tanh())
            return {{"module": body, "input_size": 32}}

        def model_a(pretrained=True):
            return _cnn(2, {PLANTED_A}, 6, seed=1)

        def model_b(pretrained=True):
            return _cnn(4, {PLANTED_B}, 8, seed=2, dead={DEAD_B})

        class Gen(nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(3)
                self.fc = nn.Linear(8, 16 * 8 * 8)
                self.up = nn.Sequential(nn.Upsample(scale_factor=4), nn.Conv2d(16, 3, 3, padding=1))
            def forward(self, z):
                return torch.tanh(self.up(self.fc(z).view(-1, 16, 8, 8)))

        def generator(pretrained=True):
            return {{"module": Gen(), "latent_shape": (8,), "output_range": (-1, 1)}}
    '''))
    return path


def _specs(zoo_file):
    return f"file:{zoo_file}:model_a", f"file:{zoo_file}:model_b"


def _numpy_table(zoo_file, resolution=16):
    """Float64 Pearson over (image, position) of the tanh maps, resized by F.interpolate."""
    maps = []
    for spec in _specs(zoo_file):
        model = zoolens.load(spec, device="cpu")
        src = zoolens.open_source(IMAGES)
        x = torch.stack([model.preprocess(src.decode(i).image) for i in range(len(src))])
        with torch.no_grad():
            y = model.module(x)
        if y.shape[-1] != resolution:
            y = F.interpolate(y, size=(resolution, resolution), mode="bilinear",
                              align_corners=False, antialias=y.shape[-1] > resolution)
        maps.append(y.permute(1, 0, 2, 3).reshape(y.shape[1], -1).double().numpy())
    a, b = maps
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        table = (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
    return np.nan_to_num(table)


def _mine(zoo_file, **kw):
    kw = {"layers": "act", "pretrained": False, "num_workers": 0, "progress": False,
          "concepts": 2, **kw}
    return zoolens.rosetta(list(_specs(zoo_file)), IMAGES, **kw)


def test_correlations_are_exact_and_planted_units_are_best_buddies(zoo_file):
    table = _numpy_table(zoo_file)
    a_id, b_id = (f"{s}/act:{c}" for s, c in zip(_specs(zoo_file), (PLANTED_A, PLANTED_B)))
    for batch_size in (1, 7):
        result = _mine(zoo_file, batch_size=batch_size)
        assert result.resolution == (16, 16) and result.images == 24
        buddies = next(iter(result.pairs.values()))
        live = table.copy()
        live[:, DEAD_B] = -np.inf
        expected = {(i, int(np.argmax(live[i]))) for i in range(6)
                    if int(np.argmax(live[:, int(np.argmax(live[i]))])) == i}
        got = {(int(p["units"][0].rsplit(":", 1)[1]), int(p["units"][1].rsplit(":", 1)[1]))
               for p in buddies}
        assert got == expected  # strict = mutual argmax of the NumPy table
        for p in buddies:
            i, j = (int(u.rsplit(":", 1)[1]) for u in p["units"])
            assert abs(p["correlation"] - table[i, j]) < 1e-6
        planted = [p for p in buddies if p["units"][0] == a_id]
        assert planted and planted[0]["units"][1] == b_id and planted[0]["correlation"] > 0.9
        assert not [p for p in buddies if p["units"][1] == b_id and p["units"][0] != a_id]
        assert result.dead_units[_specs(zoo_file)[1]] == [f"{_specs(zoo_file)[1]}/act:{DEAD_B}"]
        assert all(f":{DEAD_B}" not in p["units"][1] for p in buddies)


def test_memory_budget_splits_into_passes_with_the_same_answer(zoo_file):
    full = _mine(zoo_file, concepts=0)
    blocked = _mine(zoo_file, concepts=0, max_memory=6 * 3 * 20)  # 3 B-columns per pass
    assert blocked.settings["blocked"] and blocked.settings["passes"] == 3
    assert [s["units"] for s in full.sets] == [s["units"] for s in blocked.sets]
    full_pairs, blocked_pairs = list(full.pairs.values())[0], list(blocked.pairs.values())[0]
    assert [p["units"] for p in full_pairs] == [p["units"] for p in blocked_pairs]
    np.testing.assert_allclose([p["correlation"] for p in full_pairs],
                               [p["correlation"] for p in blocked_pairs], atol=1e-6)


def test_interrupted_run_resumes_to_the_same_result(zoo_file, tmp_path, monkeypatch):
    monkeypatch.setattr(mining, "_CHECKPOINT_EVERY", 8)
    reference = _mine(zoo_file, out=tmp_path / "ref", batch_size=4)
    real_forward = zoolens.engine._forward
    calls = {"n": 0}

    def flaky(*args, **kw):  # two models per batch: call 7 is the 4th batch, 12 images in
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real_forward(*args, **kw)

    monkeypatch.setattr(zoolens.engine, "_forward", flaky)
    with pytest.raises(KeyboardInterrupt):
        _mine(zoo_file, out=tmp_path / "cut", batch_size=4)
    saved = torch.load(tmp_path / "cut" / "state" / "pass0.pt", weights_only=False)
    assert saved["done"] == list(range(8))  # the checkpoint after 8 images
    monkeypatch.setattr(zoolens.engine, "_forward", real_forward)
    calls["n"] = 0
    resumed = _mine(zoo_file, out=tmp_path / "cut", batch_size=4)
    assert resumed.sets == reference.sets and resumed.images == 24
    for (k1, v1), (k2, v2) in zip(reference.pairs.items(), resumed.pairs.items()):
        assert k1 == k2
        np.testing.assert_allclose([p["correlation"] for p in v1],
                                   [p["correlation"] for p in v2], atol=1e-12)


def test_generator_is_the_source_and_the_anchor(zoo_file, tmp_path):
    gen_spec = f"file:{zoo_file}:generator"
    result = zoolens.rosetta([_specs(zoo_file)[0]], generator=gen_spec, n_generated=12,
                             layers={gen_spec: "up.1", _specs(zoo_file)[0]: "act"},
                             pretrained=False, num_workers=0, progress=False, out=tmp_path)
    assert result.models[0] == gen_spec and result.settings["anchor"] == gen_spec
    assert result.images == 12 and result.sets
    assert all(s["units"][0].startswith(gen_spec + "/up.1:") for s in result.sets)
    saved = json.loads((tmp_path / "rosetta.json").read_text())
    assert saved["settings"]["source"].startswith("generator:")
    # a sample drawn alone equals the same sample drawn in a batch
    gen = zoolens.load(gen_spec, device="cpu")
    from zoolens.sources.generated import GeneratedImages
    src = GeneratedImages(gen, n=4, seed=0)
    with torch.no_grad():
        batch = gen.to_images(gen.forward(src.latents([0, 1, 2, 3])))
    assert np.array_equal(np.asarray(batch[2]), np.asarray(src.draw(2)))


def test_cli_writes_the_documented_json(zoo_file, tmp_path):
    a, b = _specs(zoo_file)
    res = CliRunner().invoke(app, ["rosetta", "-m", a, "-m", b, "-i", IMAGES, "-l", "act",
                                   "-o", str(tmp_path), "--no-pretrained", "--workers", "0",
                                   "--concepts", "2", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    for key in ("models", "images", "resolution", "units", "pairs", "sets", "concepts",
                "dead_units", "skipped"):
        assert key in data
    assert data["units"] == {a: 6, b: 8}
    corr = [p["correlation"] for p in data["pairs"][0]["buddies"]]
    assert corr == sorted(corr, reverse=True)
    assert all((tmp_path / c["figure"]).exists() for c in data["concepts"])
    res = CliRunner().invoke(app, ["rosetta", "-m", a, "-i", IMAGES, "-o", str(tmp_path),
                                   "--no-pretrained"])
    assert res.exit_code == 2 and "at least two" in res.output
