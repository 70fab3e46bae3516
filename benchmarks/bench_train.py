"""Trainer throughput with real data loading against the model-only step on synthetic tensors (issue 3).

    python benchmarks/bench_train.py --config quick --section train.main [--set data.num_workers=1] \\
        [--steps 30] [--skip 5] [--threads 2]

In one process: (1) the model-only step (forward, loss, backward, Adam step; same model, method,
precision, channels_last, batch) on random tensors shaped like a real batch; (2) the real trainer
(`avsl_core.train.train`, dataset + DataLoader + views + logging) for `skip + steps` steps, timed
from its per-step log after `skip` warm-up steps; (3) the model-only step again (the machine is
shared: the two model-only numbers bracket the noise). Prints a table; target: trainer >= 85 % of
model-only.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from avsl_core import train as T  # noqa: E402
from avsl_core.models import AVModel  # noqa: E402


def real_batch(cfg: T.TrainConfig, method) -> dict:
    ds = T.build_dataset(cfg, cfg.data.train_dir, method.needs_conc)
    collate = T.make_collate(cfg, method) or torch.utils.data.default_collate
    return collate([ds[i] for i in range(cfg.batch_size)])


def model_only(cfg: T.TrainConfig, batch: dict, steps: int, skip: int) -> float:
    """samples/s of the bare step on random tensors shaped like `batch`."""
    torch.manual_seed(cfg.seed)
    torch.set_flush_denormal(True)                     # as the trainer does on CPU
    model = AVModel(cfg.model_config)
    method = T.METHODS[cfg.method](cfg, model)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    fake = {k: torch.randn_like(v) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in batch.items()}
    fake = T._to_device(fake, torch.device("cpu"), cfg.channels_last)
    precision = T.resolve_precision(cfg.precision, torch.device("cpu"))
    ac = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    model.train()
    times = []
    for i in range(skip + steps):
        t = time.perf_counter()
        with ac:
            loss = method.loss(model, fake)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return cfg.batch_size * steps / sum(times[skip:])


def trainer(cfg: T.TrainConfig, steps: int, skip: int) -> tuple[float, float]:
    """(samples/s over the steps after `skip`, dataset build + first step seconds) of the real trainer."""
    cfg = dataclasses.replace(cfg, time_budget_min=None, max_steps=skip + steps, epochs=10_000,
                              curriculum_steps=0, data=dataclasses.replace(cfg.data, curriculum_dir=None))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        T.train(cfg, Path(d) / "run", progress=False)
        total = time.perf_counter() - t0
        rows = list(csv.DictReader((Path(d) / "run" / "steps.csv").open()))
    el = [float(r["elapsed_s"]) for r in rows]
    return cfg.batch_size * steps / (el[skip + steps - 1] - el[skip - 1]), total - el[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--section", default=None)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = T.load_config(a.config, a.section, a.set)
    method = T.METHODS[cfg.method](cfg, AVModel(cfg.model_config))
    batch = real_batch(cfg, method)
    shapes = {k: list(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor) and v.ndim > 1}
    m1 = model_only(cfg, batch, a.steps, a.skip)
    tr, overhead = trainer(cfg, a.steps, a.skip)
    m2 = model_only(cfg, batch, a.steps, a.skip)
    ref = (m1 + m2) / 2
    print(f"config: {a.config} {a.section or ''} {' '.join(a.set)}")
    print(f"threads {torch.get_num_threads()}, batch {cfg.batch_size}, precision {cfg.precision} -> "
          f"{T.resolve_precision(cfg.precision, torch.device('cpu'))}, channels_last "
          f"{cfg.channels_last}, num_workers {cfg.num_workers}, fast_views {T.uses_fast_views(cfg)}")
    print(f"batch tensors: {json.dumps(shapes)}")
    print(f"{'step':<34}{'samples/s':>10}")
    print(f"{'model only (synthetic), before':<34}{m1:>10.1f}")
    print(f"{'trainer (real data loading)':<34}{tr:>10.1f}")
    print(f"{'model only (synthetic), after':<34}{m2:>10.1f}")
    print(f"trainer / model-only = {tr / ref:.1%} (target >= 85 %); trainer start-up (dataset build) "
          f"{overhead:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
