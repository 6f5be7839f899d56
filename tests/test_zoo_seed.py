"""Random weights are seeded (issue 15, item 1): the same seed builds the same weights for
every source, a different seed other weights, and loading leaves the caller's random state
alone. `Model.weights_fingerprint()` tells weights apart bit for bit."""

from __future__ import annotations

import random
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import zoolens
from zoolens.errors import InputError
from zoolens.zoo.model import Model
from zoolens.zoo.registry import AdapterResult


@pytest.fixture(scope="module")
def unseeded_factory(tmp_path_factory):
    """A user's factory that draws from all three generators and seeds none of them."""
    path = tmp_path_factory.mktemp("seedzoo") / "zoo.py"
    path.write_text(textwrap.dedent('''
        import random
        import numpy as np
        import torch
        from torch import nn

        def make(pretrained=True):
            net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                nn.Flatten(), nn.Linear(4, 2))
            with torch.no_grad():
                net[0].bias.add_(float(np.random.rand()) + random.random())
            return {"module": net, "input_size": 16}
    '''))
    return f"file:{path}:make"


def _specs(unseeded_factory, open_clip_tiny, hf_dinov2_dir, diffusers_unet_dir):
    return {
        "timm": "timm:test_resnet",
        "torchvision": "torchvision:squeezenet1_1",
        "open_clip": f"open_clip:{open_clip_tiny}",
        "hf": f"hf:{hf_dinov2_dir}",
        "diffusers": f"diffusers:{diffusers_unet_dir}",
        "file": unseeded_factory,
    }


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _rng_draws():
    return torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)]


@pytest.mark.parametrize("source", ["timm", "torchvision", "open_clip", "hf", "diffusers", "file"])
def test_random_weights_are_seeded_and_leave_the_callers_rng_alone(
        source, unseeded_factory, open_clip_tiny, hf_dinov2_dir, diffusers_unet_dir):
    spec = _specs(unseeded_factory, open_clip_tiny, hf_dinov2_dir, diffusers_unet_dir)[source]

    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    expected_draws = _rng_draws()  # what the caller draws next when nothing intervenes

    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    first = zoolens.load(spec, pretrained=False, device="cpu")
    draws = _rng_draws()
    for got, want in zip(draws, expected_draws):  # loading consumed none of the caller's numbers
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    torch.manual_seed(7), np.random.seed(7), random.seed(7)  # another global state: no matter
    again = zoolens.load(spec, pretrained=False, device="cpu")
    other = zoolens.load(spec, pretrained=False, device="cpu", seed=1)

    assert _same(_state(first), _state(again)), "seed 0 twice must give identical weights"
    assert not _same(_state(first), _state(other)), "seed 1 must give other weights"
    assert first.seed == 0 and first.adapter.meta["seed"] == 0 and other.seed == 1
    assert first.weights_fingerprint() == again.weights_fingerprint()
    assert first.weights_fingerprint() != other.weights_fingerprint()


def _model(module: nn.Module) -> Model:
    return Model("file:test.py:m", AdapterResult(module=module, preprocess=None, input_size=(8, 8)),
                 torch.device("cpu"))


class _Holder(nn.Module):
    def __init__(self, **buffers):
        super().__init__()
        for name, value in buffers.items():
            self.register_buffer(name, value)


def test_fingerprint_sees_names_shapes_dtypes_and_every_bit():
    zeros = torch.zeros(4, dtype=torch.float32)
    base = _model(_Holder(a=zeros.clone())).weights_fingerprint()
    assert base.startswith("sha256:") and len(base) == len("sha256:") + 64
    assert _model(_Holder(a=zeros.clone())).weights_fingerprint() == base  # same tensors, same hash
    # the same 16 zero bytes under another name, shape or dtype are other weights
    assert _model(_Holder(b=zeros.clone())).weights_fingerprint() != base
    assert _model(_Holder(a=zeros.reshape(2, 2).clone())).weights_fingerprint() != base
    assert _model(_Holder(a=torch.zeros(4, dtype=torch.int32))).weights_fingerprint() != base
    flipped = zeros.clone()
    flipped.view(torch.int32)[3] = 1  # one bit of one element: a denormal, 1.4e-45
    assert _model(_Holder(a=flipped)).weights_fingerprint() != base
    # bfloat16 (NumPy has no such dtype) hashes too, and differs from the float32 zeros
    assert _model(_Holder(a=torch.zeros(8, dtype=torch.bfloat16))).weights_fingerprint() != base


def test_fingerprint_follows_in_place_changes_and_state_dict_copies():
    model = zoolens.load("timm:test_resnet", pretrained=False, device="cpu")
    before = model.weights_fingerprint()
    assert model.weights_fingerprint() == before  # cached: the same answer
    with torch.no_grad():
        model.module.fc.bias[0] += 1.0  # an in-place edit after the first (cached) hash
    edited = model.weights_fingerprint()
    assert edited != before
    copy = zoolens.load("timm:test_resnet", pretrained=False, device="cpu", seed=5)
    assert copy.weights_fingerprint() != edited
    copy.module.load_state_dict(model.module.state_dict())
    assert copy.weights_fingerprint() == edited  # bit-equal weights, whatever path they took


def test_fingerprint_covers_buffers():
    """Running statistics are buffers: models that differ only there are different models."""
    a = zoolens.load("torchvision:squeezenet1_1", pretrained=False, device="cpu")
    b = zoolens.load("torchvision:resnet18", pretrained=False, device="cpu")
    fp = b.weights_fingerprint()
    with torch.no_grad():
        b.module.bn1.running_var.mul_(2.0)
    assert b.weights_fingerprint() != fp
    assert a.weights_fingerprint() != fp


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seed_is_named(seed):
    with pytest.raises(InputError, match="seed"):
        zoolens.load("timm:test_resnet", pretrained=False, seed=seed)
