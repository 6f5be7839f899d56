"""`Model`: a loaded zoo member — its module, its own preprocessing and its tappable layers."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from PIL import Image

from ..taps import (OUTPUT, PENULTIMATE, TapInfo, describe_output, find_blocks, first_tensor, hooks,
                    select_layers)
from ..errors import InputError
from .registry import AdapterResult

__all__ = ["Model", "resolve_layers"]

_DRY_RUN_BATCH = 3  # odd and small: tells a batch axis from a token axis


class Model:
    """A zoo member ready for extraction. Build it with `zoolens.load(spec)`.

    Attributes: `spec`, `name` (used in unit ids `<name>/<layer>:<channel>`), `module`
    (the wrapped torch module; layer names are its module paths), `preprocess`
    (PIL RGB image -> (3, H, W) tensor), `input_size`, `device`, `seed` (the seed random
    weights were drawn from). `weights_fingerprint()` identifies the weights themselves.
    """

    def __init__(self, spec: str, adapter: AdapterResult, device: torch.device,
                 name: str | None = None, seed: int | None = None):
        self.spec = spec
        self.name = name or spec
        self.adapter = adapter
        self.device = device
        self.seed = seed
        self.module = adapter.module.to(device).eval()
        self.preprocess = adapter.preprocess
        self.input_size = tuple(adapter.input_size)
        self.pretrained = True  # set by `zoolens.load`
        self._fingerprint: tuple[tuple, str] | None = None  # (tensor versions, digest)

    def record(self) -> dict:
        """What a result or a store was computed from, so a rerun can tell it is the same model:
        its spec, whether the weights are pretrained, their file, the seed of random ones, and
        a fingerprint of the weights themselves."""
        return {"spec": self.spec, "pretrained": self.pretrained,
                "weights": self.adapter.meta.get("weights"), "seed": self.seed,
                "weights_fingerprint": self.weights_fingerprint(),
                "input_size": list(self.input_size)}

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample input: (3, H, W) images, or a generator's latent shape."""
        return tuple(self.adapter.latent_shape or (3, *self.input_size))

    @property
    def is_generator(self) -> bool:
        return self.adapter.latent_shape is not None

    def __repr__(self) -> str:
        return f"Model({self.spec!r}, input_size={self.input_size}, device={self.device})"

    def weights_fingerprint(self) -> str:
        """A stable hash of every parameter and buffer: names, shapes, dtypes and bytes.

        Two models have the same fingerprint exactly when their tensors are bit for bit the
        same, whatever the device (bytes are read on the CPU) and whatever the load path. It
        is computed once and cached; the cache is keyed on each tensor's storage and version
        counter, so an in-place change of the weights (`load_state_dict`, `p.add_(...)`)
        gives a new fingerprint. (Writes through `.data` bypass the version counter.)
        Returns `"sha256:<64 hex digits>"`."""
        tensors = _named_tensors(self.module)
        versions = tuple((n, t.data_ptr(), t._version, t.device.type) for n, t in tensors)
        if self._fingerprint is None or self._fingerprint[0] != versions:
            self._fingerprint = (versions, _hash_tensors(tensors))
        return self._fingerprint[1]

    def forward(self, x: torch.Tensor):
        """Run the wrapped module on a preprocessed batch (B, 3, H, W)."""
        if self.adapter.forward is not None:
            return self.adapter.forward(self.module, x)
        return self.module(x)

    @property
    def head(self) -> str | None:
        """For a classifier (`adapter.classifier`), the Linear module whose output is the
        logits: its weight and bias, and its input (the `penultimate` layer), are what ViM
        needs. None otherwise."""
        self._layer_infos  # noqa: B018 - the dry run finds it
        return self._head if self.adapter.classifier else None

    @property
    def is_classifier(self) -> bool:
        return bool(self.adapter.classifier)

    @cached_property
    def module_names(self) -> frozenset[str]:
        return frozenset(n for n, _ in self.module.named_modules())

    @cached_property
    def _layer_infos(self) -> list[TapInfo]:
        """Every submodule's output, described from one dry run on a blank batch."""
        outputs: dict[str, torch.Tensor] = {}
        calls: dict[str, int] = {}
        last: dict[str, torch.Tensor] = {}  # each module's latest output object

        def record(name, out):
            t = first_tensor(out)
            if t is not None:
                outputs[name] = t.detach()  # a re-call keeps its first-call position
                calls[name] = calls.get(name, 0) + 1
                last[name] = t

        inputs: dict[str, torch.Tensor] = {}

        def record_input(name, t):
            if t is not None:
                inputs[name] = t.detach()

        names = [n for n, _ in self.module.named_modules() if n]
        linear = [n for n, m in self.module.named_modules() if isinstance(m, torch.nn.Linear)]
        x = torch.zeros(_DRY_RUN_BATCH, *self.input_shape, device=self.device)
        with torch.no_grad(), hooks(self.module, names, record, input_names=linear,
                                    input_fn=record_input):
            result = first_tensor(self.forward(x))
        # the classifier's head: the Linear module that returned the very tensor forward did
        self._head = next((n for n in reversed(list(last)) if last[n] is result
                           and n in linear), None)
        if self.adapter.classifier and self._head and PENULTIMATE not in self.module_names:
            outputs[PENULTIMATE], calls[PENULTIMATE] = inputs[self._head], 1  # its input
        if OUTPUT not in self.module_names and result is not None:  # the forward output, last
            outputs[OUTPUT], calls[OUTPUT] = result.detach(), 1
        a = self.adapter
        # `outputs` fills in the order modules first run: layers are listed in forward order
        return [describe_output(n, t, _DRY_RUN_BATCH, input_size=self.input_size,
                                prefix_tokens=a.prefix_tokens, patch_grid=a.patch_grid,
                                sequence_first=a.sequence_first, channels_last=a.channels_last,
                                calls=calls[n])
                for n, t in outputs.items()]

    def layers(self, selector: str | list[str] | None = None) -> list[TapInfo]:
        """Tappable layers in forward order (all of them, or those a selector names)."""
        infos = [i for i in self._layer_infos if i.poolable]
        if selector is None:
            return infos
        by_name = {i.name: i for i in infos}
        return [by_name[n] for n in self.select(selector)]

    def layer(self, name: str) -> TapInfo:
        return self.layers(name)[0]

    @cached_property
    def blocks(self) -> list[str]:
        """The model's main blocks (the `blocks` selector), among the modules that run."""
        ran = {i.name for i in self._layer_infos}
        return [b for b in (self.adapter.block_names or find_blocks(self.module)) if b in ran]

    def select(self, selector: str | list[str]) -> list[str]:
        """Layer names a selector (`all`, `blocks`, names, globs, `blocks[-4:]`) stands for."""
        return select_layers(self._layer_infos, selector, blocks=self.blocks, model_name=self.spec)

    def unit_id(self, layer: str, channel: int) -> str:
        return f"{self.name}/{layer}:{channel}"

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        return self.preprocess(image)

    def to_images(self, output) -> list[Image.Image]:
        """A generator's output batch (B, 3, H, W), in its `output_range` -> RGB images."""
        lo, hi = self.adapter.output_range
        x = ((first_tensor(output).detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
        arr = (x.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        return [Image.fromarray(a) for a in arr]


def resolve_layers(models, layers) -> dict[str, list[str]]:
    """One selector for all models, or a dict {model name or spec: selector} -> layer names per
    model name."""
    result = {}
    for m in models:
        sel = layers.get(m.name, layers.get(m.spec)) if isinstance(layers, dict) else layers
        if sel is None:
            raise InputError(f"no layers given for {m.name}; have keys {list(layers)}")
        result[m.name] = m.select(sel)
    return result


def _named_tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer (persistent or not) by name, sorted; a tied tensor once."""
    named = dict(module.named_parameters())
    named.update(module.named_buffers())
    return sorted(named.items())


def _hash_tensors(tensors: list[tuple[str, torch.Tensor]]) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        # raw bytes through a uint8 view: every dtype (bfloat16 too, which NumPy lacks)
        data = t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        h.update(memoryview(data))
    return "sha256:" + h.hexdigest()
