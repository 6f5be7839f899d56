"""`zoolens demo`: every analysis on the built-in demo zoo, offline, in a few minutes on a CPU.

1. Rosetta mining across the zoo, generator included: held-out scenes are encoded into the
   VAE's latent space and decoded by the generator, which is tapped while it draws them, so
   the images keep their scenes' ground truth; the classifier and the ViT look at them.
   Every concept is scored against the ground-truth masks (shape, colour, background, object,
   edges) by IoU: the mined concepts mean something, in numbers.
2. CKA between the classifier and the ViT, layer by layer.
3. The probe leaderboard (k-NN, linear heads, LogME) on held-out scenes.
4. Object discovery with the ViT, each image's masks scored against its objects.
5. Out-of-distribution detection with the classifier and the ViT: the demo's scenes are in
   distribution; scenes with shapes and backgrounds the zoo never saw, and real photographs
   (scikit-image's sample images, when it is installed), are not. The ground truth is which
   set an image came from: every model, layer and method is scored by AUROC.
6. One HTML report of it all.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..sources.generated import GeneratedImages
from ..sources.memory import TensorSource
from ..sources.synthetic import SyntheticScenes
from .zoo import DEMO_ZOO

__all__ = ["run_demo", "scene_latents", "photographs"]

log = logging.getLogger("zoolens")

_SEEDS = {"rosetta": 101, "compare": 102, "train": 103, "test": 104, "discover": 105,
          "new_shapes": 106, "new_scenes": 107, "photos": 108}
# scikit-image's sample photographs that ship with it (no download): people, animals, objects,
# textures, text, a microscope slide, the night sky
_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "clock",
           "brick", "grass", "gravel", "page", "text", "hubble_deep_field",
           "immunohistochemistry", "retina")


def scene_latents(generator, scenes: SyntheticScenes, *, steps: int = 40,
                  seed: int = 0) -> torch.Tensor:
    """Latents whose decodings reproduce `scenes`: the VAE's encoder where the zoo ships one,
    else a seeded inversion through the decoder (Adam on ||G(z) - x||^2 + 1e-3 ||z||^2)."""
    x = torch.stack([torch.as_tensor(scenes.scene(i).image) for i in range(len(scenes))])
    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # the generator's [-1, 1]
    from . import zoo

    if hasattr(zoo, "encoder"):
        enc = zoo.encoder(pretrained=True)
        module = enc["module"] if isinstance(enc, dict) else enc
        with torch.inference_mode():
            return module.eval()(x).detach().float()
    g = torch.Generator().manual_seed(seed)
    z = (0.1 * torch.randn(len(x), *generator.input_shape, generator=g)).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.1)  # 40 steps: MSE 0.127 vs 0.109 at 150, 0.185 at z = 0
    net = generator.module
    for p in net.parameters():
        p.requires_grad_(False)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((net(z) - x) ** 2).mean() + 1e-3 * (z ** 2).mean()
        loss.backward()
        opt.step()
    return z.detach()


def photographs(n: int, size: int = 64, seed: int = 0) -> TensorSource | None:
    """`n` square crops of scikit-image's sample photographs at `size` px: each photograph
    whole (its centre square) first, then seeded crops of 35-80% of its side; None when
    scikit-image is not installed."""
    try:
        from skimage import data
    except ImportError:
        return None
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in _PHOTOS]
    images, ids = [], []
    for i in range(n):
        photo, rnd = photos[i % len(photos)], i // len(photos)
        if rnd == 0:  # the whole photograph: its centre square
            side = min(photo.size)
            x0, y0 = (photo.width - side) // 2, (photo.height - side) // 2
        else:
            side = int(min(photo.size) * rng.uniform(0.35, 0.8))
            x0 = int(rng.integers(0, photo.width - side + 1))
            y0 = int(rng.integers(0, photo.height - side + 1))
        images.append(photo.crop((x0, y0, x0 + side, y0 + side)).resize((size, size),
                                                                        Image.BICUBIC))
        ids.append(f"photo_{_PHOTOS[i % len(photos)]}_{rnd}")
    source = TensorSource(images, ids=ids)
    source.description = f"skimage.data photographs?n={n}&size={size}&seed={seed}"
    return source


def _ood_summary(result) -> dict:
    """Per model, its best layer and method by mean AUROC over the OOD sets, and the AUROC of
    each set there."""
    best = result.best_per_model()
    return {m: {"layer": b["layer"], "method": b["method"],
                "mean_auroc": round(b["mean_auroc"], 4),
                "auroc": {k: round(v, 4) for k, v in b["auroc"].items()}}
            for m, b in best.items()}


def _discovery_scores(summary: dict, scenes: SyntheticScenes, out: Path) -> dict:
    """Per image, the best IoU of any discovered mask with any ground-truth object."""
    from PIL import Image

    best = []
    for entry in summary["images"]:
        scene = scenes.scene(entry["index"])
        objects = [scene.instances == k + 1 for k in range(len(scene.shapes))]
        ious = [0.0]
        for m in entry["masks"]:
            mask = np.asarray(Image.open(out / m["file"])) > 127
            ious += [float((mask & o).sum() / max((mask | o).sum(), 1)) for o in objects]
        best.append(max(ious))
    return {"images": len(best), "mean_best_iou": round(float(np.mean(best)), 4) if best else None,
            "best_iou_per_image": [round(v, 4) for v in best]}


def run_demo(out: str | Path = "zoolens-demo", *, images: int = 64, device=None,
             pretrained: bool = True, progress: bool = True, backend=None) -> Path:
    """Run the whole demo into `out` and return the path of `out/report.html`.
    `pretrained=False` runs the same pipeline on untrained networks (for tests). backend:
    where the models run ("local", "ray" or a `zoolens.RayBackend`)."""
    import zoolens
    from ..backends import resolve_backend
    from ..analyses.discovery import discover
    from ..analyses.ood import evaluate as detect_ood
    from ..analyses.similarity import compare
    from ..report.html import build_report
    from .scoring import score_concepts

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    runner = resolve_backend(backend)
    # small models and batches: decoding in this process beats starting DataLoader workers
    run = {"backend": runner, "num_workers": 0 if runner.name == "local" else None,
           "device": device}
    models = {name: zoolens.load(spec, pretrained=pretrained, device=runner.load_device(device),
                                 name=name)
              for name, spec in DEMO_ZOO.items()}

    # 1. Rosetta neurons, the generator drawing encoded held-out scenes
    start = time.perf_counter()
    scenes = SyntheticScenes(n=images, size=64, seed=_SEEDS["rosetta"])
    latents = scene_latents(models["generator"], scenes)
    drawn = GeneratedImages(models["generator"], latents=latents, ids=scenes.ids)
    result = zoolens.rosetta([models["classifier"], models["ssl_vit"]], drawn, layers="blocks",
                             mode="relaxed", k=5,
                             concepts=6, batch_size=32, progress=progress,
                             out=out / "rosetta", **run)
    scores = score_concepts(result, scenes, out / "rosetta")
    saved = json.loads((out / "rosetta" / "rosetta.json").read_text())
    saved["concept_scores"] = scores
    (out / "rosetta" / "rosetta.json").write_text(json.dumps(saved, indent=1))
    timings["rosetta"] = time.perf_counter() - start

    # 2. CKA between the classifier and the ViT
    start = time.perf_counter()
    compare(models["classifier"], models["ssl_vit"],
            f"synthetic:scenes?n={images}&size=64&seed={_SEEDS['compare']}",
            metric="cka", progress=progress, out=out / "compare", **run)
    timings["compare"] = time.perf_counter() - start

    # 3. The probe leaderboard
    start = time.perf_counter()
    zoolens.probe([models["classifier"], models["ssl_vit"]],
                  f"synthetic:scenes?n={4 * images}&size=64&seed={_SEEDS['train']}",
                  f"synthetic:scenes?n={2 * images}&size=64&seed={_SEEDS['test']}",
                  methods=("knn", "linear", "logme"), k=(10, 20), out=out / "probe",
                  linear_options={"epochs": 50}, progress=progress, **run)
    timings["probe"] = time.perf_counter() - start

    # 4. Object discovery with the self-supervised ViT
    start = time.perf_counter()
    found = SyntheticScenes(n=max(4, images // 4), size=64, seed=_SEEDS["discover"])
    discover(models["ssl_vit"], found, objects=3, progress=progress, out=out / "discover",
             **run)
    summary = json.loads((out / "discover" / "discover.json").read_text())
    summary["ground_truth"] = _discovery_scores(summary, found, out / "discover")
    (out / "discover" / "discover.json").write_text(json.dumps(summary, indent=1))
    timings["discover"] = time.perf_counter() - start

    # 5. Out-of-distribution detection: the probe's scenes are in distribution
    start = time.perf_counter()
    scenes_ood = f"synthetic:scenes?n={images}&size=64&seed={{}}&shapes=star,ring,hexagon"
    ood_sets: dict = {"new_shapes": scenes_ood.format(_SEEDS["new_shapes"]),
                      "new_scenes": scenes_ood.format(_SEEDS["new_scenes"])
                      + "&backgrounds=waves,dots"}
    photos = photographs(images, seed=_SEEDS["photos"])
    ood_notes = []
    if photos is not None:
        ood_sets["photos"] = photos
    else:
        ood_notes.append("photos: skipped, scikit-image is not installed "
                         "(pip install scikit-image adds its sample photographs as an OOD set)")
        log.warning(ood_notes[-1])
    # k = 10: the k-NN paper's k = 50 is for 50,000 training images; here there are 256
    detected = detect_ood([models["classifier"], models["ssl_vit"]],
                   f"synthetic:scenes?n={4 * images}&size=64&seed={_SEEDS['train']}",
                   f"synthetic:scenes?n={2 * images}&size=64&seed={_SEEDS['test']}", ood_sets,
                   k=10, progress=progress, out=out / "ood", **run)
    ood_scores = {"sets": {n: getattr(s, "description", s) for n, s in ood_sets.items()},
                  "best": _ood_summary(detected), "notes": ood_notes}
    timings["ood"] = time.perf_counter() - start

    timings["total"] = time.perf_counter() - t0
    demo = {"zoo": DEMO_ZOO, "images": images, "seeds": _SEEDS,
            "seconds": {k: round(v, 1) for k, v in timings.items()},
            "concept_scores": scores, "discovery": summary["ground_truth"],
            "ood": ood_scores, "torch_threads": torch.get_num_threads()}
    (out / "demo.json").write_text(json.dumps(demo, indent=1))
    return build_report(out, out / "report.html", title="zoolens demo")
