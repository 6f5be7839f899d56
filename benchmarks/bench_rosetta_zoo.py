"""Rosetta's correlation step on real models: streaming CrossCorrelation against materialising.

Model A (default `timm:resnet18`, its 4 stage outputs: 64@56x56, 128@28, 256@14, 512@7) and
model B (default `timm:vit_tiny_patch16_224`, its 12 blocks: 192 ch each on the 14x14 patch grid,
the CLS token dropped) see the same `synthetic:scenes` images at 224 px, random weights (no
download). Every unit of A is correlated with every unit of B over (image, position) samples at
a common resolution R (default: `zoolens.analyses.rosetta.default_resolution`, the largest grid capped
at 32), as `zoolens.analyses.rosetta.rosetta` does.

Step 0, "forward" (shared, timed once): both models run over the images with zoolens' engine and
every batch's native per-layer maps (float32, (B, C, h, w)) are saved as .npy files in a temporary
folder. Each method then reads the same files, so the comparison isolates the correlation step;
the end-to-end figure is forward + step (file loading is reported apart).

- streaming: `zoolens.stats.CrossCorrelation` fed batch by batch, `correlation()` at the end.
  Takes each model's list of native layer maps with `resolution=R`: layers finer than R are
  resized inside, coarser ones are multiplied at their own grid. The flops of every matrix
  product it runs (resizes, adjoint moves, cross products) are counted by wrapping torch.mm.
- corrcoef:  the straightforward way: resize + concatenate each batch, keep it as (B*R*R, C)
  float32 NumPy, concatenate everything at the end and take np.corrcoef (float64).
- matmul:    same materialisation, then standardise in float64 and one A^T B product.

Each (method, image count) runs in its own process, so its peak RSS is its own; the growth of
peak RSS over the process's size before the first batch is reported at two image counts. The
effective cross-product rate, 2 Ca Cb N R^2 / step seconds (the flops of the plain product over
the resized samples), is set against torch.mm on a (Ca x 4096) @ (4096 x Cb) float32 product.

    python benchmarks/bench_rosetta_zoo.py [--images 48 96] [--batch 16] [--threads 1]
        [--models timm:resnet18 timm:vit_tiny_patch16_224]
        [--layers layer1,layer2,layer3,layer4 blocks] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _measure import peak_rss_mb, rss_mb  # benchmarks/_measure.py

METHODS = ("streaming", "corrcoef", "matmul")


# ----------------------------------------------------------------------------------------------
# step 0: forward once, save native maps


class _SaveMaps:
    """Engine sink: saves each batch's native maps, one .npy per (batch, model, layer).

    Times the gap between sink calls (decode + preprocess + both forwards) apart from saving.
    """

    def __init__(self, folder: Path, layers: dict[str, list[str]]):
        self.folder, self.layers = folder, layers
        self.batch_sizes: list[int] = []
        self.forward_s: list[float] = []
        self.save_s = 0.0
        self._mark = time.perf_counter()

    def update(self, batch) -> None:
        import numpy as np

        t = time.perf_counter()
        self.forward_s.append(t - self._mark)
        b = len(self.batch_sizes)
        for mi, (model, layers) in enumerate(self.layers.items()):
            for li, layer in enumerate(layers):
                x = batch.features[model][layer]["none"]
                np.save(self.folder / f"b{b:04d}_m{mi}_l{li}.npy", x.float().cpu().numpy())
        self.batch_sizes.append(len(batch.indices))
        self._mark = time.perf_counter()
        self.save_s += self._mark - t


def forward(specs: list[str], selectors: list[str], n_images: int, batch: int,
            resolution: int | None, folder: Path) -> dict:
    """Run both models over the images once; save the maps and a meta.json; return the meta."""
    import zoolens
    from zoolens.analyses.rosetta import default_resolution
    from zoolens.engine import run
    from zoolens.sinks import Need
    from zoolens.sources import open_source

    import torch

    torch.manual_seed(0)  # the same random weights (and dead units) from run to run
    models = [zoolens.load(s, pretrained=False) for s in specs]
    layers = {m.name: m.select(sel) for m, sel in zip(models, selectors)}
    infos = {m.name: m.layers(layers[m.name]) for m in models}
    if resolution is None:
        resolution = default_resolution(models, layers)
    source = open_source(f"synthetic:scenes?n={n_images}&size=224&seed=0")
    need = Need.of(layers, "none")
    sink = _SaveMaps(folder, layers)
    sink._mark = time.perf_counter()
    summary = run(models, source, need, [sink], batch_size=batch, num_workers=0,
                  progress=False)
    if summary.skipped:
        raise RuntimeError(f"images skipped: {summary.skipped}")
    meta = {"models": [m.name for m in models], "resolution": resolution,
            "layers": [[(i.name, i.channels, list(i.grid or ())) for i in infos[m.name]]
                       for m in models],
            "batch_sizes": sink.batch_sizes, "forward_s": sink.forward_s, "save_s": sink.save_s}
    (folder / "meta.json").write_text(json.dumps(meta))
    return meta


# ----------------------------------------------------------------------------------------------
# workers (one process per method and image count)


def _load_batch(folder: Path, meta: dict, b: int, keep: int):
    import numpy as np
    import torch

    return [[torch.from_numpy(np.load(folder / f"b{b:04d}_m{mi}_l{li}.npy")[:keep])
             for li in range(len(layers))] for mi, layers in enumerate(meta["layers"])]


def _plan(meta: dict, n_images: int) -> list[tuple[int, int]]:
    """(batch number, images kept from it) covering the first `n_images` images."""
    plan, start = [], 0
    for b, size in enumerate(meta["batch_sizes"]):
        if start >= n_images:
            break
        plan.append((b, min(size, n_images - start)))
        start += size
    if start < n_images:
        raise ValueError(f"only {start} images were extracted, {n_images} asked")
    return plan


def worker(method: str, folder: str, n_images: int, out: str) -> None:
    import numpy as np
    import torch

    from zoolens.resize import concat_resized
    from zoolens.stats import CrossCorrelation

    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    res = meta["resolution"]
    c_a, c_b = (sum(c for _, c, _ in layers) for layers in meta["layers"])
    plan = _plan(meta, n_images)
    rss0 = rss_mb()
    t_load = t_step = t_final = 0.0
    executed = [0]  # flops of every matrix product the streaming step runs
    if method == "streaming":
        bare_mm = torch.mm

        def counting_mm(x, y, **kw):
            executed[0] += 2 * x.shape[0] * x.shape[1] * y.shape[1]
            return bare_mm(x, y, **kw)

        torch.mm = counting_mm
        acc = CrossCorrelation(resolution=res)
        for b, keep in plan:
            t = time.perf_counter()
            maps_a, maps_b = _load_batch(folder, meta, b, keep)
            t_load += time.perf_counter() - t
            t = time.perf_counter()
            acc.update(maps_a, maps_b)
            t_step += time.perf_counter() - t
            del maps_a, maps_b
        torch.mm = bare_mm
        t = time.perf_counter()
        corr = acc.correlation()
        t_final = time.perf_counter() - t
    else:
        xs, ys = [], []
        for b, keep in plan:
            t = time.perf_counter()
            maps_a, maps_b = _load_batch(folder, meta, b, keep)
            t_load += time.perf_counter() - t
            t = time.perf_counter()
            # reshape of the permuted view copies, so only the resized samples are kept
            xs.append(concat_resized(maps_a, res).permute(0, 2, 3, 1).reshape(-1, c_a).numpy())
            ys.append(concat_resized(maps_b, res).permute(0, 2, 3, 1).reshape(-1, c_b).numpy())
            t_step += time.perf_counter() - t
            del maps_a, maps_b
        t = time.perf_counter()
        x, y = np.concatenate(xs), np.concatenate(ys)
        del xs, ys
        if method == "corrcoef":
            with np.errstate(divide="ignore", invalid="ignore"):
                corr = np.corrcoef(x, y, rowvar=False)[:c_a, c_a:]
        else:  # standardise in float64, one big matmul
            x = x.astype(np.float64)
            y = y.astype(np.float64)
            x -= x.mean(0)
            y -= y.mean(0)
            with np.errstate(divide="ignore", invalid="ignore"):
                x /= np.sqrt((x * x).mean(0))
                y /= np.sqrt((y * y).mean(0))
            corr = (x.T @ y) / x.shape[0]
        t_final = time.perf_counter() - t
    np.save(out, np.ascontiguousarray(corr))
    print(json.dumps({"method": method, "images": n_images, "load_s": t_load,
                      "batch_s": t_step, "final_s": t_final, "step_s": t_step + t_final,
                      "rss_start_mb": rss0, "peak_rss_mb": peak_rss_mb(),
                      "executed_gflop": executed[0] / 1e9,
                      "threads": torch.get_num_threads()}))


def _mm_reference(c_a: int, c_b: int, k: int = 4096) -> float:
    """torch.mm GFLOP/s on (c_a x k) @ (k x c_b), float32."""
    import torch

    a, b = torch.randn(c_a, k), torch.randn(k, c_b)
    torch.mm(a, b)
    flops = 2 * c_a * c_b * k
    reps = max(3, int(1e11 / flops))
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return flops * reps / (time.perf_counter() - t) / 1e9


# ----------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs=2, default=["timm:resnet18", "timm:vit_tiny_patch16_224"])
    p.add_argument("--layers", nargs=2, default=["layer1,layer2,layer3,layer4", "blocks"],
                   help="one layer selector per model")
    p.add_argument("--images", type=int, nargs=2, default=[48, 96])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--resolution", type=int, default=None,
                   help="common grid R (default: zoolens.analyses.rosetta.default_resolution)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2,
                   help="runs per (method, images); the fastest step is kept, peak memory the max")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--worker", choices=METHODS)
    p.add_argument("--dir")
    p.add_argument("--out")
    args = p.parse_args()
    threads = str(args.threads)
    # before torch/NumPy load their BLAS, and inherited by the workers
    os.environ.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
                      MKL_NUM_THREADS=threads)
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker, args.dir, args.images[0], args.out)
        return

    import numpy as np

    n1, n2 = args.images
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench_rosetta_zoo_") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        meta = forward(args.models, args.layers, max(n1, n2), args.batch, args.resolution, tmp)
        wall_forward = time.perf_counter() - t
        for n in (n1, n2):
            for method in args.methods:
                out = str(tmp / f"{method}_{n}.npy")
                cmd = [sys.executable, __file__, "--worker", method, "--images", str(n), "0",
                       "--threads", threads, "--dir", str(tmp), "--out", out]
                tries = []
                for _ in range(args.repeats):
                    res = subprocess.run(cmd, capture_output=True, text=True)
                    if res.returncode:
                        sys.exit(f"worker {method} ({n} images) failed:\n{res.stderr}")
                    tries.append(json.loads(res.stdout.strip().splitlines()[-1]))
                best = min(tries, key=lambda r: r["step_s"])
                best["load_s"] = min(r["load_s"] for r in tries)
                best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in tries)
                best["growth_mb"] = max(r["peak_rss_mb"] - r["rss_start_mb"] for r in tries)
                plan = _plan(meta, n)
                best["forward_s"] = sum(meta["forward_s"][b] for b, _ in plan)
                best["total_s"] = best["forward_s"] + best["step_s"]
                best["corr"] = np.load(out)
                runs[(method, n)] = best

    res = meta["resolution"]
    c_a, c_b = (sum(c for _, c, _ in layers) for layers in meta["layers"])

    def describe(i: int) -> str:  # "64@56x56, 12x 192@14x14": runs of equal layers counted
        parts = [f"{c}@{'x'.join(map(str, g))}" for _, c, g in meta["layers"][i]]
        runs_ = []
        for part in parts:
            if runs_ and runs_[-1][1] == part:
                runs_[-1][0] += 1
            else:
                runs_.append([1, part])
        return ", ".join(part if k == 1 else f"{k}x {part}" for k, part in runs_)

    print(f"# A {meta['models'][0]} [{args.layers[0]}] {c_a} units ({describe(0)}); "
          f"B {meta['models'][1]} [{args.layers[1]}] {c_b} units ({describe(1)})")
    print(f"# R={res}, batch {args.batch}, {args.threads} thread(s), best of {args.repeats}, "
          f"torch {torch.__version__}, streaming input: native per-layer maps (resolution=R); "
          f"forward {sum(meta['forward_s']):.2f} s for {sum(meta['batch_sizes'])} images "
          f"(saving maps {meta['save_s']:.2f} s, wall {wall_forward:.2f} s incl. model loading)")
    for (method, n), r in runs.items():
        print(f"{method:9s} images={n:4d}  end to end {r['total_s']:7.2f} s (forward "
              f"{r['forward_s']:6.2f} s + step {r['step_s']:6.2f} s: batches {r['batch_s']:6.2f}, "
              f"final {r['final_s']:6.2f})  loading {r['load_s']:5.2f} s  peak RSS "
              f"{r['peak_rss_mb']:6.0f} MB, growth over start {r['growth_mb']:6.0f} MB")
    failed = []
    if "streaming" in args.methods:
        for n in (n1, n2):
            s = runs[("streaming", n)]
            for base in (m for m in args.methods if m != "streaming"):
                b = runs[(base, n)]
                # constant (dead) units: NaN in the NumPy baselines, 0 from the accumulator
                ok = np.isfinite(b["corr"])
                diff = np.abs(s["corr"][ok] - b["corr"][ok]).max()
                dead_a, dead_b = (~ok).all(1).sum(), (~ok).all(0).sum()
                zeros = np.all(s["corr"][~ok] == 0)
                print(f"images={n:4d}  streaming vs {base:8s}: step "
                      f"{b['step_s'] / s['step_s']:5.1f}x faster, end to end "
                      f"{b['total_s'] / s['total_s']:5.2f}x, max |r diff| "
                      f"{diff:.1e} (constant units skipped: {dead_a} of A, {dead_b} of B; "
                      f"streaming gives them {'0' if zeros else 'NONZERO values'})")
                if base == "corrcoef" and not (diff < 1e-5 and zeros):
                    failed.append(f"{n} images: max |r diff| {diff:.1e} (must be < 1e-5), "
                                  f"constant units at 0: {zeros}")
    for method in args.methods:
        g1, g2 = runs[(method, n1)]["growth_mb"], runs[(method, n2)]["growth_mb"]
        print(f"memory growth {method:9s}: {g1:6.0f} MB at {n1} images, "
              f"{g2:6.0f} MB at {n2} images")
    flops = 2 * c_a * c_b * n2 * res * res
    rates = ", ".join(f"{m} {flops / runs[(m, n2)]['step_s'] / 1e9:6.1f}" for m in args.methods)
    print(f"cross-product GFLOP/s at {n2} images (effective: 2*Ca*Cb*N*R^2 / step s = "
          f"{flops / 1e9:.0f} GFLOP): {rates}; torch.mm float32 ({c_a}x4096 @ 4096x{c_b}): "
          f"{_mm_reference(c_a, c_b):6.1f}")
    if "streaming" in args.methods:
        s = runs[("streaming", n2)]
        print(f"streaming at {n2} images: {s['executed_gflop']:.0f} GFLOP of matrix products "
              f"actually run (resizes, adjoint moves, cross products; {flops / 1e9:.0f} for the "
              f"product over resized samples), {s['executed_gflop'] / s['step_s']:6.1f} GFLOP/s "
              f"over the whole step")
    if failed:
        sys.exit("FAIL: streaming disagrees with np.corrcoef: " + "; ".join(failed))


if __name__ == "__main__":
    main()
