"""Models can be named, `NAME=SPEC` (issue 15, item 7): the name is what unit ids show, and
the spec keeps its own text. Parsed in one place, `zoo.registry.split_model_name`."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import zoolens
from zoolens.errors import InputError
from zoolens.zoo.registry import split_model_name


@pytest.mark.parametrize("text, expected", [
    ("rnet=file:zoo.py:rnet", ("rnet", "file:zoo.py:rnet")),
    ("r18=timm:resnet18?img_size=64", ("r18", "timm:resnet18?img_size=64")),
    ("timm:vit_tiny_patch16_224?img_size=64", (None, "timm:vit_tiny_patch16_224?img_size=64")),
    ("hf:/runs/lr=0.1/model", (None, "hf:/runs/lr=0.1/model")),  # '=' after the source
    ("dino=hf:/runs/lr=0.1/model", ("dino", "hf:/runs/lr=0.1/model")),
    ("file:/a=b/zoo.py:make", (None, "file:/a=b/zoo.py:make")),
    ("v=timm:vit?weights=/w/a=b.pth", ("v", "timm:vit?weights=/w/a=b.pth")),
    ("resnet50", (None, "resnet50")),  # no source at all: parse_spec says so
])
def test_split_model_name(text, expected):
    assert split_model_name(text) == expected


@pytest.mark.parametrize("text, needle", [
    ("=timm:resnet18", "is empty"),
    ("a/b=timm:resnet18", "contains '/'"),
    ("my net=timm:resnet18", "contains ' '"),
    ("a?b=timm:resnet18", "contains '?'"),
])
def test_bad_names_are_refused(text, needle):
    with pytest.raises(InputError, match=needle):
        zoolens.load(text, pretrained=False)


def test_a_named_model_shows_its_name_in_unit_ids():
    model = zoolens.load("r18=timm:test_resnet", pretrained=False, device="cpu")
    assert (model.name, model.spec) == ("r18", "timm:test_resnet")
    assert model.unit_id("layer1.0", 3) == "r18/layer1.0:3"
    plain = zoolens.load("timm:test_resnet", pretrained=False, device="cpu")
    assert plain.name == "timm:test_resnet"  # unnamed: the spec, as before


def test_name_argument_and_name_in_the_spec():
    assert zoolens.load("timm:test_resnet", pretrained=False, name="t").name == "t"
    assert zoolens.load("t=timm:test_resnet", pretrained=False, name="t").name == "t"
    with pytest.raises(InputError, match="give one name"):
        zoolens.load("t=timm:test_resnet", pretrained=False, name="u")
    with pytest.raises(InputError, match="contains ':'"):
        zoolens.load("timm:test_resnet", pretrained=False, name="a:b")


def test_two_copies_of_one_file_model_told_apart(tiny_cnn_file, photo_dir, tmp_path):
    """The user's case: a `file:` model's default name is its whole spec (kept, so existing
    outputs keep their unit ids); named copies get short, distinct names end to end."""
    spec = f"file:{tiny_cnn_file}:tiny_cnn"
    assert zoolens.load(spec, pretrained=False, device="cpu").name == spec
    images = [str(p) for p in sorted(photo_dir.rglob("*.jpg"))]
    store = zoolens.extract([f"a={spec}", f"b={spec}"], images, layers="3", out=tmp_path / "s",
                            pretrained=False, dtype="float32", num_workers=0, progress=False)
    assert store.models == ["a", "b"]
    np.testing.assert_array_equal(store.features("a", "3"), store.features("b", "3"))


def test_a_local_hf_folder_with_an_equals_sign(hf_dinov2_dir, tmp_path):
    folder = tmp_path / "run=1"
    shutil.copytree(hf_dinov2_dir, folder)
    model = zoolens.load(f"hf:{folder}", device="cpu")
    assert (model.name, model.spec) == (f"hf:{folder}", f"hf:{folder}")
    named = zoolens.load(f"dino=hf:{folder}", device="cpu")
    assert (named.name, named.spec) == ("dino", f"hf:{folder}")
