"""Self-k-NN speed for positive mining (paper: k = 1000 of 144K): faiss against chunked torch.

    .venv/bin/python benchmarks/bench_knn.py                    # N=144,000, D=512, k=1000, 2 threads
    .venv/bin/python benchmarks/bench_knn.py --n 20000 --methods faiss torch faiss-ivf

One run generates clustered unit-norm-able data (1000 Gaussian clusters), then runs each method in
its own subprocess (so peak memory is that process's ru_maxrss, faiss allocations included) through
`avsl_core.mining.knn_self`, and compares the tables: top-1 agreement over all rows, top-k set
overlap and the largest rank-wise cosine difference on a sample of rows. Goal: <= 120 s and <= 3 GB.
The library's default (`mining.DEFAULT_METHOD`) is the faster exact method of this table.
The OpenBLAS core type faiss's bundled OpenBLAS detected, and OPENBLAS_* variables, are printed:
faiss's speed depends on them (notes/toolchain.md §4); this script never changes them except for the
explicitly named row "faiss[Haswell]".
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METHODS = {"faiss": dict(method="faiss"), "torch": dict(method="torch"),
           "faiss-ivf": dict(method="faiss", index="ivf"), "faiss[Haswell]": dict(method="faiss")}


def make_data(n: int, d: int, seed: int, clusters: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)]
    x += 0.8 * rng.standard_normal((n, d), dtype=np.float32)
    return x                                                               # [N, D] float32


def openblas_core() -> str:
    import ctypes
    import glob
    import faiss
    libs = glob.glob(os.path.join(os.path.dirname(faiss.__file__), "..", "faiss_cpu.libs", "*openblas*"))
    if not libs:
        return "unknown"
    lib = ctypes.CDLL(libs[0])
    lib.openblas_get_corename.restype = ctypes.c_char_p
    return lib.openblas_get_corename().decode()


def child(a) -> None:
    """One method in this process: load, search, save the table, print a JSON record."""
    import faiss
    import torch
    from avsl_core.mining import knn_self
    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    x = np.load(a.data)
    opts = dict(METHODS[a.child])
    if opts.get("index") == "ivf":
        opts["nprobe"] = a.nprobe
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = ru0.ru_utime + ru0.ru_stime
    t0 = time.perf_counter()
    idx = knn_self(x, a.k, threads=a.threads, **opts)
    wall = time.perf_counter() - t0
    np.save(a.out, idx)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"method": a.child, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime - cpu0,
                      "maxrss_kb": ru.ru_maxrss, "rss_after_imports_kb": rss0, "openblas_core": openblas_core()}))


def agreement(x: np.ndarray, a: np.ndarray, b: np.ndarray, sample: int, seed: int) -> dict:
    from avsl_core.mining import l2_normalize
    rows = np.random.default_rng(seed).choice(len(x), min(sample, len(x)), replace=False)
    xn = l2_normalize(x[np.sort(np.unique(np.concatenate([rows, a[rows].ravel(), b[rows].ravel()])))])
    pos = {j: i for i, j in enumerate(np.sort(np.unique(np.concatenate([rows, a[rows].ravel(), b[rows].ravel()]))))}
    ov, diff = [], 0.0
    for r in rows:
        q = xn[pos[r]]
        sa = np.sort(xn[[pos[j] for j in a[r]]] @ q)[::-1]
        sb = np.sort(xn[[pos[j] for j in b[r]]] @ q)[::-1]
        diff = max(diff, float(np.abs(sa - sb).max()))
        ov.append(len(set(a[r]) & set(b[r])) / a.shape[1])
    return {"top1": float((a[:, 0] == b[:, 0]).mean()), "overlap": float(np.mean(ov)), "max_score_diff": diff}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=144_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["faiss", "torch"], choices=list(METHODS))
    ap.add_argument("--nprobe", type=int, default=32, help="faiss-ivf: lists probed (nlist ~ sqrt(N))")
    ap.add_argument("--sample", type=int, default=200, help="rows for the top-k overlap / score check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=list(METHODS), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a)
        return 0
    env_blas = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP", "MKL"))}
    print(f"N={a.n:,} D={a.d} k={a.k} threads={a.threads}; cpus={os.cpu_count()}; env {env_blas or '{}'}; "
          f"faiss OpenBLAS core: {openblas_core()}")
    with tempfile.TemporaryDirectory(prefix="bench_knn_") as tmp:
        t0 = time.perf_counter()
        x = make_data(a.n, a.d, a.seed)
        np.save(Path(tmp) / "x.npy", x)
        print(f"data: {a.n:,} x {a.d} float32 ({x.nbytes / 2**20:.0f} MiB), {time.perf_counter() - t0:.1f} s")
        recs, tables = [], {}
        for m in a.methods:
            env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), PYTHONPATH=str(ROOT))
            if m == "faiss[Haswell]":
                env["OPENBLAS_CORETYPE"] = "Haswell"
            out = Path(tmp) / f"{m}.npy"
            load0 = os.getloadavg()[0]
            cmd = [sys.executable, __file__, "--child", m, "--data", str(Path(tmp) / "x.npy"), "--out", str(out),
                   "--k", str(a.k), "--threads", str(a.threads), "--nprobe", str(a.nprobe)]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if p.returncode:
                print(f"{m}: failed\n{p.stderr[-2000:]}")
                continue
            rec = json.loads(p.stdout.strip().splitlines()[-1])
            rec["load_before"], rec["load_after"] = load0, os.getloadavg()[0]
            recs.append(rec)
            tables[m] = np.load(out, mmap_mode="r")
            print(f"  {m}: {rec['wall_s']:.1f} s, peak RSS {rec['maxrss_kb'] / 2**20:.2f} GiB", flush=True)
        ref = "faiss" if "faiss" in tables else next(iter(tables), None)
        print(f"\n| method | kNN wall (s) | CPU (s) | peak RSS (GiB) | <= 120 s | <= 3 GB | top-1 agree | "
              f"top-{a.k} overlap | max score diff | load avg (before/after) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in recs:
            ag = agreement(x, tables[ref], tables[r["method"]], a.sample, a.seed) if r["method"] != ref else None
            gib = r["maxrss_kb"] / 2**20
            cells = ("(reference)", "", "") if ag is None else (
                f"{ag['top1']:.4f}", f"{ag['overlap']:.4f}", f"{ag['max_score_diff']:.2e}")
            print(f"| {r['method']} | {r['wall_s']:.1f} | {r['cpu_s']:.0f} | {gib:.2f} | {'yes' if r['wall_s'] <= 120 else 'NO'} | "
                  f"{'yes' if gib * 2**30 <= 3e9 else 'NO'} | {cells[0]} | {cells[1]} | {cells[2]} | "
                  f"{r['load_before']:.2f}/{r['load_after']:.2f} |")
        exact = [r for r in recs if r["method"] in ("faiss", "torch")]
        if exact:
            best = min(exact, key=lambda r: r["wall_s"])
            from avsl_core.mining import DEFAULT_METHOD
            print(f"\nfaster exact method: {best['method']}; library default mining.DEFAULT_METHOD = "
                  f"{DEFAULT_METHOD!r}{'' if best['method'] == DEFAULT_METHOD else '  <-- differs'}")
        print(f"sample for overlap/score checks: {min(a.sample, a.n)} rows; reference: {ref}. CPU (s) / threads "
              "is the wall time an idle machine would give at perfect scaling; max score diff is the largest "
              "rank-wise cosine difference between the two neighbour lists (0 when the sets are equal).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
