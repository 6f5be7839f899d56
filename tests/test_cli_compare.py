"""`zoolens compare`: compare.json with the documented keys, a heatmap PNG, --json, errors."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from zoolens.analyses.similarity import CompareResult, compare
from zoolens.cli import app

runner = CliRunner()
VIT = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2"
IMAGES = "synthetic:scenes?n=12&size=32&seed=0"


def _args(*extra):
    return ["compare", "--images", IMAGES, "--no-pretrained", "--workers", "0",
            "--batch-size", "5", *extra]


def test_two_models_writes_json_and_png(tmp_path, tiny_cnn_file):
    cnn = f"file:{tiny_cnn_file}:tiny_cnn"
    out = tmp_path / "out"
    res = runner.invoke(app, _args("--model", cnn, "--model", VIT, "--layers", "blocks",
                                   "--layers-b", "blocks.1", "--metric", "cka", "--out", str(out),
                                   "--json"))
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    saved = json.loads((out / "compare.json").read_text())
    assert printed == saved
    assert {"metric", "layers_a", "layers_b", "matrix"} <= set(saved)
    assert saved["metric"] == "cka" and saved["layers_a"] == ["0", "2", "3"]
    assert saved["layers_b"] == ["blocks.1"] and np.shape(saved["matrix"]) == (3, 1)
    # The same numbers as the library call.
    lib = compare(cnn, VIT, IMAGES, layers_a="blocks", layers_b="blocks.1", batch_size=5,
                  pretrained=False, num_workers=0, progress=False)
    np.testing.assert_allclose(saved["matrix"], lib.matrix, atol=1e-12)
    assert CompareResult.from_json(saved).layers_a == lib.layers_a
    with Image.open(out / "compare.png") as im:
        assert im.format == "PNG"


def test_one_model_against_itself_mknn(tmp_path, tiny_cnn_file):
    res = runner.invoke(app, _args("--model", f"file:{tiny_cnn_file}:tiny_cnn", "--metric", "mknn",
                                   "--k", "3", "--out", str(tmp_path)))
    assert res.exit_code == 0, res.output
    assert res.stdout == ""  # without --json nothing goes to stdout
    saved = json.loads((tmp_path / "compare.json").read_text())
    m = np.array(saved["matrix"])
    assert saved["metric"] == "mknn" and saved["settings"]["k"] == 3
    assert saved["layers_a"] == saved["layers_b"] and np.allclose(np.diag(m), 1.0)
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_flat_features(tmp_path, tiny_cnn_file):
    res = runner.invoke(app, _args("--model", f"file:{tiny_cnn_file}:tiny_cnn", "--layers", "3",
                                   "--features", "flat", "--out", str(tmp_path), "--json"))
    assert res.exit_code == 0, res.output
    saved = json.loads(res.stdout)
    assert saved["settings"]["estimator"] == "minibatch_unbiased_cka"
    assert abs(saved["matrix"][0][0] - 1.0) < 1e-9


def test_errors_exit_2_with_one_line(tmp_path, tiny_cnn_file):
    cnn = f"file:{tiny_cnn_file}:tiny_cnn"
    res = runner.invoke(app, _args("--model", cnn, "--layers", "layer_nine", "--out", str(tmp_path)))
    assert res.exit_code == 2 and "layer_nine" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "compare.json").exists()
    res = runner.invoke(app, _args("--model", cnn, "--model", VIT, "--layers-b", "blocks.7",
                                   "--out", str(tmp_path)))
    assert res.exit_code == 2 and "blocks.7" in res.output
    res = runner.invoke(app, _args("--model", cnn, "--metric", "mknn", "--k", "12",
                                   "--out", str(tmp_path)))
    assert res.exit_code == 2 and "k=12" in res.output
    res = runner.invoke(app, _args("--model", cnn, "--metric", "rsa", "--out", str(tmp_path)))
    assert res.exit_code == 2 and "rsa" in res.output
    res = runner.invoke(app, _args("--model", cnn, "--model", cnn, "--model", VIT,
                                   "--out", str(tmp_path)))
    assert res.exit_code == 2 and "one or two" in res.output
