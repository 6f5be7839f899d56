"""Bad spec options and failing user code end in one clear error, not a traceback (issue 15,
item 5); `?weights=PATH` loads a local file through the library's own path."""

from __future__ import annotations

import textwrap

import pytest
import torch

import zoolens
from zoolens.errors import InputError, UserCodeError
from zoolens.sources import open_source


def _random_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
            for k, v in module.state_dict().items()}


@pytest.mark.parametrize("spec, build", [
    ("timm:test_resnet", lambda: __import__("timm").create_model("test_resnet")),
    ("torchvision:squeezenet1_1", lambda: __import__("torchvision").models.squeezenet1_1()),
])
def test_weights_option_in_the_spec_loads_that_file(spec, build, tmp_path):
    saved = _random_state(build(), seed=21)
    path = tmp_path / "r.pth"
    torch.save(saved, path)
    by_spec = zoolens.load(f"{spec}?weights={path}", device="cpu")
    by_argument = zoolens.load(spec, weights=str(path), device="cpu")
    for model in (by_spec, by_argument):
        state = model.module.state_dict()
        assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert by_spec.spec == f"{spec}?weights={path}"


def test_weights_option_with_other_options(tmp_path):
    """`&weights=` after a model option: both reach their place."""
    import timm

    saved = _random_state(timm.create_model("vit_tiny_patch16_224", img_size=32), seed=22)
    path = tmp_path / "v.pth"
    torch.save(saved, path)
    model = zoolens.load(f"timm:vit_tiny_patch16_224?img_size=32&weights={path}", device="cpu")
    assert model.input_size == (32, 32)
    assert torch.equal(model.module.state_dict()["pos_embed"], saved["pos_embed"])


def test_weights_given_twice_or_missing(tmp_path):
    path = tmp_path / "a.pth"
    torch.save({}, path)
    with pytest.raises(InputError, match="weights given twice"):
        zoolens.load(f"timm:test_resnet?weights={path}", weights=str(tmp_path / "b.pth"))
    with pytest.raises(InputError, match=r"weights file '.*nope\.pth' does not exist"):
        zoolens.load(f"timm:test_resnet?weights={tmp_path / 'nope.pth'}")


@pytest.mark.parametrize("spec, takes", [
    ("timm:resnet18?bogus_kw=1", "num_classes"),
    ("torchvision:resnet18?bogus_kw=1", "num_classes"),
    ("open_clip:RN50?bogus_kw=1", "embed_dim"),
])
def test_an_option_the_model_does_not_take_is_named(spec, takes):
    with pytest.raises(InputError) as err:
        zoolens.load(spec, pretrained=False)
    message = str(err.value)
    assert message.startswith(f"{spec}: option 'bogus_kw' is not taken by this model")
    assert "it takes " in message and takes in message  # what it does take
    assert err.value.__suppress_context__


def test_an_option_of_the_wrong_type_is_named():
    spec = "timm:vit_tiny_patch16_224?img_size=abc"
    with pytest.raises(InputError) as err:
        zoolens.load(spec, pretrained=False)
    message = str(err.value)
    assert message.startswith(f"{spec}: the model could not be built with option img_size='abc'")
    assert "img_size was read as text" in message


@pytest.mark.parametrize("text, needle", [
    ("synthetic:scenes?n=abc", "option n='abc' must be an integer, e.g. n=64"),
    ("synthetic:scenes?size=1.5", "option size=1.5 must be an integer"),
    ("synthetic:scenes?colour=red", "unknown option 'colour'; synthetic:scenes takes n (default 64)"),
    ("synthetic:scenes?n", "option 'n' is not KEY=VALUE"),
])
def test_synthetic_options_are_checked(text, needle):
    with pytest.raises(InputError) as err:
        open_source(text)
    assert needle in str(err.value) and str(err.value).startswith(
        ("synthetic:", "image source"))


# ----------------------------------------------------------------------------------------
# file: the user's own code, shown as theirs


def _write(tmp_path, text: str):
    path = tmp_path / "userzoo.py"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_syntax_error_shows_the_users_file_and_line(tmp_path):
    path = _write(tmp_path, '''
        import torch

        def make(pretrained=True):
            return torch.nn.Linear(2, 2
    ''')
    with pytest.raises(UserCodeError) as err:
        zoolens.load(f"file:{path}:make", pretrained=False)
    message = str(err.value)
    assert f"{path}, line 4" in message and "SyntaxError" in message and "'(' was never closed" in message
    assert "return torch.nn.Linear(2, 2" in message
    assert (err.value.filename, err.value.lineno) == (str(path), 4)
    assert "importlib" not in message and "zoolens" not in message.replace(str(tmp_path), "")


def test_an_exception_in_the_factory_shows_only_the_users_lines(tmp_path):
    path = _write(tmp_path, '''
        import torch

        def _width(pretrained):
            raise ValueError("no checkpoint for this width")

        def make(pretrained=True):
            width = _width(pretrained)
            return torch.nn.Linear(width, 2)
    ''')
    with pytest.raises(UserCodeError) as err:
        zoolens.load(f"file:{path}:make", pretrained=False)
    message = str(err.value)
    assert message.startswith(f"file:{path}:make: make() failed in your code:")
    assert f'File "{path}", line 7, in make' in message  # the call in the factory
    assert f'File "{path}", line 4, in _width' in message  # the line that raised
    assert message.rstrip().endswith("ValueError: no checkpoint for this width")
    assert message.count('File "') == 2  # the user's frames only: none of zoolens' or torch's
    assert err.value.lineno == 4


def test_an_exception_while_importing_the_users_file(tmp_path):
    path = _write(tmp_path, '''
        import torch

        SIZE = undefined_name + 1
    ''')
    with pytest.raises(UserCodeError) as err:
        zoolens.load(f"file:{path}:make", pretrained=False)
    message = str(err.value)
    assert f"importing {path.name} failed in your code" in message
    assert f'File "{path}", line 3, in <module>' in message and "NameError" in message
    assert message.count('File "') == 1


def test_an_option_the_factory_does_not_take(tmp_path):
    path = _write(tmp_path, '''
        import torch

        def make(pretrained=True, width=4):
            return torch.nn.Linear(width, 2)
    ''')
    spec = f"file:{path}:make?depth=3"
    with pytest.raises(InputError) as err:
        zoolens.load(spec, pretrained=False)
    assert str(err.value).startswith(f"{spec}: option 'depth' is not taken by this model")
    assert "it takes pretrained, width" in str(err.value)
    assert zoolens.load(f"file:{path}:make?width=3", pretrained=False).module.in_features == 3
