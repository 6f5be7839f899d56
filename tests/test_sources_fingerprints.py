"""Per-item fingerprints (issue 15, item 2): a store keyed by names alone cannot notice an
image replaced under the same name; these change when an item's content does."""

from __future__ import annotations

import hashlib
import os
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import zoolens
from zoolens.sources import BadImage, Decoded, ImageSource, SyntheticScenes, file_content_hash, open_source
from zoolens.sources.generated import GeneratedImages
from zoolens.sources.memory import TensorSource

T0 = 1_600_000_000_000_000_000  # a fixed mtime (ns): file systems' clocks tick coarsely


def _png(path, colour, size=16):
    Image.new("RGB", (size, size), colour).save(path)
    os.utime(path, ns=(T0, T0))


def test_file_fingerprints_change_when_a_file_is_replaced(tmp_path):
    for name, colour in [("a.png", (255, 0, 0)), ("b.png", (0, 255, 0))]:
        _png(tmp_path / name, colour)
    src = open_source(tmp_path)
    before = src.item_fingerprints()
    assert before == [src.item_fingerprint(0), src.item_fingerprint(1)]
    assert open_source(tmp_path).item_fingerprints() == before  # stable
    _png(tmp_path / "b.png", (0, 255, 0), size=24)  # other content, same name, same mtime
    after = src.item_fingerprints()
    assert after[0] == before[0] and after[1] != before[1]
    os.utime(tmp_path / "a.png", ns=(T0, T0 + 1))  # touched: one nanosecond is enough
    assert src.item_fingerprints()[0] != before[0]
    os.remove(tmp_path / "a.png")
    assert src.item_fingerprints()[0] == "missing"


def test_the_stat_fingerprint_and_its_blind_spot(tmp_path):
    """Same size and an mtime put back: the stat fingerprint cannot tell, the content hash can."""
    path = tmp_path / "a.png"
    _png(path, (255, 0, 0))
    src = open_source(tmp_path)
    stat_before, content_before = src.item_fingerprint(0), file_content_hash(path)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # one byte, size unchanged
    path.write_bytes(bytes(data))
    os.utime(path, ns=(T0, T0))
    assert src.item_fingerprint(0) == stat_before
    assert file_content_hash(path) != content_before
    assert file_content_hash(path) == "sha256:" + hashlib.sha256(bytes(data)).hexdigest()


def test_a_linked_file_is_fingerprinted_by_its_target(tmp_path):
    target = tmp_path / "data" / "x.png"
    target.parent.mkdir()
    _png(target, (1, 2, 3))
    images = tmp_path / "images"
    images.mkdir()
    os.symlink(target, images / "x.png")
    src = open_source(images)
    before = src.item_fingerprint(0)
    _png(target, (1, 2, 3), size=20)
    assert src.item_fingerprint(0) != before


def test_memory_fingerprints_follow_the_pixels():
    batch = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    a, b = TensorSource(batch.copy()), TensorSource(batch.copy())
    assert a.item_fingerprints() == b.item_fingerprints()
    assert len(set(a.item_fingerprints())) == 3
    changed = batch.copy()
    changed[2, 5, 5, 0] ^= 1  # one bit of one pixel
    c = TensorSource(changed).item_fingerprints()
    assert c[:2] == a.item_fingerprints()[:2] and c[2] != a.item_fingerprints()[2]
    pil = [Image.fromarray(x) for x in batch]
    assert TensorSource(pil).item_fingerprints() == TensorSource(pil).item_fingerprints()
    assert len(set(TensorSource(pil).item_fingerprints())) == 3


def test_synthetic_fingerprints_name_what_defines_a_scene():
    short, long = SyntheticScenes(n=4, size=32, seed=1), SyntheticScenes(n=8, size=32, seed=1)
    assert long.item_fingerprints()[:4] == short.item_fingerprints()  # scene i is scene i
    assert len(set(long.item_fingerprints())) == 8
    for other in (SyntheticScenes(n=4, size=48, seed=1), SyntheticScenes(n=4, size=32, seed=2),
                  SyntheticScenes(n=4, size=32, seed=1, objects=3)):
        assert not set(other.item_fingerprints()) & set(short.item_fingerprints())
    # and the pixels do follow those arguments alone
    assert np.array_equal(np.asarray(long.decode(3).image), np.asarray(short.decode(3).image))


@pytest.fixture
def generator_file(tmp_path):
    path = tmp_path / "gen.py"
    path.write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class Gen(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 3 * 8 * 8)
            def forward(self, z):
                return torch.tanh(self.fc(z)).view(-1, 3, 8, 8)

        def make(pretrained=True):
            return {"module": Gen(), "latent_shape": (4,), "output_range": (-1, 1)}
    '''))
    return f"file:{path}:make"


def test_generated_fingerprints_follow_the_generator_and_the_latents(generator_file):
    gen = zoolens.load(generator_file, pretrained=False, device="cpu")
    a, b = GeneratedImages(gen, n=3, seed=0), GeneratedImages(gen, n=3, seed=0)
    assert a.item_fingerprints() == b.item_fingerprints()
    assert a.item_fingerprints() == [a.item_fingerprint(i) for i in range(3)]
    assert len(set(a.item_fingerprints())) == 3
    assert not set(GeneratedImages(gen, n=3, seed=1).item_fingerprints()) & set(a.item_fingerprints())
    before = a.item_fingerprints()
    with torch.no_grad():
        gen.module.fc.bias.add_(0.5)  # new weights draw new images from the same latents
    assert not set(a.item_fingerprints()) & set(before)
    latents = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    given = GeneratedImages(gen, latents=latents).item_fingerprints()
    latents[1, 0] += 1.0
    moved = GeneratedImages(gen, latents=latents).item_fingerprints()
    assert moved[0] == given[0] and moved[1] != given[1] and moved[2] == given[2]


class _Plain(ImageSource):
    """A source with no fingerprint of its own: the decoding fallback applies."""

    def __init__(self, images):
        self.images = images
        super().__init__(ids=[f"i{k}" for k in range(len(images))])

    def decode(self, index):
        if self.images[index] is None:
            raise BadImage("cannot decode")
        return Decoded(self.images[index])


def test_the_fallback_hashes_decoded_pixels():
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    fps = _Plain([red, blue, None]).item_fingerprints()
    assert fps[0].startswith("pixels:") and fps[0] != fps[1] and fps[2].startswith("bad:")
    assert _Plain([red.copy(), blue, None]).item_fingerprints() == fps


def test_synthetic_shapes_and_backgrounds_options():
    """Other shape and background sets (out-of-distribution scenes) are part of what defines a
    scene; the default sets draw the scenes and fingerprints of earlier releases."""
    from zoolens.errors import InputError
    from zoolens.sources.synthetic import BACKGROUNDS, SHAPES, render_scene

    default = SyntheticScenes(n=2, size=32, seed=3)
    # fingerprints and pixels written before the options existed (stores keep matching)
    assert default.item_fingerprints() == ["scene:c28e52f46341354b", "scene:816f4ff5f9d7efe0"]
    assert default.description == "synthetic:scenes?n=2&size=32&seed=3&objects=2"
    digest = hashlib.sha1()
    for seed in (0, 3):
        for i in range(6):
            s = render_scene(i, 48, seed, 2)
            digest.update(s.image.tobytes())
            digest.update(s.instances.tobytes())
    assert digest.hexdigest() == "595906cf2922d534a39ab150d9d0bc9aba656b5a"
    named = SyntheticScenes(n=2, size=32, seed=3, shapes=",".join(SHAPES),
                            backgrounds=list(BACKGROUNDS))
    assert named.item_fingerprints() == default.item_fingerprints()

    novel = open_source("synthetic:scenes?n=24&size=32&seed=3&shapes=star,ring&backgrounds=waves")
    assert novel.description.endswith("&shapes=star,ring&backgrounds=waves")
    scenes = [novel.scene(i) for i in range(24)]
    assert {sh for s in scenes for sh in s.shapes} == {"star", "ring"}
    assert {s.background for s in scenes} == {"waves"} and set(novel.labels) <= {"star", "ring"}
    assert not set(novel.item_fingerprints()) & set(
        SyntheticScenes(n=24, size=32, seed=3).item_fingerprints())
    only_bg = SyntheticScenes(n=24, size=32, seed=3, backgrounds="dots")
    assert not set(only_bg.item_fingerprints()) & set(novel.item_fingerprints())
    for scene in scenes:  # every object is drawn, with its colour
        assert all((scene.instances == k + 1).sum() > 0 for k in range(len(scene.shapes)))
    with pytest.raises(InputError, match="unknown 'blob'; choose from circle"):
        open_source("synthetic:scenes?shapes=star,blob")
    with pytest.raises(InputError, match="backgrounds=''"):
        SyntheticScenes(backgrounds="")
