"""Offline, every source either loads its weights from the library's own cache or fails fast
with one clear error (issue 15, items 4 and 8).

The network is cut for sure, whatever machine runs this: the Hub's endpoint and every proxy
point at a closed local port, name lookups and connections beyond this machine are refused,
and each library's cache is an empty temporary folder. Tests
then run twice, with the Hub's offline mode (HF_HUB_OFFLINE) set, as careful users do, and
unset, as a new user's shell has it."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import torch

import zoolens
from zoolens.errors import WeightsUnavailableError
from zoolens.zoo import _fetch

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
REVISION = "0123456789abcdef0123456789abcdef01234567"  # a commit hash, as the Hub names snapshots


_LOCAL = {"127.0.0.1", "::1", "localhost"}


def _only_this_machine(monkeypatch) -> None:
    """No name lookup or connection beyond this machine: a library that ignored the closed
    endpoint and proxies is refused at once, as it would be offline, and never reaches (or
    waits on) a network this machine may have."""
    real_lookup, real_connect = socket.getaddrinfo, socket.socket.connect

    def lookup(host, *args, **kwargs):
        if host not in _LOCAL:
            raise socket.gaierror(socket.EAI_NONAME, f"no network in this test ({host})")
        return real_lookup(host, *args, **kwargs)

    def connect(sock, address):
        if isinstance(address, tuple) and address[0] not in _LOCAL:
            raise ConnectionRefusedError(f"no network in this test ({address[0]})")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(params=[True, False], ids=["HF_HUB_OFFLINE=1", "HF_HUB_OFFLINE-unset"])
def no_network(request, monkeypatch, tmp_path) -> dict[str, Path]:
    """Empty caches, no way out, and the Hub's offline mode set or unset."""
    from huggingface_hub import close_session, constants

    hf_home, torch_home = tmp_path / "hf", tmp_path / "torch"
    hub_cache = hf_home / "hub"
    hub_cache.mkdir(parents=True)
    offline = request.param
    # huggingface_hub reads its environment once, at import: patch the module's constants
    # (read again at every call by huggingface_hub, transformers, timm, open_clip, diffusers)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if offline:
            monkeypatch.setenv(var, "1")
        else:
            monkeypatch.delenv(var, raising=False)
    # torch.hub (torchvision) reads TORCH_HOME at each call unless set_dir() was used
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, CLOSED)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen's opener caches the proxies
    _only_this_machine(monkeypatch)  # and whatever ignores the proxies gets no further
    monkeypatch.setattr(_fetch, "_probe", None)  # no remembered answer from another test
    close_session()  # huggingface_hub's HTTP client reads the proxies when it is created
    yield {"hub": hub_cache, "torch": torch_home, "offline": offline}
    close_session()


# ----------------------------------------------------------------------------------------
# item 4: missing weights fail fast, in one clear error


OFFLINE_SPECS = ["timm:resnet18", "torchvision:resnet18", "open_clip:RN50/openai",
                 "hf:facebook/dinov2-small"]


def test_missing_weights_fail_fast_with_one_clear_error(no_network):
    pytest.importorskip("open_clip")
    pytest.importorskip("transformers")
    took = {}
    for spec in OFFLINE_SPECS:
        start = time.perf_counter()
        with pytest.raises(WeightsUnavailableError) as err:
            zoolens.load(spec, device="cpu")
        took[spec] = time.perf_counter() - start
        message = str(err.value)
        assert message.startswith(f"{spec}: ") and "could not be downloaded" in message
        assert "\n" not in message  # one line
        assert err.value.__suppress_context__  # the library's traceback is not printed
        if spec.startswith("torchvision"):  # torch.hub's folder and the exact file it wants
            assert str(no_network["torch"] / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
        else:
            assert str(no_network["hub"]) in message
        if spec.startswith("hf:"):  # the architecture itself comes from the Hub
            assert "local folder" in message and "--no-pretrained" not in message
        else:
            assert "--no-pretrained" in message and f"'{spec}?weights=PATH'" in message
        if not spec.startswith("torchvision"):
            assert ("offline mode is on" if no_network["offline"] else "did not answer") in message
    print("offline failure times:", {k: round(v, 2) for k, v in took.items()})
    assert sum(took.values()) < 60, took  # unguarded, huggingface_hub retries ~30 s per file


def test_random_weights_need_no_network(no_network):
    """--no-pretrained never asks the network: the advice the error gives works."""
    model = zoolens.load("timm:resnet18", pretrained=False, device="cpu")
    assert model.layer("layer4.1").channels == 512


def test_the_hubs_offline_setting_is_put_back(no_network):
    from huggingface_hub import constants

    with pytest.raises(WeightsUnavailableError):
        zoolens.load("timm:resnet18", device="cpu")
    assert constants.HF_HUB_OFFLINE is no_network["offline"]


# ----------------------------------------------------------------------------------------
# item 8: the pretrained path, from each library's own cache, offline


def _hub_snapshot(hub_cache: Path, repo_id: str) -> Path:
    """The Hub cache's layout for one model repo: a snapshot folder named by its commit and
    refs/main naming that commit. Returns the snapshot folder to put files in."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


def _random_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Weights no zoolens load would draw by itself (zoolens seeds 0): arrival proves the path."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        if v.is_floating_point():
            out[k] = torch.randn(v.shape, generator=gen, dtype=v.dtype)
        else:
            out[k] = v.clone()
    return out


def _load_quickly(spec: str):
    """Load offline from the cache. Bounded in time: unguarded, with HF_HUB_OFFLINE unset,
    huggingface_hub retries every cached file's metadata request for ~23 s before it falls
    back on the cache."""
    start = time.perf_counter()
    model = zoolens.load(spec, device="cpu")
    took = time.perf_counter() - start
    assert took < 15, f"{spec} took {took:.1f} s to load from the cache"
    return model


def _assert_arrived(model, saved: dict[str, torch.Tensor], prefix: str = ""):
    state = model.module.state_dict()
    for k, v in saved.items():
        assert torch.equal(state[prefix + k], v), k
    assert len(saved) > 0


def test_timm_pretrained_from_the_hub_cache(no_network):
    """timm:test_resnet resolves to timm/test_resnet.r160_in1k on the Hub: model.safetensors."""
    import timm
    from safetensors.torch import save_file

    saved = _random_state(timm.create_model("test_resnet", pretrained=False), seed=11)
    snapshot = _hub_snapshot(no_network["hub"], "timm/test_resnet.r160_in1k")
    save_file({k: v.contiguous() for k, v in saved.items()}, snapshot / "model.safetensors")
    model = _load_quickly("timm:test_resnet")
    _assert_arrived(model, saved)
    assert model.adapter.meta["data_config"]["input_size"] == (3, 160, 160)  # the tag's config


def test_torchvision_pretrained_from_the_torch_hub_checkpoints(no_network):
    """torchvision looks for TORCH_HOME/hub/checkpoints/<the weights URL's file name>; a file
    already there is loaded without a hash check."""
    from torchvision import models

    weights = models.get_model_weights("squeezenet1_1").DEFAULT
    saved = _random_state(models.squeezenet1_1(), seed=12)
    folder = no_network["torch"] / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(saved, folder / os.path.basename(weights.url))
    model = _load_quickly("torchvision:squeezenet1_1")
    _assert_arrived(model, saved)
    assert model.adapter.meta["weights"] == str(weights)


def test_open_clip_pretrained_tag_from_the_hub_cache(no_network, open_clip_tiny, monkeypatch):
    """A pretrained tag whose weights sit on the Hub (as most open_clip tags do), cached."""
    import open_clip
    from open_clip import pretrained as registry

    tags = {"zoolens_test": registry._pcfg(hf_hub="zoolens-test/tiny-clip/")}
    monkeypatch.setitem(registry._PRETRAINED, open_clip_tiny, tags)
    model, _, _ = open_clip.create_model_and_transforms(open_clip_tiny)
    saved = _random_state(model, seed=13)
    snapshot = _hub_snapshot(no_network["hub"], "zoolens-test/tiny-clip")
    torch.save(saved, snapshot / "open_clip_pytorch_model.bin")
    loaded = _load_quickly(f"open_clip:{open_clip_tiny}/zoolens_test")
    _assert_arrived(loaded, saved)


def test_hf_pretrained_from_the_hub_cache(no_network):
    """hf:facebook/dinov2-small by its ordinary name, from a cached snapshot (a tiny DINOv2
    stands in for the real one: the loading path is the same)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, image_size=32, patch_size=8)
    model = transformers.Dinov2Model(config)
    saved = _random_state(model, seed=14)
    model.load_state_dict(saved)
    snapshot = _hub_snapshot(no_network["hub"], "facebook/dinov2-small")
    model.save_pretrained(snapshot)
    transformers.BitImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(snapshot)
    loaded = _load_quickly("hf:facebook/dinov2-small")
    _assert_arrived(loaded, saved)
    assert loaded.input_size == (32, 32)  # the cached image processor was used too


def test_diffusers_pretrained_from_the_hub_cache(no_network):
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 32), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    saved = _random_state(unet, seed=15)
    unet.load_state_dict(saved)
    snapshot = _hub_snapshot(no_network["hub"], "google/ddpm-cifar10-32")
    unet.save_pretrained(snapshot / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(snapshot / "scheduler")
    loaded = _load_quickly("diffusers:google/ddpm-cifar10-32?t=10")
    _assert_arrived(loaded, saved, prefix="unet.")
