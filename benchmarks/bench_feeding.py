"""Feeding speed: time to produce one training sample with all its views, and one test sample.

    python benchmarks/bench_feeding.py [--assets data/assets] [--image-size 96] [--frontend logmel]

Renders a smoke-size AVScenes profile (from the real asset cache when ``<assets>/index.csv`` exists,
else from the tests' generated fake assets, in a temp folder) and prints a table: per-sample time of
the training views (v, v_aug, v_conc, a, a_aug, a_conc) and of a test sample, in-process and through
a DataLoader with 1 and 2 workers (batch 64), in samples/s. Compare with the trainer's samples/s.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from avsl_core.audio import random_time_shift  # noqa: E402
from avsl_core.data.avscenes import build  # noqa: E402
from avsl_core.data.datasets import TestDataset, TrainDataset, collate, worker_init  # noqa: E402


def _per_sample(fn, n: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call; CPU time stays meaningful when other jobs share the cores."""
    fn(0)
    t, c = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t) / n, (time.process_time() - c) / n


def _loader_rate(ds, workers: int, batch: int, n_batches: int) -> float:
    dl = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate,
                    worker_init_fn=worker_init if workers else None, drop_last=True,
                    persistent_workers=workers > 0, sampler=None)
    it = iter(_cycle(dl))
    next(it)                                                     # start-up excluded
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch / (time.perf_counter() - t)


def _cycle(dl):
    while True:
        yield from dl


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--assets", default=str(ROOT / "data" / "assets"))
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--frontend", default="logmel")
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=8)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_feeding_") as d:
        _run(a, Path(d))


def _run(a, tmp: Path) -> None:
    assets = Path(a.assets)
    splits = None
    if (assets / "index.csv").is_file():
        source = f"real asset cache {assets}"
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from fixtures_assets import make_fake_assets
        assets, splits = make_fake_assets(tmp)
        source = "generated fake assets (tests/fixtures_assets.py)"
    t0 = time.perf_counter()
    build(dict(profile="bench", image_size=a.image_size, n_train=a.n_train, n_test=64, n_negatives=8,
               n_swap_images=8, n_single_train=8, n_single_test=8), assets, tmp / "avscenes",
          splits_path=splits, log=lambda *x: None)
    render_s = time.perf_counter() - t0
    out = tmp / "avscenes" / "bench"
    t0 = time.perf_counter()
    n = a.n_train
    table = np.random.default_rng(0).integers(0, n, (n, 10)).astype(np.int32)
    tr = TrainDataset(out / "train" / "manifest.jsonl", image_size=a.image_size, frontend=a.frontend,
                      neighbours=table)
    te = TestDataset(out / "test_seen" / "manifest.jsonl", image_size=a.image_size, frontend=a.frontend)
    decode_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    st = tr.store
    m = min(200, n)
    rows = [
        ("train sample, all 6 views", _per_sample(lambda i: tr[i % n], m)),
        ("  image views (v, v_aug, v_conc)", _per_sample(
            lambda i: (st.image_tensor(i % n), tr.image_aug(Image.fromarray(st.images[i % n])),
                       st.image_tensor((i + 1) % n)), m)),
        ("  audio views (a, a_aug, a_conc)", _per_sample(
            lambda i: (tr.spec(i % n), tr.front(random_time_shift(st.wave(i % n), tr.front.n, rng)),
                       tr.spec((i + 1) % n)), m)),
        ("test sample (v, a, gt map)", _per_sample(lambda i: te[i % len(te)], m)),
    ]
    print(f"# feeding benchmark: {source}; S={a.image_size}, front-end {a.frontend}, "
          f"torch threads 1, {torch.get_num_threads()} thread(s), CPUs {torch.multiprocessing.cpu_count()}")
    print(f"# render {render_s:.1f} s ({n} train scenes + test sets); decode/cache {decode_s:.2f} s "
          f"for {len(tr) + len(te)} items")
    print(f"# load average {os.getloadavg()[0]:.1f} (wall times are inflated when it exceeds the cores)")
    print(f"{'what':36s} {'mode':>14s} {'wall ms':>8s} {'samples/s':>9s} {'CPU ms':>7s} {'per core/s':>10s}")
    for name, (sec, cpu) in rows:
        print(f"{name:36s} {'in-process':>14s} {1000 * sec:8.2f} {1 / sec:9.0f} {1000 * cpu:7.2f} "
              f"{1 / cpu:10.0f}")
    for workers in (1, 2):
        for name, ds in (("train sample, all 6 views", tr), ("test sample (v, a, gt map)", te)):
            rate = _loader_rate(ds, workers, min(a.batch, len(ds)), a.batches)
            print(f"{name:36s} {f'DataLoader w={workers}':>14s} {1000 / rate:8.2f} {rate:9.0f}")


if __name__ == "__main__":
    main()
