"""Trainer throughput with real data loading against the model-only step on synthetic tensors (issue 3).

    python benchmarks/bench_train.py --config quick --section train.main [--set num_workers=1] \\
        [--steps 30] [--skip 5] [--threads 2]

In one process: (1) the model-only step (forward, loss, backward, Adam step; same model, method,
precision, channels_last, batch) on random tensors shaped like a real batch; (2) the real trainer
(`avsl_core.train.train`, dataset + DataLoader + views + logging) for `skip + steps` steps, timed
from its per-step log after `skip` warm-up steps; (3) the model-only step again (the machine is
shared: the two model-only numbers bracket the noise). `--rounds R` repeats (2)+(3), so each trainer
run is bracketed by two model-only runs, and prints each round's ratio and their median (other work
on the machine changes the speed by 2x within minutes). Prints a table, the load average around each
part, and CPU seconds per step (main process; DataLoader workers, counted when they exit); target:
trainer >= 85 % of model-only. The training set is built once (its build time is printed) and reused
by the trainer.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from avsl_core import train as T  # noqa: E402
from avsl_core.models import AVModel  # noqa: E402


def real_batch(cfg: T.TrainConfig, method) -> tuple[dict, float]:
    """(a collated batch of the first items, seconds to build the training set)."""
    t = time.perf_counter()
    ds = T.build_dataset(cfg, cfg.data.train_dir, method.needs_conc)
    build_s = time.perf_counter() - t
    _build = T.build_dataset                 # the trainer reuses this set (no second ~30 s build)

    def build_once(c, set_dir, with_conc):
        return ds if set_dir == cfg.data.train_dir and with_conc == method.needs_conc else _build(c, set_dir, with_conc)
    T.build_dataset = build_once
    collate = T.make_collate(cfg, method) or torch.utils.data.default_collate
    return collate([ds[i] for i in range(cfg.batch_size)]), build_s


def model_only(cfg: T.TrainConfig, batch: dict, steps: int, skip: int) -> tuple[float, float]:
    """(samples/s, CPU s/step) of the bare step on random tensors shaped like `batch`."""
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
    times, cpu = [], []
    for i in range(skip + steps):
        t, c = time.perf_counter(), time.process_time()
        with ac:
            loss = method.loss(model, fake)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return cfg.batch_size * steps / sum(times[skip:]), sum(cpu[skip:]) / steps


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def trainer(cfg: T.TrainConfig, steps: int, skip: int) -> tuple[float, float, float, float]:
    """(samples/s over the steps after `skip`, start-up seconds (model, loader, up to the first step),
    CPU s/step of the main process and of the DataLoader workers over the whole call)."""
    cfg = dataclasses.replace(cfg, time_budget_min=None, max_steps=skip + steps, epochs=10_000,
                              curriculum_steps=0, data=dataclasses.replace(cfg.data, curriculum_dir=None))
    with tempfile.TemporaryDirectory() as d:
        t0, c0, w0 = time.perf_counter(), time.process_time(), _children_cpu()
        T.train(cfg, Path(d) / "run", progress=False)
        total = time.perf_counter() - t0
        cpu, wcpu = time.process_time() - c0, _children_cpu() - w0
        rows = list(csv.DictReader((Path(d) / "run" / "steps.csv").open()))
    el = [float(r["elapsed_s"]) for r in rows]
    n = skip + steps
    return cfg.batch_size * steps / (el[skip + steps - 1] - el[skip - 1]), total - el[-1], cpu / n, wcpu / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--section", default=None)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=1, help="trainer runs, each bracketed by model-only runs")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = T.load_config(a.config, a.section, a.set)
    method = T.METHODS[cfg.method](cfg, AVModel(cfg.model_config))
    batch, build_s = real_batch(cfg, method)
    shapes = {k: list(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor) and v.ndim > 1}
    def load() -> str:
        return "%.2f" % os.getloadavg()[0]

    rows, loads = [], [load()]
    mo = [model_only(cfg, batch, a.steps, a.skip)]
    loads.append(load())
    for r in range(a.rounds):
        tr = trainer(cfg, a.steps, a.skip)
        loads.append(load())
        mo.append(model_only(cfg, batch, a.steps, a.skip))
        loads.append(load())
        rows.append(tr)
    print(f"config: {a.config} {a.section or ''} {' '.join(a.set)}")
    print(f"threads {torch.get_num_threads()}, batch {cfg.batch_size}, precision {cfg.precision} -> "
          f"{T.resolve_precision(cfg.precision, torch.device('cpu'))}, channels_last "
          f"{cfg.channels_last}, num_workers {cfg.num_workers}, fast_views {T.uses_fast_views(cfg)}, "
          f"steps {a.steps} after {a.skip}")
    print(f"batch tensors: {json.dumps(shapes)}")
    print(f"{'step':<34}{'samples/s':>10}{'CPU s/step':>12}{'worker CPU':>12}{'ratio':>8}")
    print(f"{'model only (synthetic)':<34}{mo[0][0]:>10.1f}{mo[0][1]:>12.3f}")
    ratios = []
    for r, (tr, overhead, cpu, wcpu) in enumerate(rows):
        ratio = tr / ((mo[r][0] + mo[r + 1][0]) / 2)
        ratios.append(ratio)
        print(f"{'trainer (real data loading)':<34}{tr:>10.1f}{cpu:>12.3f}{wcpu:>12.3f}{ratio:>8.1%}")
        print(f"{'model only (synthetic)':<34}{mo[r + 1][0]:>10.1f}{mo[r + 1][1]:>12.3f}")
    print(f"trainer / model-only (mean of the bracketing runs) = {statistics.median(ratios):.1%}"
          f"{' (median of %d rounds)' % len(ratios) if len(ratios) > 1 else ''} (target >= 85 %); "
          f"training set build {build_s:.1f} s, trainer start-up {statistics.median(r[1] for r in rows):.1f} s")
    print(f"load average (1 min) at start / after each part: {' / '.join(loads)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
