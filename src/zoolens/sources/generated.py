"""Images drawn by a generator (latent -> image), which is itself a zoo member: its units are
tapped while it draws the very images the other models see, as in the Rosetta paper.

The source's items are latents: `decode(i)` gives latent `i`, and the engine runs the generator
(`drawn_by`) first in every batch, like any other model, and hands what it drew to the others.
Latent `i` is drawn from its own seeded stream, so sample `i` is the same whatever the batch it
falls in, and a resumed or re-run pass sees the same images."""

from __future__ import annotations

import hashlib

import torch

from ..errors import InputError
from .base import Decoded, ImageSource

__all__ = ["GeneratedImages"]


class GeneratedImages(ImageSource):
    """`n` samples of `generator` (a `Model` with `latent_shape`), latents seeded by `seed`;
    or the given `latents` (n, *latent_shape), e.g. real images encoded by a VAE's encoder, so
    the generated images keep those images' ground truth."""

    def __init__(self, generator, n: int = 64, seed: int = 0, latents: torch.Tensor | None = None,
                 ids: list[str] | None = None):
        if not getattr(generator, "is_generator", False):
            raise InputError(f"{getattr(generator, 'spec', generator)} is no generator: its factory "
                             "must give latent_shape (see zoolens.zoo.file)")
        if latents is not None:
            latents = torch.as_tensor(latents, dtype=torch.float32)
            if tuple(latents.shape[1:]) != tuple(generator.input_shape):
                raise InputError(f"latents: expected (n, {', '.join(map(str, generator.input_shape))}), "
                                 f"got {tuple(latents.shape)}")
            n = len(latents)
        if n < 1:
            raise InputError(f"generator samples: need n >= 1, got {n}")
        self.n, self.seed, self.given = n, seed, latents
        self.latent_shape = tuple(generator.input_shape)
        if latents is not None:  # the checkpoints' fingerprint must change with the latents
            what = f"latents={n}&sha1={hashlib.sha1(latents.numpy().tobytes()).hexdigest()[:12]}"
        else:
            what = f"n={n}&seed={seed}"
        super().__init__(ids=ids or [f"generated_{seed}_{i:06d}" for i in range(n)],
                         description=f"generator:{generator.spec}?{what}", drawn_by=generator)

    @property
    def generator(self):
        return self.drawn_by

    def item_fingerprint(self, index: int) -> str:
        """What defines sample `index`: the generator (spec and weights fingerprint), its
        output range, and the latent (its seed and index, or the given latent's bytes)."""
        return self._fingerprint_item(self._generator_hash(), index)

    def item_fingerprints(self) -> list[str]:
        base = self._generator_hash()  # hashing the weights once, not once per sample
        return [self._fingerprint_item(base, i) for i in range(len(self))]

    def _generator_hash(self):
        h = hashlib.blake2b(digest_size=8)
        fingerprint = getattr(self.generator, "weights_fingerprint", None)
        h.update(f"{self.generator.spec}|{fingerprint() if fingerprint else ''}|"
                 f"{self.generator.adapter.output_range}|".encode())
        return h

    def _fingerprint_item(self, base, index: int) -> str:
        h = base.copy()
        if self.given is not None:
            h.update(self.given[index].numpy().tobytes())
        else:
            h.update(f"seed={self.seed}#{index}".encode())
        return "gen:" + h.hexdigest()

    def latents(self, indices) -> torch.Tensor:
        if self.given is not None:
            return self.given[list(indices)]
        return torch.stack([self._latent(int(i)) for i in indices])

    def _latent(self, index: int) -> torch.Tensor:
        if self.given is not None:
            return self.given[index]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return torch.randn(self.latent_shape, generator=g)

    def decode(self, index: int) -> Decoded:
        return Decoded(None, latent=self._latent(index))

    def draw(self, index: int):
        """One sample drawn alone, as an RGB image (the engine draws whole batches instead)."""
        with torch.inference_mode():
            out = self.drawn_by.forward(self._latent(index)[None].to(self.drawn_by.device))
        return self.drawn_by.to_images(out)[0]

    def __getstate__(self):
        # Decoding workers only need the latents: never pickle the generator's weights to them.
        state = dict(self.__dict__)
        state["drawn_by"] = None
        return state
