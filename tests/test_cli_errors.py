"""What a new user hits first: bad flags end in one line naming the flag (exit 2, nothing
created), and the small things — --version, listing, wide names, warnings, timings — work."""

from __future__ import annotations



import pytest
from typer.testing import CliRunner

from zoolens.cli import app

from conftest import synthetic

runner = CliRunner()
VIT = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2"


def _one_error_line(res, *words):
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    for w in words:
        assert w in errors[0], (w, errors[0])


@pytest.mark.parametrize("flags, words", [
    (["-b", "0"], ["--batch-size 0"]),
    (["--workers", "-1"], ["--workers -1"]),
    (["--device", "tpu"], ["--device 'tpu'", "cpu, cuda"]),
    (["--device", "cuda:0"], ["--device cuda:0", "no CUDA"]),
    (["--chunk-size", "3", "-b", "2"], ["chunk size 3", "multiple of the batch size 2"]),
])
def test_extract_flags(tmp_path, flags, words):
    if "cuda" in str(flags):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    out = tmp_path / "store"
    res = runner.invoke(app, ["extract", "-m", VIT, "-i", synthetic(4, 32), "-o", str(out),
                              "--no-pretrained", *flags])
    _one_error_line(res, *words)
    assert not out.exists()  # nothing created


def test_out_is_a_file(tmp_path):
    target = tmp_path / "taken.txt"
    target.write_text("mine")
    res = runner.invoke(app, ["extract", "-m", VIT, "-i", synthetic(4, 32), "-o", str(target),
                              "--no-pretrained"])
    _one_error_line(res, "--out", "is a file")
    assert target.read_text() == "mine"


@pytest.mark.parametrize("flags, words", [
    (["--max-memory", "lots"], ["--max-memory 'lots'", "4GiB"]),
    (["--resolution", "0"], ["--resolution 0"]),
    (["--relaxed", "--k", "0"], ["--k 0"]),
    (["--min-correlation", "2"], ["--min-correlation 2"]),
])
def test_rosetta_flags_are_checked_before_any_pass(tmp_path, flags, words):
    out = tmp_path / "r"
    res = runner.invoke(app, ["rosetta", "-m", VIT, "-m", VIT.replace("depth=2", "depth=3"),
                              "-i", synthetic(4, 32), "-o", str(out), "--no-pretrained",
                              *flags])
    _one_error_line(res, *words)
    assert not out.exists()


def test_discover_and_visualize_name_their_flags(tmp_path):
    base = ["-m", VIT, "-i", synthetic(2, 32), "-o", str(tmp_path / "d"), "--no-pretrained",
            "--workers", "0"]
    _one_error_line(runner.invoke(app, ["discover", *base, "--objects", "0"]), "--objects 0")
    _one_error_line(runner.invoke(app, ["discover", *base, "--tau", "1.5"]), "--tau 1.5")
    _one_error_line(runner.invoke(app, ["visualize", *base, "--kind", "saliency"]),
                    "--kind 'saliency'", "pca, attention")
    _one_error_line(runner.invoke(app, ["discover", *base, "--features", "values"]),
                    "--features 'values'")


def test_zeroshot_without_a_text_tower_is_an_error(tmp_path):
    res = runner.invoke(app, ["probe", "-m", VIT, "--train", synthetic(8, 32), "--test",
                              synthetic(4, 32), "-o", str(tmp_path), "--method", "zeroshot",
                              "--no-pretrained", "--workers", "0"])
    _one_error_line(res, "no text tower")


def test_version_listing_and_elapsed_time(tmp_path):
    from zoolens import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"zoolens {__version__}"
    res = runner.invoke(app, ["models", "timm:resnet18"])
    assert res.exit_code == 0 and "timm:resnet18\n" in res.output
    res = runner.invoke(app, ["models", "timm:no_such_net*"])
    assert res.exit_code == 0 and "no model matches" in res.output
    res = runner.invoke(app, ["extract", "-m", VIT, "-i", synthetic(4, 32), "-o",
                              str(tmp_path), "--no-pretrained", "--workers", "0"])
    assert res.exit_code == 0 and "took " in res.output


def test_layer_names_are_never_truncated_at_80_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    res = runner.invoke(app, ["layers", VIT, "--no-pretrained"], env={"COLUMNS": "80"})
    assert res.exit_code == 0
    text = "".join(ch for ch in res.output if ch not in "│┃ \n")  # folded names, joined again
    for name in ("blocks.1.attn.qkv", "blocks.0.mlp.fc2", "patch_embed.proj"):
        assert name.replace(" ", "") in text, name
    assert "…" not in res.output


def test_warnings_are_log_lines_not_source_code(tmp_path, open_clip_tiny):
    # open_clip's attention has no key module: discover warns that it cuts the tokens instead
    res = runner.invoke(app, ["discover", "-m", f"open_clip:{open_clip_tiny}", "-i",
                              synthetic(2, 32), "-o", str(tmp_path), "--no-pretrained",
                              "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "cut its output tokens instead" in " ".join(res.output.split())
    assert "warnings.warn(" not in res.output and ".py:" not in res.output


def test_the_run_summary_adds_up(tmp_path, tiny_cnn_file, messy_dir):
    res = runner.invoke(app, ["extract", "-m", f"file:{tiny_cnn_file}:tiny_cnn", "-i",
                              str(messy_dir), "-o", str(tmp_path), "--no-pretrained",
                              "--workers", "0"])
    assert res.exit_code == 0
    done = " ".join(ln for ln in res.output.splitlines() if "done:" in ln or "skipped (" in ln)
    assert "5 of 10 files" in done and "5 skipped" in done, res.output



# --- the backend flags: checked before anything runs or is created (no Ray cluster needed)


@pytest.mark.parametrize("flags, words", [
    (["--backend", "spark"], ["--backend 'spark'", "local, ray"]),
    (["--address", "auto"], ["--address applies to --backend ray"]),
    (["--gpus-per-worker", "1"], ["--gpus-per-worker applies to --backend ray"]),
    (["--backend", "ray", "--gpus-per-worker", "-1"], ["--gpus-per-worker -1", "0 or more"]),
    (["--backend", "ray", "--workers", "0"], ["--workers 0", "at least 1 model worker"]),
    (["--backend", "ray", "--address", "127.0.0.1:9"], ["--address 127.0.0.1:9",
                                                         "nothing answers", "ray start --head"]),
    (["--backend", "ray", "--address", "headnode"], ["--address 'headnode'", "HOST:PORT"]),
])
def test_backend_flags(tmp_path, flags, words):
    out = tmp_path / "store"
    res = runner.invoke(app, ["extract", "-m", VIT, "-i", synthetic(4, 32), "-o", str(out),
                              "--no-pretrained", *flags])
    _one_error_line(res, *words)
    assert not out.exists()  # nothing created


def test_backend_ray_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as without Ray
    out = tmp_path / "store"
    res = runner.invoke(app, ["extract", "-m", VIT, "-i", synthetic(4, 32), "-o", str(out),
                              "--no-pretrained", "--backend", "ray"])
    _one_error_line(res, "--backend ray needs Ray", "pip install 'zoolens[ray]'")
    assert not out.exists()


@pytest.mark.parametrize("command", ["extract", "rosetta", "compare", "probe", "discover",
                                     "visualize", "layerstats", "demo"])
def test_every_command_that_runs_models_takes_the_backend_flags(command):
    res = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert res.exit_code == 0
    for flag in ("--backend", "--address", "--gpus-per-worker"):
        assert flag in res.output, (command, flag)
    assert ("--workers" in res.output) == (command != "demo")


def test_a_block_slice_past_the_end_is_an_error_not_all_blocks():
    import zoolens
    from zoolens.errors import UnknownLayerError

    model = zoolens.load(VIT, pretrained=False)
    assert model.select("blocks[-2:]") == ["blocks.0", "blocks.1"]
    with pytest.raises(UnknownLayerError, match=r"has 2 blocks \(indices -2..1\)"):
        model.select("blocks[-99:]")
    with pytest.raises(UnknownLayerError, match="has 2 blocks"):
        model.select("blocks[5]")


def test_small_runs_keep_finished_chunks():
    from zoolens.store import default_chunk_size

    assert default_chunk_size(100, 32) == 32  # 4 chunks: an interruption keeps the first ones
    assert default_chunk_size(5000, 32) == 256
    assert default_chunk_size(40, 4) == 8


def test_rerunning_leaves_no_stale_outputs(tmp_path, tiny_cnn_file):
    """A store started over drops the old extraction's arrays; a Rosetta rerun drops concept
    figures the new run did not draw."""
    spec = f"file:{tiny_cnn_file}:tiny_cnn"
    base = ["extract", "-m", spec, "-i", synthetic(4, 32), "-o", str(tmp_path / "s"),
            "--no-pretrained", "--workers", "0"]
    assert runner.invoke(app, base + ["-l", "0,2"]).exit_code == 0
    old = {p.name for p in (tmp_path / "s").rglob("*.npy")}
    assert runner.invoke(app, base + ["-l", "3", "--overwrite"]).exit_code == 0
    new = {p.name for p in (tmp_path / "s").rglob("*.npy")}
    assert new == {"3.mean.npy", "sizes.npy"} and old - new == {"0.mean.npy", "2.mean.npy"}

    out = tmp_path / "r"
    args = ["rosetta", "-m", spec, "-m", VIT, "-i", synthetic(8, 32), "-l", "blocks", "-o",
            str(out), "--no-pretrained", "--workers", "0", "--relaxed"]
    assert runner.invoke(app, args + ["--concepts", "3"]).exit_code == 0
    drawn = sorted(p.name for p in (out / "concepts").glob("concept_*.png"))
    assert len(drawn) >= 2, drawn
    (out / "concepts" / "concept_99.png").write_bytes(b"stale")  # as an older run left it
    assert runner.invoke(app, args + ["--concepts", "1"]).exit_code == 0
    assert sorted(p.name for p in (out / "concepts").glob("concept_*.png")) == drawn[:1]
