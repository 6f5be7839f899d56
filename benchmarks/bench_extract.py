"""Extraction overhead and memory (issue: foundation).

1. Hook overhead: ResNet-50 (random weights), 224 px, batch 32, CPU. The same preprocessed
   batches go through (a) the bare forward pass and (b) zoolens' hooked forward tapping every
   block (16) with mean pooling, alternated A/B so machine drift hits both; ratio b/a.
2. End to end: `zoolens.extract` (decoding in workers, preprocessing, hooks, store writes) on
   the same number of images, against the bare forward pass on pre-decoded batches.
3. Memory: peak RSS of a whole `extract` run in a fresh process, for 128 and 1024 images.

    python benchmarks/bench_extract.py [--images 128] [--large 1024] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

SPEC = "torchvision:resnet50"


def _batches(model, n: int, batch_size: int):
    from zoolens.sources import open_source

    src = open_source(f"synthetic:scenes?n={n}&size=224&seed=0")
    xs = torch.stack([model.preprocess(src.decode(i).image) for i in range(n)])
    return list(xs.split(batch_size))


def hook_overhead(n: int, batch_size: int, repeats: int) -> dict:
    import zoolens
    from zoolens.engine import _forward

    model = zoolens.load(SPEC, pretrained=False, device="cpu")
    blocks = model.select("blocks")
    infos = {i.name: i for i in model.layers(blocks)}
    wanted = {b: {"mean"} for b in blocks}
    batches = _batches(model, n, batch_size)
    import contextlib

    def bare():
        with torch.inference_mode():
            for x in batches:
                model.forward(x)

    def tapped():
        for x in batches:
            _forward(model, x, wanted, infos, contextlib.nullcontext())

    bare(), tapped()  # warm-up
    a, b = [], []
    for _ in range(repeats):
        t = time.perf_counter(); bare(); a.append(time.perf_counter() - t)
        t = time.perf_counter(); tapped(); b.append(time.perf_counter() - t)
    ratios = [y / x for x, y in zip(a, b)]
    return {"blocks": len(blocks), "images": n, "bare_s": statistics.median(a),
            "tapped_s": statistics.median(b), "ratio_median": statistics.median(ratios),
            "ratios": [round(r, 3) for r in ratios]}


def end_to_end(n: int, batch_size: int, workers: int) -> dict:
    import zoolens

    model = zoolens.load(SPEC, pretrained=False, device="cpu")
    batches = _batches(model, n, batch_size)
    with torch.inference_mode():
        model.forward(batches[0])
        t = time.perf_counter()
        for x in batches:
            model.forward(x)
        bare = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        zoolens.extract(model, f"synthetic:scenes?n={n}&size=224&seed=0", layers="blocks",
                        out=out, batch_size=batch_size, num_workers=workers, progress=False)
        full = time.perf_counter() - t
    return {"images": n, "bare_forward_s": bare, "extract_s": full, "ratio": full / bare,
            "workers": workers}


def memory_child(n: int, batch_size: int, workers: int) -> None:
    import zoolens

    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        zoolens.extract(SPEC, f"synthetic:scenes?n={n}&size=224&seed=0", layers="blocks", out=out,
                        pretrained=False, batch_size=batch_size, num_workers=workers,
                        progress=False, device="cpu")
        seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"images": n, "peak_rss_mib": peak, "worker_peak_rss_mib": kids,
                      "seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--large", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child, args.batch_size, args.workers)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    r = hook_overhead(args.images, args.batch_size, args.repeats)
    print(f"hooks: {r['blocks']} blocks of ResNet-50, {r['images']} images, batch "
          f"{args.batch_size}: bare {r['bare_s']:.2f} s, tapped {r['tapped_s']:.2f} s, "
          f"ratio {r['ratio_median']:.3f} (per repeat {r['ratios']})")
    e = end_to_end(args.images, args.batch_size, args.workers)
    print(f"end to end: extract {e['extract_s']:.2f} s vs bare forward {e['bare_forward_s']:.2f} s "
          f"on pre-decoded batches: ratio {e['ratio']:.3f} ({e['workers']} decoding workers)")
    if args.skip_memory:
        return
    for n in (args.images, args.large):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--batch-size",
                              str(args.batch_size), "--workers", str(args.workers)],
                             capture_output=True, text=True, check=True).stdout
        m = json.loads(out.strip().splitlines()[-1])
        print(f"memory: {m['images']} images: peak RSS {m['peak_rss_mib']:.0f} MiB "
              f"(workers {m['worker_peak_rss_mib']:.0f} MiB), {m['seconds']:.1f} s")


if __name__ == "__main__":
    main()
