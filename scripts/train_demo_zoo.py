#!/usr/bin/env python
"""Train the built-in demo zoo (src/zoolens/demo/zoo.py) on `synthetic:scenes`, seeded.

    python scripts/train_demo_zoo.py                 # all three -> src/zoolens/demo/weights/
    python scripts/train_demo_zoo.py --only classifier --out /tmp/weights
    python scripts/train_demo_zoo.py --check         # retrain; compare with weights/manifest.json

Three models, each from its own seed, on scenes rendered once into memory (train: seed 1000;
held-out metrics: seed 0, the stream `synthetic:scenes` shows by default):

- classifier: SceneCNN, cross-entropy on the label (largest object's shape) + 0.5 x the colour
  of that object; augmentation: the 8 flips/quarter turns (labels are invariant to them).
- ssl_vit: SceneViT, SimCLR (Chen et al. 2020): two views per image, InfoNCE over the batch
  with a throw-away MLP projection head. Views: background swap (the objects pasted on another
  scene's background, using the renderer's object masks, as in the background augmentations of
  Ryali et al. 2021), object recolouring by an RGB channel permutation, random resized crop,
  flips and quarter turns, mild brightness/contrast/saturation jitter (no hue jitter), sometimes
  grayscale. Without the first two, instance discrimination is solved by background texture and
  colour alone and the features barely see shape (k-NN shape accuracy ~0.3, chance 0.25).
  No labels are used.
- generator: a VAE (encoder here, decoder in zoo.py), Gaussian likelihood with a modest KL
  weight; afterwards one Gaussian is fitted to the aggregate posterior of the training scenes
  and folded into the decoder's first layer (ex-post density estimation), so z ~ N(0, I) gives
  scene-like samples. Only the decoder ships.

Weights are saved as float16 state dicts (float32 once loaded); the reported metrics are those of
the float16 weights. `weights/manifest.json` records a SHA-256 of every tensor (names, dtypes,
shapes, bytes), the settings and the metrics.

Reproducibility: the run is deterministic on CPU (`torch.use_deterministic_algorithms`, fixed
thread count, explicit generators for every random draw), so the same machine with the same torch
build and `--threads` reproduces the weights bit for bit (`--check` verifies it). Another CPU,
BLAS/oneDNN build, torch version or thread count may round differently in the last bits, and
training amplifies that: expect other bits and slightly different metrics (not measured here). File bytes of a
`.pt` are not compared (the zip container may differ); tensor digests are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoolens.demo import zoo as demo
from zoolens.sources.synthetic import BACKGROUNDS, COLORS, SHAPES, _background, render_scene
from zoolens.zoo._preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["TrainConfig", "QUICK", "Scenes", "render", "train_all", "state_digest", "main"]

MODELS = ("classifier", "ssl_vit", "generator")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    threads: int = 1  # one thread: the most portable kernel order, and as fast on a busy CPU
    n_train: int = 6000
    n_val: int = 1000
    train_seed: int = 1000  # synthetic stream of the training scenes
    val_seed: int = 0  # held-out stream (the default `synthetic:scenes`)
    # classifier
    cnn_epochs: int = 8
    cnn_batch: int = 128
    cnn_lr: float = 3e-3
    # ssl_vit
    vit_steps: int = 400
    vit_batch: int = 128
    vit_lr: float = 2e-3
    vit_temperature: float = 0.1
    vit_crop_scale: tuple[float, float] = (0.4, 1.0)
    vit_jitter: float = 0.2  # brightness / contrast / saturation factors in [1 - j, 1 + j]
    vit_bg_swap: float = 0.8  # probability that a view shows its objects on another background
    vit_gray: float = 0.2  # probability that a view is grayscale
    vit_recolor: float = 0.4  # probability that a view's objects get their RGB channels permuted
    # generator
    vae_epochs: int = 8
    vae_batch: int = 128
    vae_lr: float = 2e-3
    vae_beta: float = 0.5  # KL weight against a summed squared error over [-1, 1] pixels
    n_knn_train: int = 3000  # k-NN metric: training scenes used as the neighbour bank


# A few steps on a few images: for tests of determinism, not for use.
QUICK = TrainConfig(n_train=48, n_val=32, cnn_epochs=1, cnn_batch=16, vit_steps=2, vit_batch=16,
                    vae_epochs=1, vae_batch=16, n_knn_train=48)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

@dataclass
class Scenes:
    images: torch.Tensor  # (N, 3, 64, 64) uint8
    shape: torch.Tensor  # (N,) int64 index into SHAPES: the label (largest object's shape)
    color: torch.Tensor  # (N,) int64 index into COLORS: the largest object's colour
    foreground: torch.Tensor  # (N, 1, 64, 64) bool: object pixels
    background: torch.Tensor  # (N, 3, 64, 64) uint8: the scene's background without objects

    def __len__(self) -> int:
        return len(self.shape)


def render(n: int, seed: int, size: int = demo.IMAGE_SIZE) -> Scenes:
    """Scenes 0..n-1 of the synthetic stream `seed` (2 objects at most), as tensors."""
    imgs, bgs = np.empty((2, n, size, size, 3), np.uint8)
    fg = np.empty((n, 1, size, size), bool)
    shape, color = np.empty(n, np.int64), np.empty(n, np.int64)
    names = list(COLORS)
    for i in range(n):
        sc = render_scene(i, size, seed, 2)
        imgs[i], fg[i, 0] = sc.image, sc.instances > 0
        areas = [(sc.instances == k + 1).sum() for k in range(len(sc.shapes))]
        big = int(np.argmax(areas))
        shape[i], color[i] = SHAPES.index(sc.label), names.index(sc.colors[big])
        # render_scene draws the background first from the same stream: replay just that
        rng = np.random.default_rng([seed, i])
        bgs[i] = np.clip(_background(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], rng, size), 0, 255)
    def chw(a):
        return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()

    return Scenes(chw(imgs), torch.from_numpy(shape), torch.from_numpy(color),
                  torch.from_numpy(fg), chw(bgs))


_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0


def _normalize(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> what `default_transform(64)` gives a 64 px image (ImageNet mean/std)."""
    return (x01 - _MEAN) / _STD


def _dihedral(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image through one of the 8 flips / quarter turns, drawn per image."""
    b = x.shape[0]
    flip, turn = torch.rand(b, generator=g) < 0.5, torch.randint(0, 4, (b,), generator=g)
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    out = x.clone()
    for k in (1, 2, 3):
        sel = turn == k
        if sel.any():
            out[sel] = torch.rot90(x[sel], k, (2, 3))
    return out


def _lr(step: int, total: int, base: float, warmup: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to zero."""
    w = max(1, int(total * warmup))
    if step < w:
        return base * (step + 1) / w
    return base * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def _batches(n: int, batch: int, g: torch.Generator):
    perm = torch.randperm(n, generator=g)
    for s in range(0, n - batch + 1, batch):  # drop the ragged end: fixed batch statistics
        yield perm[s:s + batch]


# --------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------

def train_classifier(data: Scenes, cfg: TrainConfig, log=print) -> nn.Module:
    torch.manual_seed(cfg.seed + 1)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    net = demo.SceneCNN()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.cnn_lr, weight_decay=5e-4)
    per_epoch = len(data) // cfg.cnn_batch
    total, step = cfg.cnn_epochs * per_epoch, 0
    net.train()
    for epoch in range(cfg.cnn_epochs):
        run = 0.0
        for idx in _batches(len(data), cfg.cnn_batch, g):
            for group in opt.param_groups:
                group["lr"] = _lr(step, total, cfg.cnn_lr)
            x = _normalize(_dihedral(_unit(data.images[idx]), g))
            shape_logits, color_logits = net.forward_heads(x)
            loss = F.cross_entropy(shape_logits, data.shape[idx]) + \
                0.5 * F.cross_entropy(color_logits, data.color[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run += loss.item()
            step += 1
        log(f"  classifier epoch {epoch + 1}/{cfg.cnn_epochs} loss {run / max(1, per_epoch):.4f}")
    return net.eval()


@torch.no_grad()
def _classifier_metrics(net: nn.Module, val: Scenes) -> dict:
    shape_pred, color_pred = [], []
    for s in range(0, len(val), 256):
        a, b = net.forward_heads(_normalize(_unit(val.images[s:s + 256])))
        shape_pred.append(a.argmax(1))
        color_pred.append(b.argmax(1))
    return {"shape_accuracy": float((torch.cat(shape_pred) == val.shape).double().mean()),
            "color_accuracy": float((torch.cat(color_pred) == val.color).double().mean())}


# --------------------------------------------------------------------------------------------
# SimCLR ViT
# --------------------------------------------------------------------------------------------

def _view(x01: torch.Tensor, fg: torch.Tensor, bg01: torch.Tensor, g: torch.Generator,
          cfg: TrainConfig) -> torch.Tensor:
    """One augmented view per image: background swap (objects pasted on another scene's
    background), random resized crop + flip/quarter turn (one affine resampling), then mild
    brightness, contrast and saturation jitter, and sometimes grayscale. (B,3,H,W) in [0, 1]."""
    b = x01.shape[0]
    swap = (torch.rand(b, generator=g) < cfg.vit_bg_swap).view(b, 1, 1, 1)
    other = bg01[torch.randperm(b, generator=g)]
    x01 = torch.where(swap & ~fg, other, x01)
    # recolour: permute the objects' RGB channels (maps the palette onto itself, e.g. red ->
    # green, yellow -> cyan), so object colour cannot always tell two images apart
    perms = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
    perm = perms[torch.randint(0, 6, (b,), generator=g)]
    recolor = (torch.rand(b, generator=g) < cfg.vit_recolor).view(b, 1, 1, 1)
    permuted = torch.gather(x01, 1, perm.view(b, 3, 1, 1).expand_as(x01))
    x01 = torch.where(recolor & fg, permuted, x01)
    lo, hi = cfg.vit_crop_scale
    area = lo + (hi - lo) * torch.rand(b, generator=g)
    log_r = (torch.rand(b, generator=g) * 2 - 1) * math.log(4 / 3)
    sx = (area * torch.exp(log_r)).sqrt().clamp(max=1.0)
    sy = (area * torch.exp(-log_r)).sqrt().clamp(max=1.0)
    tx = (torch.rand(b, generator=g) * 2 - 1) * (1 - sx)
    ty = (torch.rand(b, generator=g) * 2 - 1) * (1 - sy)
    angle = torch.randint(0, 4, (b,), generator=g).double() * (math.pi / 2)
    cos, sin = angle.cos().round().float(), angle.sin().round().float()
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.stack([torch.stack([cos * sx * flip, -sin * sy, tx], 1),
                         torch.stack([sin * sx * flip, cos * sy, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    v = F.grid_sample(x01, grid, mode="bilinear", padding_mode="border", align_corners=False)
    j = cfg.vit_jitter

    def factor():
        return (1 - j + 2 * j * torch.rand(b, generator=g)).view(b, 1, 1, 1)

    v = v * factor()  # brightness
    mean = v.mean((1, 2, 3), keepdim=True)
    v = (v - mean) * factor() + mean  # contrast
    gray = (0.299 * v[:, :1] + 0.587 * v[:, 1:2] + 0.114 * v[:, 2:])
    v = (v - gray) * factor() + gray  # saturation; no hue shift: colours keep their names
    gray = (0.299 * v[:, :1] + 0.587 * v[:, 1:2] + 0.114 * v[:, 2:])
    v = torch.where((torch.rand(b, generator=g) < cfg.vit_gray).view(b, 1, 1, 1), gray.expand_as(v), v)
    return v.clamp(0, 1)


def _info_nce(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2B embeddings where rows i and i + B are the two views of one image."""
    n = z.shape[0] // 2
    z = F.normalize(z, dim=1)
    sim = (z @ z.t()) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), -1e9)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def train_ssl_vit(data: Scenes, cfg: TrainConfig, log=print) -> nn.Module:
    torch.manual_seed(cfg.seed + 2)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    vit = demo.SceneViT()
    d = vit.embed_dim
    proj = nn.Sequential(nn.Linear(d, 256), nn.GELU(), nn.Linear(256, 64))
    params = list(vit.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vit_lr, weight_decay=0.05)
    vit.train()
    run, every = 0.0, max(1, cfg.vit_steps // 8)
    for step in range(cfg.vit_steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg.vit_steps, cfg.vit_lr, warmup=0.1)
        idx = torch.randint(0, len(data), (cfg.vit_batch,), generator=g)
        x, fg, bg = _unit(data.images[idx]), data.foreground[idx], _unit(data.background[idx])
        views = torch.cat([_view(x, fg, bg, g, cfg), _view(x, fg, bg, g, cfg)])
        loss = _info_nce(proj(vit(_normalize(views))), cfg.vit_temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        opt.step()
        run += loss.item()
        if (step + 1) % every == 0:
            log(f"  ssl_vit step {step + 1}/{cfg.vit_steps} loss {run / every:.4f}")
            run = 0.0
    return vit.eval()


@torch.no_grad()
def _embed(net: nn.Module, images: torch.Tensor, pool: str = "cls") -> np.ndarray:
    """CLS embedding (the module's output) or the mean of the final patch tokens."""
    out = []
    for s in range(0, len(images), 256):
        x = _normalize(_unit(images[s:s + 256]))
        out.append(net(x) if pool == "cls" else net.forward_features(x)[:, 1:].mean(1))
    return torch.cat(out).numpy()


def _vit_metrics(vit: nn.Module, train: Scenes, val: Scenes, cfg: TrainConfig) -> dict:
    from zoolens.analyses.probes.knn import knn_classify

    n = min(cfg.n_knn_train, len(train))
    out = {}
    for pool in ("cls", "mean"):
        bank, query = _embed(vit, train.images[:n], pool), _embed(vit, val.images, pool)
        for name, tr, va in (("shape", train.shape[:n], val.shape), ("color", train.color[:n], val.color)):
            pred = knn_classify(bank, tr.numpy(), query, k=20, temperature=0.07)
            out[f"knn_{name}_accuracy_{pool}"] = float(np.mean(pred == va.numpy()))
    out["knn_bank"] = n
    return out


# --------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------

class Encoder(nn.Module):
    """(B, 3, 64, 64) in [-1, 1] -> (mu, logvar), each (B, latent_dim). Training only."""

    def __init__(self, latent_dim: int = demo.LATENT_DIM, widths=(16, 32, 64, 96)):
        super().__init__()
        layers, cin = [], 3
        for w in widths:
            layers += [nn.Conv2d(cin, w, 4, 2, 1), nn.SiLU()]
            cin = w
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(cin * 16, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.fc(self.features(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)


def train_vae(data: Scenes, cfg: TrainConfig, log=print) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(cfg.seed + 3)
    g = torch.Generator().manual_seed(cfg.seed + 3)
    enc, dec = Encoder(), demo.Decoder()
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vae_lr, weight_decay=1e-5)
    per_epoch = len(data) // cfg.vae_batch
    total, step = cfg.vae_epochs * per_epoch, 0
    enc.train(), dec.train()
    for epoch in range(cfg.vae_epochs):
        rec_sum = kl_sum = 0.0
        for idx in _batches(len(data), cfg.vae_batch, g):
            for group in opt.param_groups:
                group["lr"] = _lr(step, total, cfg.vae_lr)
            x = _dihedral(_unit(data.images[idx]), g) * 2 - 1
            mu, logvar = enc(x)
            z = mu + torch.randn(mu.shape, generator=g) * (0.5 * logvar).exp()
            rec = (dec(z) - x).pow(2).flatten(1).sum(1).mean()
            kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
            loss = rec + cfg.vae_beta * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 100.0)
            opt.step()
            rec_sum, kl_sum, step = rec_sum + rec.item(), kl_sum + kl.item(), step + 1
        log(f"  generator epoch {epoch + 1}/{cfg.vae_epochs} recon {rec_sum / max(1, per_epoch):.1f} "
            f"kl {kl_sum / max(1, per_epoch):.1f}")
    return dec.eval(), enc.eval()


@torch.no_grad()
def fold_aggregate_prior(dec: nn.Module, enc: nn.Module, data: Scenes) -> dict:
    """Ex-post density estimation (Ghosh et al. 2020): fit one Gaussian N(m, C) to the aggregate
    posterior of the training scenes and fold z -> m + L z (C = L L^T) into `dec.fc`, so that
    z ~ N(0, I) lands where the data's latents are, not in the holes a small KL weight leaves.
    C = Cov(mu) + mean(diag sigma^2): the covariance of the mixture of posteriors."""
    mus, variances = [], []
    for s in range(0, len(data), 512):
        mu, logvar = enc(_unit(data.images[s:s + 512]) * 2 - 1)
        mus.append(mu.double())
        variances.append(logvar.double().exp())
    mu, var = torch.cat(mus), torch.cat(variances)
    m = mu.mean(0)
    cov = torch.cov(mu.t()) + torch.diag(var.mean(0))
    chol = torch.linalg.cholesky(cov)
    w, b = dec.fc.weight.double(), dec.fc.bias.double()
    dec.fc.weight.copy_((w @ chol).float())
    dec.fc.bias.copy_((w @ m + b).float())
    return {"prior_mean": m, "prior_chol": chol}


@torch.no_grad()
def _vae_metrics(dec: nn.Module, enc: nn.Module, val: Scenes, seed: int, prior: dict) -> dict:
    """Reconstruction of held-out scenes through the folded decoder (latent mapped back by
    L^-1 (mu - m)), KL of the original posterior, and the spread of prior samples."""
    x = _unit(val.images) * 2 - 1
    mu, logvar = enc(x)
    z = torch.linalg.solve_triangular(prior["prior_chol"], (mu.double() - prior["prior_mean"]).t(),
                                      upper=False).t().float()
    rec = dec(z)
    mse01 = float(((rec - x) / 2).pow(2).double().mean())  # per pixel, on the [0, 1] scale
    kl = float((-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).double().mean())
    z = torch.randn((256, demo.LATENT_DIM), generator=torch.Generator().manual_seed(seed))
    samples = dec(z)
    # samples should vary: per-pixel std across samples vs the data's own
    return {"recon_mse_01": mse01, "recon_psnr_db": -10 * math.log10(mse01), "kl_nats": kl,
            "sample_pixel_std": float(samples.std(0).mean()), "data_pixel_std": float(x.std(0).mean())}


# --------------------------------------------------------------------------------------------
# Saving, digests, driver
# --------------------------------------------------------------------------------------------

def half_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with floating tensors in float16 (what ships)."""
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
            for k, v in module.state_dict().items()}


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every tensor, in name order."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _ship(module: nn.Module, name: str, out: Path | None) -> tuple[dict, str]:
    """Round the module to the shipped float16 weights (in place), save them, return digest."""
    state = half_state(module)
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    if out is not None:
        torch.save(state, out / f"{name}.pt")
    return state, state_digest(state)


@contextmanager
def deterministic(threads: int):
    """Deterministic kernels and a fixed thread count, restored afterwards."""
    prev = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0])
        torch.set_num_threads(prev[1])


def train_all(cfg: TrainConfig = TrainConfig(), out: str | Path | None = None,
              only: tuple[str, ...] = MODELS, log=print) -> dict:
    """Train the models in `only`; write `<name>.pt` and `manifest.json` under `out` (None:
    write nothing; entries of models not retrained are kept). Returns the manifest: per model
    its tensor digest, parameter count, metrics, seconds and the settings it was trained with."""
    assert tuple(demo.SHAPE_CLASSES) == tuple(SHAPES) and tuple(demo.COLOR_CLASSES) == tuple(COLORS)
    out = Path(out) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    manifest = {"models": {}}
    with deterministic(cfg.threads), torch.random.fork_rng(devices=[]):
        t0 = time.perf_counter()
        train, val = render(cfg.n_train, cfg.train_seed), render(cfg.n_val, cfg.val_seed)
        log(f"rendered {cfg.n_train} + {cfg.n_val} scenes in {time.perf_counter() - t0:.1f}s")
        for name in only:
            t0 = time.perf_counter()
            if name == "classifier":
                net = train_classifier(train, cfg, log)
                state, digest = _ship(net, name, out)
                metrics = _classifier_metrics(net, val)
            elif name == "ssl_vit":
                net = train_ssl_vit(train, cfg, log)
                state, digest = _ship(net, name, out)
                metrics = _vit_metrics(net, train, val, cfg)
            elif name == "generator":
                net, enc = train_vae(train, cfg, log)
                prior = fold_aggregate_prior(net, enc, train)
                state, digest = _ship(net, name, out)
                metrics = _vae_metrics(net, enc, val, cfg.seed, prior)
            else:
                raise ValueError(f"unknown demo model {name!r}; have {', '.join(MODELS)}")
            seconds = time.perf_counter() - t0
            manifest["models"][name] = {
                "file": f"{name}.pt", "sha256_tensors": digest,
                "params": int(sum(v.numel() for k, v in state.items() if v.is_floating_point())),
                "metrics": metrics, "seconds": round(seconds, 1), "torch": torch.__version__,
                "config": asdict(cfg)}
            log(f"{name}: {json.dumps(metrics)} ({seconds:.0f}s)")
    if out is not None:
        old = out / "manifest.json"
        if old.is_file():
            kept = json.loads(old.read_text()).get("models", {})
            manifest["models"] = {**{k: v for k, v in kept.items() if k in MODELS},
                                  **manifest["models"]}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(demo.WEIGHTS_DIR), help="weights folder")
    p.add_argument("--only", default=",".join(MODELS), help="comma list of " + ", ".join(MODELS))
    p.add_argument("--threads", type=int, default=TrainConfig.threads)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--quick", action="store_true", help="a few steps on a few images (smoke test)")
    p.add_argument("--check", action="store_true",
                   help="retrain, write nothing, compare tensor digests with OUT/manifest.json")
    args = p.parse_args(argv)
    cfg = replace(QUICK if args.quick else TrainConfig(), threads=args.threads, seed=args.seed)
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    t0 = time.perf_counter()
    manifest = train_all(cfg, None if args.check else args.out, only)
    print(f"total {time.perf_counter() - t0:.0f}s")
    if args.check:
        want = json.loads((Path(args.out) / "manifest.json").read_text())["models"]
        bad = [n for n in only if want.get(n, {}).get("sha256_tensors")
               != manifest["models"][n]["sha256_tensors"]]
        print("reproduced: " + ("all" if not bad else "NOT " + ", ".join(bad)))
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
