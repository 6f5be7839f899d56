"""The Ray backend against the local one (issue 12: scale out on Ray).

1. Overhead: the same extraction (ResNet-18, random weights, a folder of 224 px JPEGs rendered
   once from synthetic scenes, its 8 blocks mean-pooled into a feature store, batch 32) on the
   local backend and on Ray with one worker running as many PyTorch threads, alternated A/B
   `--repeats` times (the machine is shared), for 2 threads and for 1. Reported: the wall time
   of the whole run (Ray's start-up included: the actor's process, imports, the model's
   deserialisation) and the steady rate (images/s from the first batch or unit reaching the
   driver to the last), whose ratio is the per-image overhead.
2. Scaling: the same job on Ray with 1, 2 and 4 workers of half a CPU (one thread) each, on a
   local cluster of `--cluster-cpus` logical CPUs: the steady rate of each.
3. Merge cost: a worker's `state_dict()` pickled, then on the driver unpickled, loaded into a
   fresh sink and merged, for Rosetta's `CrossCorrelation` tables of growing size: seconds per
   GB, extrapolated to the tables of real zoos.

    python benchmarks/bench_ray.py [--images 512] [--scaling-images 512] [--repeats 2]
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

import numpy as np
import torch

SPEC = "torchvision:resnet18"


class _Clock:
    """A driver-side sink that notes when each batch's features reach the driver."""

    def __init__(self):
        from zoolens.sinks import Sink

        class Clock(Sink):
            on_driver = True

            def __init__(self, need):
                self.need = need
                self.marks: list[tuple[float, int]] = []

            def update(self, batch):
                self.marks.append((time.perf_counter(), len(batch.indices)))

            def result(self):
                return self.marks

        self.cls = Clock


def _steady(marks: list[tuple[float, int]]) -> float:
    """Images per second from the first mark to the last (the first mark's images excluded):
    the rate once everything has started."""
    times = sorted({t for t, _ in marks})
    if len(times) < 2:
        return float("nan")
    first = times[0]
    images = sum(n for t, n in marks if t > first)
    return images / (times[-1] - first)


def jpeg_folder(n: int, root: str) -> list[str]:
    """n synthetic scenes saved as 224 px JPEGs (decoding them is what a real folder costs)."""
    import zoolens

    scenes = zoolens.open_source(f"synthetic:scenes?n={n}&size=224&seed=0")
    paths = []
    for i in range(n):
        paths.append(f"{root}/{i:05d}.jpg")
        scenes.decode(i).image.save(paths[-1], quality=90)
    return paths


def one_run(model, images, backend, batch_size: int, num_workers=None) -> dict:
    import zoolens
    import zoolens.plan
    from zoolens.sinks import Need

    source = zoolens.open_source(images)
    n = len(source)
    blocks = model.select("blocks")
    clock = _Clock().cls(Need.of({model.name: blocks}, "mean"))
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        summary = zoolens.plan.run([model], source, [clock], store=f"{out}/store",
                                   batch_size=batch_size, num_workers=num_workers,
                                   progress=False, backend=backend)
        wall = time.perf_counter() - t
    assert summary.images == n
    return {"wall_s": wall, "steady_img_s": _steady(clock.marks), "img_s": n / wall,
            "device": summary.device}


def overhead(images: list[str], batch_size: int, repeats: int) -> None:
    import zoolens
    from zoolens.backends import RayBackend

    model = zoolens.load(SPEC, pretrained=False, device="cpu")
    before = torch.get_num_threads()
    print(f"overhead: {len(images)} JPEGs, {SPEC}, batch {batch_size}, medians of {repeats}")
    for threads in (2, 1):
        runs: dict[str, list[dict]] = {"local": [], "ray": []}
        # a worker's threads are its CPUs rounded up: threads - 0.5 CPUs gives `threads`
        ray_one = RayBackend(workers=1, cpus_per_worker=threads - 0.5)
        for _ in range(repeats):
            torch.set_num_threads(threads)
            runs["local"].append(one_run(model, images, "local", batch_size))
            torch.set_num_threads(before)
            runs["ray"].append(one_run(model, images, ray_one, batch_size))
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "steady_img_s")}
               for k, v in runs.items()}
        for name in ("local", "ray"):
            print(f"  {threads} thread(s), {name:5s}: wall {med[name]['wall_s']:6.1f} s, steady "
                  f"{med[name]['steady_img_s']:6.2f} img/s  (walls "
                  f"{[round(r['wall_s'], 1) for r in runs[name]]})")
        print(f"  {threads} thread(s): ray/local wall {med['ray']['wall_s'] / med['local']['wall_s']:.3f}"
              f", per image (steady) {med['local']['steady_img_s'] / med['ray']['steady_img_s']:.3f}"
              f"; Ray start-up about "
              f"{med['ray']['wall_s'] - len(images) / med['ray']['steady_img_s']:.0f} s")


def scaling(images: list[str], batch_size: int) -> None:
    import zoolens
    from zoolens.backends import RayBackend

    model = zoolens.load(SPEC, pretrained=False, device="cpu")
    print(f"scaling: {len(images)} JPEGs, workers of 0.5 CPU (1 thread) each")
    base = None
    for workers in (1, 2, 4):
        r = one_run(model, images, RayBackend(workers=workers, cpus_per_worker=0.5),
                    batch_size)
        base = base or r["steady_img_s"]
        print(f"  {workers} worker(s): steady {r['steady_img_s']:.2f} img/s "
              f"(x{r['steady_img_s'] / base:.2f}), wall {r['wall_s']:.1f} s")


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
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--scaling-images", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
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
        images = jpeg_folder(max(args.images, args.scaling_images), root)
        if not args.skip_overhead:
            overhead(images[:args.images], args.batch_size, args.repeats)
        if not args.skip_scaling:
            scaling(images[:args.scaling_images], args.batch_size)


if __name__ == "__main__":
    main()
