"""The command line: layers, extract with --json, errors that name the input."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

import zoolens
from zoolens.cli import app

from conftest import synthetic

runner = CliRunner()


def test_layers_json(tiny_cnn_file):
    res = runner.invoke(app, ["layers", f"file:{tiny_cnn_file}:tiny_cnn", "--json", "--select", "all"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    names = [layer["name"] for layer in data["layers"]]
    assert names[:3] == ["0.conv", "0.act", "0"]  # forward order: a block ends after its parts and data["input_size"] == [32, 32]
    assert data["blocks"] == ["0", "2", "3"]


def test_extract_json_and_resume(tmp_path, tiny_cnn_file, messy_dir):
    args = ["extract", "--model", f"file:{tiny_cnn_file}:tiny_cnn", "--images", str(messy_dir),
            "--layers", "blocks", "--out", str(tmp_path), "--no-pretrained", "--workers", "0",
            "--json", "--batch-size", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["extracted"] == 5 and len(summary["skipped"]) == 5
    assert json.loads((tmp_path / "extract.json").read_text()) == summary
    store = zoolens.open_store(tmp_path)
    before = np.array(store.features(store.models[0], "3"))
    res = runner.invoke(app, args)  # resuming a finished store does nothing and changes nothing
    assert res.exit_code == 0
    np.testing.assert_array_equal(zoolens.open_store(tmp_path).features(store.models[0], "3"), before)


def test_errors_are_one_clear_line(tmp_path):
    res = runner.invoke(app, ["extract", "--model", "timm:resnet_5000", "--images", synthetic(),
                              "--out", str(tmp_path), "--no-pretrained"])
    assert res.exit_code == 2 and "unknown timm model" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["extract", "--model", "timm:resnet18", "--images", str(tmp_path),
                              "--out", str(tmp_path / "o"), "--no-pretrained"])
    assert res.exit_code == 2 and "holds no images" in res.output
