"""Train one run from a notebook: in this process, or under torchrun (DDP) when several GPUs are visible.

The training page calls :func:`train_run` for every run of its catalogue. With one GPU (or none) it is
``avsl_core.train.train`` in the notebook's process, as before. With ``nproc`` > 1 (default: the number
of visible CUDA devices) it writes the run's config to ``<out>/launch_config.yaml`` and starts
``torchrun --standalone --nproc_per_node=N -m avsl_core.train --config <that file> --out <out>``, the
same command-line trainer book/data.md shows (nccl on GPUs, gloo on CPU; the global batch is split
over the ranks), then reads the summary rank 0 wrote.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from avsl_core.config import repo_root
from avsl_core.provenance import atomic_write_text


def default_nproc() -> int:
    """Visible CUDA devices (1 without CUDA): the ranks `train_run` starts by default."""
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def torchrun_command(config_path, out_dir, nproc: int, *, resume: bool = False) -> list[str]:
    """The torchrun command line of one run (``python -m torch.distributed.run``, the torchrun module)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "avsl_core.train", "--config", str(config_path), "--out", str(out_dir), "--no-progress",
            *(["--resume"] if resume else [])]


def train_run(cfg, out_dir, *, resume: bool = False, nproc: int | None = None, log=print) -> dict:
    """Train ``cfg`` (a ``train.TrainConfig``) into ``out_dir``; returns the run's summary."""
    out = Path(out_dir)
    n = default_nproc() if nproc is None else int(nproc)
    if n <= 1:
        from avsl_core.train import train
        return train(cfg, out, resume=resume, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "launch_config.yaml"
    atomic_write_text(config_path, yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False))
    cmd = torchrun_command(config_path, out, n, resume=resume)
    log(f"[launch] {out.name}: {n} ranks: {' '.join(cmd)}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(repo_root()), os.environ.get("PYTHONPATH"))
                                                        if p)}
    subprocess.run(cmd, check=True, cwd=repo_root(), env=env)
    return json.loads((out / "summary.json").read_text())
