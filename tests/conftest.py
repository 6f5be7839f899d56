"""Shared fixtures: real photographs (scikit-image), bad files of every kind, tiny models."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

DATA = Path(__file__).parent / "data"


def _photo(name: str, size: int = 96) -> Image.Image:
    from skimage import data

    img = Image.fromarray(getattr(data, name)())
    return img.convert("RGB").resize((size, int(size * img.height / img.width)))


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """Three good photographs in nested folders (class subfolders)."""
    root = tmp_path_factory.mktemp("photos")
    for cls, name in [("cat", "chelsea"), ("cup", "coffee"), ("person", "astronaut")]:
        (root / cls).mkdir()
        _photo(name).save(root / cls / f"{name}.jpg", quality=92)
    return root


@pytest.fixture(scope="session")
def messy_dir(tmp_path_factory) -> Path:
    """Good photos, convertible modes, and every kind of unusable file."""
    root = tmp_path_factory.mktemp("messy")
    good = _photo("chelsea")
    good.save(root / "a_good.jpg", quality=92)
    _photo("rocket").save(root / "b_good.png")
    good.convert("L").save(root / "c_gray.png")
    good.convert("CMYK").save(root / "d_cmyk.jpg")
    rgba = good.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "e_alpha.png")
    full = (root / "a_good.jpg").read_bytes()
    (root / "f_truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "g_empty.png").write_bytes(b"")
    (root / "h_fake.jpg").write_text("this is not a jpeg")
    Image.new("RGB", (1, 1), (255, 0, 0)).save(root / "i_tiny.png")
    (root / "j_notes.txt").write_text("not an image")
    return root


MESSY_SKIPPED = {"f_truncated.jpg", "g_empty.png", "h_fake.jpg", "i_tiny.png", "j_notes.txt"}
MESSY_CONVERTED = {"c_gray.png": "L", "d_cmyk.jpg": "CMYK", "e_alpha.png": "RGBA"}


@pytest.fixture(scope="session")
def tiny_cnn_file(tmp_path_factory) -> Path:
    """A user's zoo file: a small CNN at 32 px with its own preprocessing size."""
    path = tmp_path_factory.mktemp("userzoo") / "zoo.py"
    path.write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class Block(nn.Module):
            def __init__(self, cin, cout):
                super().__init__()
                self.conv = nn.Conv2d(cin, cout, 3, padding=1)
                self.act = nn.ReLU()
            def forward(self, x):
                return self.act(self.conv(x))

        def tiny_cnn(pretrained=True):
            torch.manual_seed(0)
            net = nn.Sequential(Block(3, 8), nn.MaxPool2d(2), Block(8, 16), Block(16, 16),
                                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
            return {"module": net, "input_size": 32}
    '''))
    return path


@pytest.fixture(scope="session")
def open_clip_tiny():
    """Registers a tiny open_clip architecture (real open_clip code, small widths)."""
    open_clip = pytest.importorskip("open_clip")
    open_clip.add_model_config(DATA / "tiny_clip.json")
    return "tiny_clip"


@pytest.fixture(scope="session")
def hf_dinov2_dir(tmp_path_factory) -> Path:
    """A tiny DINOv2 with 4 registers, saved with an image processor: loads through
    transformers' own from_pretrained path, offline."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf_dinov2_reg")
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8, num_register_tokens=4)
    torch.manual_seed(0)
    transformers.Dinov2WithRegistersModel(config).save_pretrained(root)
    transformers.BitImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(root)
    return root


def synthetic(n: int = 8, size: int = 32) -> str:
    return f"synthetic:scenes?n={n}&size={size}&seed=0"


@pytest.fixture(scope="session")
def diffusers_unet_dir(tmp_path_factory) -> Path:
    """A tiny pixel-space UNet2DModel and its scheduler, saved as a pipeline folder."""
    diffusers = pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("ddpm_tiny")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 32), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(root / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    return root


@pytest.fixture
def forward_calls(monkeypatch):
    """Batch sizes of the engine's model forward passes: every image reaching a model goes
    through it (a model's dry run describing its layers does not)."""
    calls = []
    import zoolens.engine

    original = zoolens.engine._forward

    def counting(model, x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(model, x, *args, **kwargs)

    monkeypatch.setattr(zoolens.engine, "_forward", counting)
    return calls
