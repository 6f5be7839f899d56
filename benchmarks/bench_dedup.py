"""Time exact near-duplicate search (`zoolens.analyses.curate.deduplicate`) against brute force,
faiss and imagededup, with peak memory, on clustered embeddings with planted duplicates.

Data (seeded, generated in chunks): a mixture of `--clusters` Gaussians in `--dim` dimensions
with random unit centres (or, with `--super P`, centres grouped under P parents, siblings at
cosine `--sibling-cos`, so that neighbouring clusters overlap: a harder case), lognormal cluster
weights, points at cosine ~1/sqrt(1 + spread^2) from their centre; then `--dup-fraction` of the
rows are replaced by edited copies of other rows (cosine 0.96..0.999 to their source; a fifth of
them copy an earlier copy, making chains). Planted pairs are (source, copy).

Every method runs in its own subprocess, so each peak RSS is its own:

  ours        `deduplicate(x, t)`: the cluster-pruned exact search, groups, kept ids.
  brute       exact blocked brute force (NumPy float32 GEMM tiles of 2048 x 8192 unit rows,
              float64 recheck near t): all n(n-1)/2 pairs when n <= --brute-max, else
              `--check-rows` random rows against all n, with the full time extrapolated
              (x n / rows / 2).
  faiss       faiss IndexFlatIP.range_search (exact brute force in faiss), full or sampled
              like brute (optional: pip install faiss-cpu).
  imagededup  imagededup CNN().find_duplicates(encoding_map=..., min_similarity_threshold=t)
              given the same embeddings (optional: pip install imagededup; its N x N float16
              matrix needs n^2 * 4 bytes at its peak, so it is skipped above --imagededup-max).

Checks: every planted pair is found; every reported pair's float64 cosine is above t; ours
equals the brute-force pairs (all of them, or all pairs touching the checked rows).

    python benchmarks/bench_dedup.py                                  # 1,000,000 x 256
    python benchmarks/bench_dedup.py --n 50000 --methods ours,brute,faiss,imagededup
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


# ----------------------------------------------------------------------------------------------
# data


def make_data(n: int, d: int, n_clusters: int, n_super: int, sibling_cos: float, spread: float,
              dup_fraction: float, seed: int, chunk: int = 65536):
    """(x (n, d) float32, planted (p, 2) int64 sorted pairs) — see the module docstring."""
    rng = np.random.default_rng(seed)
    own = rng.standard_normal((n_clusters, d))
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    if n_super > 0:  # centres grouped under parents: siblings at cosine ~sibling_cos
        sup = rng.standard_normal((n_super, d))
        sup /= np.linalg.norm(sup, axis=1, keepdims=True)
        centres = math.sqrt(sibling_cos) * sup[rng.integers(0, n_super, n_clusters)] \
            + math.sqrt(1 - sibling_cos) * own
    else:  # independent random centres (nearly orthogonal in high dimension)
        centres = own
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    centres = centres.astype(np.float32)
    w = rng.lognormal(0.0, 0.5, n_clusters)
    labels = rng.choice(n_clusters, size=n, p=w / w.sum()).astype(np.int32)
    x = np.empty((n, d), dtype=np.float32)
    scale = np.float32(spread / math.sqrt(d))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        block = rng.standard_normal((e - s, d), dtype=np.float32)
        block *= scale
        block += centres[labels[s:e]]
        x[s:e] = block
    n_dup = int(n * dup_fraction)
    rows = rng.permutation(n)
    dups, pool = np.sort(rows[:n_dup]), rows[n_dup:]
    planted = np.empty((n_dup, 2), dtype=np.int64)
    written: list[int] = []
    for t, r in enumerate(dups):
        if written and rng.random() < 0.2:
            src = written[int(rng.integers(len(written)))]   # a copy of a copy
        else:
            src = int(pool[int(rng.integers(len(pool)))])
        delta = rng.uniform(0.04, 0.28)  # cosine 1 / sqrt(1 + delta^2): 0.963 .. 0.999
        v = x[src].astype(np.float64)
        noise = rng.standard_normal(d)
        x[r] = v + delta * np.linalg.norm(v) * noise / np.linalg.norm(noise)
        written.append(int(r))
        planted[t] = (min(src, r), max(src, r))
    order = np.lexsort((planted[:, 1], planted[:, 0]))
    return x, planted[order]


def _cos64(x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    a = x[pairs[:, 0]].astype(np.float64)
    b = x[pairs[:, 1]].astype(np.float64)
    return np.einsum("ij,ij->i", a, b) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ----------------------------------------------------------------------------------------------
# memory


def _status(key: str) -> float:
    """A /proc/self/status figure in MB (VmRSS: now, VmHWM: peak since the last reset)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0): the peak then measures what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# methods (each in a worker process)


def _unit(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for s in range(0, len(x), 65536):
        b = x[s:s + 65536].astype(np.float64)
        out[s:s + 65536] = b / np.linalg.norm(b, axis=1, keepdims=True)
    return out


def run_ours(x, t, args):
    from zoolens.analyses.curate import deduplicate

    res = deduplicate(x, t, keep="centroid", n_clusters=args.n_clusters, seed=args.seed)
    info = {"stats": res.stats, "seconds": res.seconds, "groups": len(res.groups),
            "kept": int(len(res.kept)), "removed": int(len(res.removed))}
    return res.pairs, info


def _check_rows(n: int, args) -> np.ndarray | None:
    if n <= args.brute_max:
        return None
    return np.sort(np.random.default_rng(args.seed + 1).choice(n, args.check_rows, replace=False))


def run_brute(x, t, args):
    """Exact blocked brute force: float32 GEMM tiles (2048 rows x 8192 columns, so BLAS runs
    compute-bound) on unit rows, float64 recheck of every entry above t - eps."""
    from zoolens.analyses.curate import cosine_error_bound

    n, d = x.shape
    t0 = time.perf_counter()
    u = _unit(x)
    setup = time.perf_counter() - t0  # paid once, whatever the number of rows searched
    eps = cosine_error_bound(d)
    rows = _check_rows(n, args)
    q_idx = np.arange(n) if rows is None else rows
    rb, cb = 2048, 8192
    found = []
    for s in range(0, len(q_idx), rb):
        qi = q_idx[s:s + rb]
        q = u[qi]
        start = int(qi[0]) if rows is None else 0  # all pairs: columns from the block on
        for c0 in range(start, n, cb):
            sc = q @ u[c0:c0 + cb].T
            ii, jj = np.nonzero(sc > t - eps)
            jj = jj + c0
            keep = jj > qi[ii] if rows is None else jj != qi[ii]
            p = np.stack([qi[ii[keep]], jj[keep]], 1)
            if len(p):
                found.append(p[_cos64(x, p) > t])
    pairs = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    pairs = np.sort(pairs, axis=1)
    return np.unique(pairs, axis=0), {"rows": None if rows is None else len(rows),
                                      "setup": setup}


def run_faiss(x, t, args):
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    n, d = x.shape
    t0 = time.perf_counter()
    u = _unit(x)
    index = faiss.IndexFlatIP(d)
    index.add(u)
    setup = time.perf_counter() - t0
    rows = _check_rows(n, args)
    q_idx = np.arange(n) if rows is None else rows
    found = []
    for s in range(0, len(q_idx), 4096):
        qi = q_idx[s:s + 4096]
        lims, _, idx = index.range_search(u[qi], t)
        src = np.repeat(qi, np.diff(lims).astype(np.int64))
        keep = idx != src
        found.append(np.stack([src[keep], idx[keep]], 1))
    pairs = np.sort(np.concatenate(found), axis=1)
    return np.unique(pairs, axis=0), {"rows": None if rows is None else len(rows),
                                      "setup": setup}


def run_imagededup(x, t, args):
    import logging

    import torch
    from imagededup.methods import CNN
    from imagededup.utils import CustomModel

    logging.disable(logging.INFO)
    # The default model downloads MobileNetV3 weights; given encodings it is never run, so a
    # stand-in module avoids the network.
    cnn = CNN(verbose=False, model_config=CustomModel(name="unused", model=torch.nn.Identity(),
                                                      transform=lambda im: im))
    enc = {str(i): x[i] for i in range(len(x))}
    out = cnn.find_duplicates(encoding_map=enc, min_similarity_threshold=float(t),
                              scores=False, num_sim_workers=0)
    pairs = {(min(int(a), int(b)), max(int(a), int(b))) for a, dl in out.items() for b in dl}
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2), {}


METHODS = {"ours": run_ours, "brute": run_brute, "faiss": run_faiss,
           "imagededup": run_imagededup}


def worker(args) -> None:
    if args.worker == "imagededup":
        # imagededup's constructor imports torchvision models; load them before measuring.
        import imagededup.methods  # noqa: F401  (imports count as the baseline)
    if args.worker in ("ours", "brute"):
        import zoolens.analyses.curate  # noqa: F401  (imports count as the baseline)
    rss_import = _status("VmRSS")
    x, planted = make_data(args.n, args.dim, args.clusters, args.super, args.sibling_cos,
                           args.spread, args.dup_fraction, args.seed)
    rss_data = _status("VmRSS")
    can_reset = _reset_peak()
    w0, c0 = time.perf_counter(), time.process_time()
    pairs, info = METHODS[args.worker](x, args.threshold, args)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    peak = _status("VmHWM") if can_reset else float("nan")
    cos = _cos64(x, pairs) if len(pairs) else np.zeros(0)
    np.savez(args.out, pairs=pairs, planted=planted, cos=cos)
    Path(str(args.out) + ".json").write_text(json.dumps({
        "wall": wall, "cpu": cpu, "rss_import_mb": rss_import, "rss_data_mb": rss_data,
        "peak_mb": peak, "embeddings_mb": x.nbytes / 2**20, "info": info}))


# ----------------------------------------------------------------------------------------------
# driver


def _spawn(method: str, args, tmp: Path) -> tuple[dict, dict] | None:
    out = tmp / f"{method}.npz"
    cmd = [sys.executable, __file__, "--worker", method, "--out", str(out)]
    for k in ("n", "dim", "clusters", "super", "sibling_cos", "spread", "dup_fraction", "seed",
              "threshold", "check_rows", "brute_max"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    if args.n_clusters is not None:
        cmd += ["--n-clusters", str(args.n_clusters)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"[{method}] failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return None
    meta = json.loads(Path(str(out) + ".json").read_text())
    data = dict(np.load(out))
    return meta, data


def _pairset(p: np.ndarray) -> set:
    return set(map(tuple, p.tolist()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--super", type=int, default=0,
                    help="parents of the cluster centres (0: independent centres)")
    ap.add_argument("--sibling-cos", type=float, default=0.5)
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--dup-fraction", type=float, default=0.01)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--n-clusters", type=int, default=None, help="ours: pruning clusters")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="ours,brute,faiss,imagededup")
    ap.add_argument("--check-rows", type=int, default=2000,
                    help="rows checked against all n by brute force / faiss when n > brute-max")
    ap.add_argument("--brute-max", type=int, default=100_000)
    ap.add_argument("--imagededup-max", type=int, default=60_000)
    ap.add_argument("--worker", choices=sorted(METHODS), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    methods = [m for m in args.methods.split(",") if m]
    tree = (f" under {args.super} parents (sibling cos {args.sibling_cos})" if args.super
            else " (independent centres)")
    print(f"data: {args.n:,} x {args.dim} float32 ({args.n * args.dim * 4 / 2**20:,.0f} MB), "
          f"{args.clusters} Gaussians{tree}, spread {args.spread}, "
          f"{args.dup_fraction:.1%} planted copies; "
          f"threshold {args.threshold}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            if m == "imagededup" and args.n > args.imagededup_max:
                print(f"[imagededup] skipped: its dense N x N matrix needs "
                      f"{args.n ** 2 * 4 / 2**30:,.0f} GiB at n = {args.n:,}")
                continue
            got = _spawn(m, args, Path(tmp))
            if got is None:
                continue
            meta, data = got
            results[m] = (meta, data)
            rows = meta["info"].get("rows") if isinstance(meta["info"], dict) else None
            extra = f" (rows checked: {rows:,})" if rows else ""
            above = meta["peak_mb"] - meta["rss_import_mb"]
            print(f"[{m:10s}] {meta['wall']:9.2f} s wall {meta['cpu']:9.2f} s cpu   "
                  f"pairs {len(data['pairs']):,}{extra}   peak RSS {meta['peak_mb']:,.0f} MB "
                  f"(imports {meta['rss_import_mb']:,.0f} MB; embeddings "
                  f"{meta['embeddings_mb']:,.0f} MB; peak - imports = {above:,.0f} MB = "
                  f"{above / meta['embeddings_mb']:.2f}x the embeddings)")
            if m == "ours":
                st, sec = meta["info"]["stats"], meta["info"]["seconds"]
                print(f"             pruning: {st['n_clusters']} clusters (largest "
                      f"{st['largest_cluster']:,}), similarities computed "
                      f"{st['entries_computed']:.3e} of {st['all_pairs']:.3e} "
                      f"({st['entries_computed'] / max(st['all_pairs'], 1):.2%}), "
                      f"(row, cluster) reach tests passed {st['candidate_rows']:,}; "
                      f"rechecked in float64 {st['rechecked']:,}")
                print("             seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                         sec.items()))
                print(f"             groups {meta['info']['groups']:,}, kept "
                      f"{meta['info']['kept']:,}, removed {meta['info']['removed']:,}")

    if "ours" not in results:
        return
    meta_o, ours = results["ours"]
    found = _pairset(ours["pairs"])
    planted = _pairset(ours["planted"])
    print(f"planted pairs {len(planted):,}: missed by ours {len(planted - found)}; "
          f"ours' pairs with float64 cosine <= t: {int((ours['cos'] <= args.threshold).sum())}"
          f" (min cosine reported {ours['cos'].min() if len(ours['cos']) else float('nan'):.4f})")
    for m, (meta, data) in results.items():
        if m == "ours":
            continue
        other = _pairset(data["pairs"])
        rows = meta["info"].get("rows") if isinstance(meta["info"], dict) else None
        if rows:
            rows_set = set(np.sort(np.random.default_rng(args.seed + 1).choice(
                args.n, args.check_rows, replace=False)).tolist())
            mine = {p for p in found if p[0] in rows_set or p[1] in rows_set}
            # The search scales with the rows searched; the setup (normalising, indexing) not.
            setup = meta["info"].get("setup", 0.0)
            scale = args.n / rows / 2
            full_w = setup + (meta["wall"] - setup) * scale
            full_c = setup + (meta["cpu"] - setup) * scale
            print(f"{m}: on the {rows:,} checked rows, same pairs: {mine == other} "
                  f"({len(other):,} vs ours {len(mine):,}); full run extrapolated "
                  f"{full_w:,.0f} s wall {full_c:,.0f} s cpu -> ours is "
                  f"{full_w / meta_o['wall']:.1f}x faster (wall), {full_c / meta_o['cpu']:.1f}x (cpu)")
        else:
            only_o, only_m = found - other, other - found
            print(f"{m}: same pairs: {found == other} ({len(other):,} vs ours {len(found):,}; "
                  f"only ours {len(only_o)}, only {m} {len(only_m)}); time {m}/ours: wall "
                  f"{meta['wall'] / meta_o['wall']:.2f}x cpu {meta['cpu'] / meta_o['cpu']:.2f}x; "
                  f"peak RSS {m}/ours {meta['peak_mb'] / meta_o['peak_mb']:.2f}x; "
                  f"(peak - imports) {m}/ours "
                  f"{(meta['peak_mb'] - meta['rss_import_mb']) / (meta_o['peak_mb'] - meta_o['rss_import_mb']):.2f}x")
            if only_m or only_o:
                cos = {**dict(zip(map(tuple, data["pairs"].tolist()), data["cos"])),
                       **dict(zip(map(tuple, ours["pairs"].tolist()), ours["cos"]))}
                diff = sorted(only_m | only_o)[:10]
                print("   differing pairs (first 10), float64 cosine: "
                      + ", ".join(f"{p} {cos[p]:.7f}" for p in diff))


if __name__ == "__main__":
    main()
