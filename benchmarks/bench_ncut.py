"""Time the TokenCut / MaskCut eigen step: dense generalized `scipy.linalg.eigh` vs Lanczos.

    python benchmarks/bench_ncut.py [--images 20] [--rows 28] [--cols 28] [--dim 384] [--threads 1]

Features have planted structure like a self-supervised ViT's: a shared component (cosines mostly
positive), a background of two regions, one or two elliptical objects of their own directions, and
Gaussian noise whose level varies from image to image. Both solvers cut the same graph; the script
checks that every mask is identical and prints per-image milliseconds and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--rows", type=int, default=28)
    ap.add_argument("--cols", type=int, default=28)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (set before numpy loads)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timings per image")
    return ap.parse_args()


ARGS = _parse()
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from zoolens.analyses.discovery import cuts as dc  # noqa: E402


def planted_image(rng: np.random.Generator, rows: int, cols: int, dim: int,
                  noise_range: tuple[float, float] = (0.8, 2.0)) -> np.ndarray:
    """(rows * cols, dim) features: shared + background regions + 1-2 ellipses + noise."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    common = rng.normal(size=dim)
    horizon = rng.integers(rows // 3, 2 * rows // 3)
    feats = np.where((yy < horizon)[..., None], rng.normal(size=dim), rng.normal(size=dim))
    for _ in range(rng.integers(1, 3)):
        cy, cx = rng.uniform(0.25, 0.75) * rows, rng.uniform(0.25, 0.75) * cols
        ry, rx = rng.uniform(0.12, 0.3) * rows, rng.uniform(0.12, 0.3) * cols
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        feats = np.where(inside[..., None], rng.normal(size=dim), feats)
    noise = rng.uniform(*noise_range)
    feats = 0.7 * common + feats + noise * rng.normal(size=(rows, cols, dim))
    return feats.reshape(rows * cols, dim)


def best_ms(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3, out


def main() -> None:
    rng = np.random.default_rng(0)
    grid = (ARGS.rows, ARGS.cols)
    images = [planted_image(rng, *grid, ARGS.dim) for _ in range(ARGS.images)]
    p = grid[0] * grid[1]
    print(f"grid {grid[0]}x{grid[1]} ({p} patches), D={ARGS.dim}, {ARGS.images} images, "
          f"{ARGS.threads} BLAS thread(s), best of {ARGS.repeats}")

    eig_dense, eig_fast, eig_si, graph_ms, same_eig, same_si = [], [], [], [], 0, 0
    graph_fill = []
    for f in images:
        fn = dc._normalize_rows(f)
        g_ms, c = best_ms(lambda: dc._excess_affinity(fn, 0.2, 1e-5, True), ARGS.repeats)
        d_ms, (xd, _) = best_ms(lambda: dc._fiedler_dense(c, 1e-5), ARGS.repeats)
        l_ms, (xl, _) = best_ms(lambda: dc._fiedler_lanczos(c, 1e-5), ARGS.repeats)
        s_ms, (xs, _) = best_ms(lambda: dc._fiedler_shift_invert(c, 1e-5), ARGS.repeats)
        md, _ = dc._foreground(xd, grid, corner_flip=False)
        ml, _ = dc._foreground(xl, grid, corner_flip=False)
        ms, _ = dc._foreground(xs, grid, corner_flip=False)
        same_eig += bool(np.array_equal(md, ml))
        same_si += bool(np.array_equal(md, ms))
        graph_ms.append(g_ms)
        graph_fill.append(np.count_nonzero(c) / c.size)
        eig_dense.append(d_ms)
        eig_fast.append(l_ms)
        eig_si.append(s_ms)
    ed, el = np.mean(eig_dense), np.mean(eig_fast)
    ratios = np.array(eig_dense) / np.array(eig_fast)
    print(f"graph build (shared by both): {np.mean(graph_ms):.2f} ms/image")
    print(f"eigen step  dense eigh(D-W, D): {ed:.2f} ms/image | lanczos: {el:.2f} ms/image | "
          f"speed-up {ed / el:.1f}x (median {np.median(ratios):.1f}x, worst {ratios.min():.1f}x) | "
          f"masks identical {same_eig}/{len(images)}")
    print(f"eigen step  shift-invert (the fallback): {np.mean(eig_si):.2f} ms/image | "
          f"speed-up {ed / np.mean(eig_si):.1f}x | masks identical {same_si}/{len(images)}")

    # Hard case: so much noise that few affinities pass tau; the sparse graph's spectrum clusters
    # near lambda_2, plain Lanczos stalls and shift-invert takes over.
    hard_d, hard_l, hard_fill, same_hard = [], [], [], 0
    for _ in range(5):
        fn = dc._normalize_rows(planted_image(rng, *grid, ARGS.dim, noise_range=(3.5, 5.0)))
        c = dc._excess_affinity(fn, 0.2, 1e-5, True)
        d_ms, (xd, _) = best_ms(lambda: dc._fiedler_dense(c, 1e-5), 1)
        l_ms, (xl, _) = best_ms(lambda: dc._fiedler_lanczos(c, 1e-5), 1)
        same_hard += bool(np.array_equal(dc._foreground(xd, grid, False)[0],
                                         dc._foreground(xl, grid, False)[0]))
        hard_d.append(d_ms)
        hard_fill.append(np.count_nonzero(c) / c.size)
        hard_l.append(l_ms)
    print(f"hard sparse graphs (5 images, graph fill {np.mean(hard_fill):.3f} vs "
          f"{np.mean(graph_fill):.3f} above): dense {np.mean(hard_d):.2f} ms/image | "
          f"lanczos+fallback {np.mean(hard_l):.2f} ms/image | "
          f"speed-up {np.mean(hard_d) / np.mean(hard_l):.1f}x | masks identical {same_hard}/5")

    nd, nl, same_ncut = [], [], 0
    for f in images:
        d_ms, md = best_ms(lambda: dc.ncut(f, grid, solver="dense"), ARGS.repeats)
        l_ms, ml = best_ms(lambda: dc.ncut(f, grid, solver="lanczos"), ARGS.repeats)
        same_ncut += bool(np.array_equal(md, ml))
        nd.append(d_ms)
        nl.append(l_ms)
    print(f"ncut end-to-end  dense: {np.mean(nd):.2f} ms/image | "
          f"lanczos: {np.mean(nl):.2f} ms/image | speed-up {np.mean(nd) / np.mean(nl):.1f}x | "
          f"masks identical {same_ncut}/{len(images)}")

    stack = np.stack(images)
    b_ms, batch = best_ms(lambda: dc.ncut_batch(stack, grid, solver="lanczos"), 1)
    ref = np.stack([dc.ncut(f, grid, solver="dense") for f in images])
    print(f"ncut_batch (lanczos, {len(images)} images): {b_ms / len(images):.2f} ms/image | "
          f"masks identical to dense {int((batch == ref).all(axis=1).sum())}/{len(images)}")

    kd, kl, same_mc, n_obj = [], [], 0, 0
    for f in images:
        d_ms, rd = best_ms(lambda: dc.maskcut(f, grid, 3, solver="dense"), 1)
        l_ms, rl = best_ms(lambda: dc.maskcut(f, grid, 3, solver="lanczos"), 1)
        same_mc += len(rd) == len(rl) and all(map(np.array_equal, rd.masks, rl.masks))
        n_obj += len(rd)
        kd.append(d_ms)
        kl.append(l_ms)
    print(f"maskcut (N=3) dense: {np.mean(kd):.2f} ms/image | "
          f"lanczos: {np.mean(kl):.2f} ms/image | "
          f"speed-up {np.mean(kd) / np.mean(kl):.1f}x | {n_obj} objects, "
          f"identical {same_mc}/{len(images)}")


if __name__ == "__main__":
    main()
