"""`zoolens probe`: class folders in, leaderboard out, probe.json == --json, bad files skipped,
errors one clear line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from zoolens.cli import app

from conftest import synthetic

runner = CliRunner()

HUES = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 230),
        "yellow": (230, 220, 30), "magenta": (210, 40, 210), "cyan": (30, 210, 220)}


def _class_folder(root, per_class: int, seed: int):
    """Six classes of flat-coloured 32 px images with noise: a planted, easy signal."""
    rng = np.random.default_rng(seed)
    for name, rgb in HUES.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(np.array(rgb) + rng.normal(0, 12, (32, 32, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    train = _class_folder(root / "train", 5, 0)
    (train / "red" / "broken.png").write_bytes(b"not a png")
    return train, _class_folder(root / "test", 3, 1)


def test_probe_cli_json_leaderboard_and_skips(tmp_path, folders, tiny_cnn_file):
    train, test = folders
    out = tmp_path / "run"
    args = ["probe", "--model", f"file:{tiny_cnn_file}:tiny_cnn", "--train", str(train),
            "--test", str(test), "--method", "knn,linear,logme", "--k", "3,5", "--pool", "mean",
            "--out", str(out), "--no-pretrained", "--workers", "0", "--batch-size", "8",
            "--epochs", "30", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary == json.loads((out / "probe.json").read_text())
    assert "leaderboard" in res.stderr and "probe.json" in res.stderr
    assert (out / "probe_curves.png").stat().st_size > 0
    assert [s["id"] for s in summary["skipped"]["train"]] == ["red/broken.png"]
    assert summary["settings"]["k"] == [3, 5] and summary["settings"]["pool"] == "mean"
    assert summary["settings"]["classes"] == sorted(HUES)
    rows = summary["results"]
    acc = [r for r in rows if r["method"] in ("knn", "linear")]
    assert {r["layer"] for r in acc} == {"0", "2", "3"}
    for r in acc:  # six classes: top-5 is reported, and top-5 >= top-1
        assert r["n_train"] == 30 and r["n_test"] == 18
        assert 0 <= r["top1"] <= r["top5"] <= 1
    assert all(r["epochs"] == 30 for r in rows if r["method"] == "linear")
    board = {b["method"]: b for b in summary["leaderboard"]}
    assert set(board) == {"knn", "linear", "logme"}
    # Flat colours are easy even for random convolutions: k-NN on the best layer gets them.
    assert board["knn"]["top1"] >= 0.8

    # A second run with another method reuses the features (nothing to extract, same rows).
    res2 = runner.invoke(app, args[:args.index("--method") + 1] + ["knn"]
                         + args[args.index("--method") + 2:])
    assert res2.exit_code == 0, res2.output
    again = json.loads(res2.stdout)
    assert [r["top1"] for r in again["results"]] == \
        [r["top1"] for r in rows if r["method"] == "knn"]


def test_probe_cli_errors_are_one_clear_line(tmp_path, messy_dir, tiny_cnn_file):
    model = f"file:{tiny_cnn_file}:tiny_cnn"
    base = ["probe", "--model", model, "--out", str(tmp_path), "--no-pretrained",
            "--workers", "0"]
    res = runner.invoke(app, base + ["--train", synthetic(), "--test", synthetic(),
                                     "--method", "knn,svm"])
    assert res.exit_code == 2 and "use any of knn, linear, zeroshot, logme" in res.output
    res = runner.invoke(app, base + ["--train", str(messy_dir), "--test", synthetic()])
    assert res.exit_code == 2 and "has no labels" in res.output
    res = runner.invoke(app, base + ["--train", synthetic(), "--test", synthetic(),
                                     "--k", "0,5"])
    assert res.exit_code == 2 and "positive integers" in res.output
    assert "Traceback" not in res.output
