"""The built-in demo zoo: three small models trained on `synthetic:scenes` (64 x 64 px).

- `classifier`: a supervised ResNet-style CNN predicting the scene label (the largest object's
  shape, 4 classes), with an auxiliary colour head trained alongside (6 classes).
- `ssl_vit`: a ViT (conv stem of stride 8 -> 8 x 8 grid, 1 CLS token, depth 4, width 64)
  trained with a SimCLR objective (two augmented views, InfoNCE); its forward gives the CLS
  embedding. Plain torch modules, named like timm's (blocks.N.attn.qkv, ...).
- `generator`: the decoder of a small VAE, latent (32,) ~ N(0, I) -> image (3, 64, 64) in
  [-1, 1], usable as `--generator` (the fitted latent distribution is folded into `fc`).

Weights come from `scripts/train_demo_zoo.py` (seeded) and lie next to this file in `weights/`
(float16 on disk, float32 once loaded). The file is loaded through the ordinary `file:` zoo path,
e.g. ``zoolens.load(DEMO_ZOO["classifier"])``, so it imports zoolens absolutely, never relatively.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = [
    "DEMO_ZOO", "WEIGHTS_DIR", "IMAGE_SIZE", "LATENT_DIM", "SHAPE_CLASSES", "COLOR_CLASSES",
    "SceneCNN", "SceneViT", "Decoder", "classifier", "ssl_vit", "generator", "load_weights",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
IMAGE_SIZE = 64
LATENT_DIM = 32
# Same order as zoolens.sources.synthetic.SHAPES / COLORS (the training script checks this).
SHAPE_CLASSES = ("circle", "square", "triangle", "cross")
COLOR_CLASSES = ("red", "green", "blue", "yellow", "magenta", "cyan")
_INIT_SEED = 0  # pretrained=False: the same random network every time

DEMO_ZOO = {name: f"file:{Path(__file__).resolve()}:{name}"
            for name in ("classifier", "ssl_vit", "generator")}


# --------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------

class ResBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a (projected) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(y + self.shortcut(x))


class SceneCNN(nn.Module):
    """(B, 3, 64, 64) ImageNet-normalised -> (B, 4) shape logits.

    Blocks `blocks.0..3` give maps of 16x16x32, 8x8x48, 8x8x64, 4x4x96 (strides 4, 8, 8, 16).
    `forward_heads` also returns the auxiliary (B, 6) colour logits of the largest object.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 48, 64, 96), strides=(2, 2, 1, 2),
                 num_shapes: int = len(SHAPE_CLASSES), num_colors: int = len(COLOR_CLASSES)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        cins = (widths[0],) + tuple(widths[:-1])
        self.blocks = nn.Sequential(*[ResBlock(i, o, s) for i, o, s in zip(cins, widths, strides)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(widths[-1], num_shapes)
        self.head_color = nn.Linear(widths[-1], num_colors)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C) pooled features."""
        return self.pool(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.forward_features(x)
        return self.head(f), self.head_color(f)


class ConvStem(nn.Module):
    """Patch embedding from three 3x3 stride-2 convolutions (64 px -> 8 x 8 tokens), the
    "early convolutions" of Xiao et al. 2021: small ViTs train far faster on little data."""

    def __init__(self, dim: int, widths: tuple[int, int] = (16, 32)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 2, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, 2, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(widths[1])
        self.act2 = nn.ReLU(inplace=True)
        self.proj = nn.Conv2d(widths[1], dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) -> (B, 64, dim) patch tokens, row-major."""
        x = self.act2(self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x))))))
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SceneViT(nn.Module):
    """A small ViT: (B, 3, 64, 64) ImageNet-normalised -> (B, D) CLS embedding.

    Conv stem to an 8 x 8 grid (stride 8), one CLS token, learned position embeddings,
    `depth` pre-norm blocks `blocks.0..` each emitting (B, 1 + 64, D) tokens, CLS first."""

    def __init__(self, embed_dim: int = 64, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 2.0):
        super().__init__()
        self.embed_dim, self.grid = embed_dim, IMAGE_SIZE // 8
        self.patch_embed = ConvStem(embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) -> (B, 65, D) normalised tokens, CLS first."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[:, 0]


class UpBlock(nn.Module):
    """Doubles the resolution: transposed conv 4x4 / 2, GroupNorm, SiLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 4, 2, 1)
        self.norm = nn.GroupNorm(8, cout)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.up(x)))


class Decoder(nn.Module):
    """A VAE decoder: (B, latent_dim) -> (B, 3, 64, 64) in [-1, 1]; trained weights expect
    z ~ N(0, I) (the training script folds the data's latent Gaussian into `fc`).

    Blocks `blocks.0..3` give maps at 8, 16, 32, 64 px. GroupNorm, not BatchNorm, so prior
    samples see the same normalisation as the posterior samples it was trained on."""

    def __init__(self, latent_dim: int = LATENT_DIM, widths: tuple[int, ...] = (96, 64, 48, 32, 16)):
        super().__init__()
        self.widths = widths
        self.fc = nn.Linear(latent_dim, widths[0] * 16)
        self.blocks = nn.Sequential(*[UpBlock(i, o) for i, o in zip(widths, widths[1:])])
        self.to_rgb = nn.Conv2d(widths[-1], 3, 3, 1, 1)
        self.out = nn.Tanh()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc(z)).view(z.shape[0], self.widths[0], 4, 4)
        return self.out(self.to_rgb(self.blocks(x)))


# --------------------------------------------------------------------------------------------
# Factories (the `file:` zoo path calls these)
# --------------------------------------------------------------------------------------------

def _fresh(build):
    """A randomly initialised module, the same one every call, leaving the global RNG alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_INIT_SEED)
        return build()


def load_weights(module: nn.Module, name: str) -> nn.Module:
    """Load `weights/<name>.pt` (float16 on disk) into `module` as float32."""
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"demo zoo: no weights {str(path)!r}; run scripts/train_demo_zoo.py "
                                "or load with pretrained=False")
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return module


def _preprocess():
    from zoolens.zoo._preprocess import default_transform

    # 64 px scenes pass through unchanged apart from ImageNet normalisation, as in training.
    return default_transform(IMAGE_SIZE)


def _meta(name: str, pretrained: bool) -> dict:
    return {"demo": name, "weights": str(WEIGHTS_DIR / f"{name}.pt") if pretrained else None}


def classifier(pretrained: bool = True) -> dict:
    """SceneCNN: the scene label (largest object's shape) from a 64 px scene."""
    net = _fresh(SceneCNN)
    if pretrained:
        load_weights(net, "classifier")
    return {"module": net, "preprocess": _preprocess(), "block_names": [f"blocks.{i}" for i in range(4)],
            "classifier": True,  # its forward output is the shape logits (`head`)
            "meta": _meta("classifier", pretrained) | {"classes": list(SHAPE_CLASSES)}}


def ssl_vit(pretrained: bool = True) -> dict:
    """SimCLR ViT: 1 CLS + 8 x 8 patch tokens per block."""
    net = _fresh(SceneViT)
    if pretrained:
        load_weights(net, "ssl_vit")
    return {"module": net, "preprocess": _preprocess(), "prefix_tokens": 1, "patch_grid": (8, 8),
            "block_names": [f"blocks.{i}" for i in range(len(net.blocks))],
            "meta": _meta("ssl_vit", pretrained)}


def generator(pretrained: bool = True) -> dict:
    """VAE decoder: latent (32,) ~ N(0, I) -> (3, 64, 64) image in [-1, 1]."""
    net = _fresh(Decoder)
    if pretrained:
        load_weights(net, "generator")
    return {"module": net, "latent_shape": (LATENT_DIM,), "output_range": (-1.0, 1.0),
            "block_names": [f"blocks.{i}" for i in range(len(net.blocks))],
            "meta": _meta("generator", pretrained)}
