"""`layerstats`: per-unit moments equal a float64 NumPy reference over every (image, position)
sample, a planted constant unit is reported dead, and the CLI line and report section work."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import zoolens
from zoolens.analyses.layerstats import layerstats
from zoolens.cli import app
from zoolens.report.html import render_report

IMAGES = "synthetic:scenes?n=10&size=32&seed=5"

ZOO = '''
import torch
from torch import nn

def cnn(pretrained=True):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight[4] = 0
        conv.bias[4] = 2.5  # unit 4: constant, dead
    return {"module": nn.Sequential(conv, nn.ReLU()), "input_size": 32}
'''


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("lszoo") / "zoo.py"
    path.write_text(textwrap.dedent(ZOO))
    return f"file:{path}:cnn"


def test_moments_equal_numpy_and_dead_units_are_found(spec, tmp_path):
    res = layerstats(spec, IMAGES, layers="0,1", batch_size=3, num_workers=0, progress=False,
                     out=tmp_path)
    model = zoolens.load(spec, device="cpu")
    src = zoolens.open_source(IMAGES)
    x = torch.stack([model.preprocess(src.decode(i).image) for i in range(len(src))])
    with torch.no_grad():
        conv = model.module[0](x).double().numpy()
    samples = conv.transpose(0, 2, 3, 1).reshape(-1, 5)  # (images x positions, units)
    arrays = np.load(tmp_path / "layerstats.npz")
    np.testing.assert_allclose(arrays[f"{spec}/0/mean"], samples.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(arrays[f"{spec}/0/std"], samples.std(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(arrays[f"{spec}/1/positive"], (samples > 0).mean(0))
    np.testing.assert_allclose(arrays[f"{spec}/0/max"], samples.max(0), rtol=1e-6)
    rows = {r["layer"]: r for r in res.layers[spec]}
    assert rows["0"]["dead"] == [f"{spec}/0:4"] and rows["0"]["samples"] == 10 * 16 * 16
    assert json.loads((tmp_path / "layerstats.json").read_text())["analysis"] == "layerstats"
    page = render_report(tmp_path, expected=[])
    assert "Layer statistics" in page.html and "2 layers, 2 dead units" in page.html
    assert ": 2: 0, 1</td>" in page.html  # the layers, in the table of runs


def test_the_command_is_made_from_the_function(spec, tmp_path):
    res = CliRunner().invoke(app, ["layerstats", "-m", spec, "-i", IMAGES, "-l", "0",
                                   "-o", str(tmp_path), "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data == json.loads((tmp_path / "layerstats.json").read_text())
    assert data["layers"][spec][0]["dead"] == [f"{spec}/0:4"]
    res = CliRunner().invoke(app, ["layerstats", "-m", spec, "-i", IMAGES, "-o",
                                   str(tmp_path / "x"), "-b", "0"])
    assert res.exit_code == 2 and "--batch-size 0" in res.output
    assert not (tmp_path / "x").exists()
