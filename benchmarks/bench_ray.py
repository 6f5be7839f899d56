"""The Ray backend against the local one (issue 12: scale out on Ray).

The job: extraction of ResNet-18 (random weights) over a folder of 224 px JPEGs (rendered once
from synthetic scenes), its 8 blocks mean-pooled into a feature store, batch 32. Each setting
runs the job on `--small` and on `--large` images: the difference of the two wall times gives
the marginal rate (images/s once everything has started, immune to how results bunch up on
their way to the driver) and the fixed cost (start-up: for Ray the worker's process, its
imports, the model's deserialisation, the first batches).

1. Overhead: the local backend against Ray with one worker, with the same number of PyTorch
   threads (`--threads`, default 1: on a shared 2-core machine 2 threads and 2 decoding
   processes oversubscribe the cores and make the local run the slower one).
2. Scaling: Ray with 1, 2 and 4 workers of half a CPU (one thread) each, on a local cluster of
   `--cluster-cpus` logical CPUs.
3. Merge cost: a worker's `state_dict()` pickled, then on the driver unpickled, loaded into a
   fresh sink and merged, for Rosetta's `CrossCorrelation` tables of growing size: GB/s,
   extrapolated to the tables of real zoos.

    python benchmarks/bench_ray.py [--small 256] [--large 1024] [--threads 1]
                                   [--cluster-cpus 4] [--skip-overhead] [--skip-scaling]
                                   [--skip-merge]
"""

from __future__ import annotations

import argparse
import logging
import pickle
import statistics
import tempfile
import time

import torch

SPEC = "torchvision:resnet18"


def jpeg_folder(n: int, root: str) -> list[str]:
    """n synthetic scenes saved as 224 px JPEGs (decoding them is what a real folder costs)."""
    import zoolens

    scenes = zoolens.open_source(f"synthetic:scenes?n={n}&size=224&seed=0")
    paths = []
    for i in range(n):
        paths.append(f"{root}/{i:05d}.jpg")
        scenes.decode(i).image.save(paths[-1], quality=90)
    return paths


def one_run(model, images: list[str], backend, batch_size: int) -> dict:
    """`zoolens.extract` of the 8 blocks, mean-pooled, into a fresh store: wall time."""
    import zoolens

    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        store = zoolens.extract(model, images, layers="blocks", out=f"{out}/store",
                                batch_size=batch_size, progress=False, backend=backend)
        wall = time.perf_counter() - t
        assert store.complete and int(store.valid.sum()) == len(images)
        device = store.manifest["last_run"]["device"]
    return {"wall_s": wall, "device": device}


def _marginal(model, images: list[str], small: int, backend, batch_size: int) -> dict:
    """Walls on the small and the whole job; the marginal rate and the fixed cost."""
    a = one_run(model, images[:small], backend, batch_size)
    b = one_run(model, images, backend, batch_size)
    rate = (len(images) - small) / (b["wall_s"] - a["wall_s"])
    return {"wall_small_s": a["wall_s"], "wall_s": b["wall_s"], "rate": rate,
            "fixed_s": b["wall_s"] - len(images) / rate, "device": b["device"]}


def overhead(images: list[str], small: int, batch_size: int, threads: int) -> None:
    import zoolens
    from zoolens.backends import RayBackend

    model = zoolens.load(SPEC, pretrained=False, device="cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    local = _marginal(model, images, small, "local", batch_size)
    torch.set_num_threads(before)
    # a worker's threads are its CPUs rounded up: threads - 0.5 CPUs gives `threads`
    ray_one = _marginal(model, images, small, RayBackend(workers=1, cpus_per_worker=threads - 0.5),
                        batch_size)
    print(f"overhead: {SPEC}, batch {batch_size}, {threads} PyTorch thread(s), "
          f"{small} and {len(images)} JPEGs")
    for name, r in (("local", local), ("ray, 1 worker", ray_one)):
        print(f"  {name:14s} wall {r['wall_small_s']:6.1f} s and {r['wall_s']:6.1f} s: "
              f"{r['rate']:6.2f} img/s once started, fixed cost {r['fixed_s']:5.1f} s "
              f"[{r['device']}]")
    print(f"  ray/local: wall {ray_one['wall_s'] / local['wall_s']:.3f} on {len(images)} images "
          f"({ray_one['wall_small_s'] / local['wall_small_s']:.3f} on {small}); per image "
          f"{local['rate'] / ray_one['rate']:.3f}")


def scaling(images: list[str], small: int, batch_size: int) -> None:
    import zoolens
    from zoolens.backends import RayBackend

    model = zoolens.load(SPEC, pretrained=False, device="cpu")
    print(f"scaling: workers of 0.5 CPU (1 thread) each, {small} and {len(images)} JPEGs")
    base = None
    for workers in (1, 2, 4):
        r = _marginal(model, images, small, RayBackend(workers=workers, cpus_per_worker=0.5),
                      batch_size)
        base = base or r["rate"]
        print(f"  {workers} worker(s): {r['rate']:6.2f} img/s once started (x{r['rate'] / base:.2f}),"
              f" fixed cost {r['fixed_s']:5.1f} s, wall {r['wall_s']:.1f} s")


def merge_cost(repeats: int = 3) -> None:
    """Rosetta's accumulator between a units and b units: the bytes a unit sends, the time a
    worker takes to pickle them and the driver to unpickle, load and add them."""
    from zoolens.analyses.rosetta import CorrelationSink

    print("merge cost of CrossCorrelation states (float64 a x b tables):")
    rates = []
    for a, b in ((512, 512), (1024, 2048), (2048, 4096), (4096, 4096)):
        layers = {"A": ["x"], "B": ["y"]}
        sink = CorrelationSink(layers, 4, [("A", "B", None)], track=False)
        acc = sink.acc[("A", "B", None)]
        torch.manual_seed(0)
        xa, xb = torch.randn(8, a, 4, 4), torch.randn(8, b, 4, 4)
        acc.update([xa], [xb])
        state = sink.state_dict()
        driver = sink.fresh()
        pack, unpack = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            blob = pickle.dumps(state, protocol=5)
            pack.append(time.perf_counter() - t)
            t = time.perf_counter()
            driver.merge(driver.fresh().load_state_dict(pickle.loads(blob)))
            unpack.append(time.perf_counter() - t)
        gb = len(blob) / 1e9
        rate = gb / statistics.median(unpack)
        rates.append(rate)
        print(f"  {a:5d} x {b:5d}: {gb * 1e3:8.1f} MB per unit; worker pickles in "
              f"{statistics.median(pack):.3f} s, driver unpickles + merges in "
              f"{statistics.median(unpack):.3f} s ({rate:.2f} GB/s)")
    rate = rates[-1]  # the largest table: fixed costs no longer count
    for name, a, b in (("Rosetta ResNet-50 x ViT-S blocks (MLP acts)", 15104, 18432),
                       ("Rosetta ResNet-50 x ViT-S, last 4 blocks each", 2048 * 3 + 1024,
                        1536 * 4)):
        gb = a * b * 8 / 1e9
        print(f"  {name}: {gb:.2f} GB per state, about {gb / rate:.1f} s to add on the "
              f"driver; x (8 units x 8 workers) = {64 * gb:.0f} GB, {64 * gb / rate / 60:.1f} min")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=256)
    ap.add_argument("--large", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cluster-cpus", type=int, default=4)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--skip-merge", action="store_true")
    args = ap.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads")
    if not args.skip_merge:
        merge_cost()
    if args.skip_overhead and args.skip_scaling:
        return
    import ray

    t = time.perf_counter()
    ray.init(num_cpus=args.cluster_cpus, include_dashboard=False, logging_level=logging.WARNING)
    print(f"ray {ray.__version__}: a local cluster of {args.cluster_cpus} logical CPUs started "
          f"in {time.perf_counter() - t:.1f} s (once per process)")
    with tempfile.TemporaryDirectory() as root:
        images = jpeg_folder(args.large, root)
        if not args.skip_overhead:
            overhead(images, args.small, args.batch_size, args.threads)
        if not args.skip_scaling:
            scaling(images, args.small, args.batch_size)


if __name__ == "__main__":
    main()
