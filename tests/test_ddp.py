"""DDP through torchrun on CPU (gloo): 2 ranks train a few steps and end with identical parameters."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from avsl_core import train as T
    torch.set_num_threads(1)
    cfg = T.TrainConfig.from_dict(dict(
        model={"width": 0.125, "vision_stop_at": "layer3", "head_dim": 16, "padding_mode": "reflect"},
        loss={"semantic": False, "pooling": "topk"},
        data={"kind": "synthetic", "image_size": 32, "options": {"n": 64}},
        epochs=2, batch_size=16, lr=1e-3, precision="fp32", channels_last=False, seed=1))
    s = T.train(cfg, sys.argv[1], progress=False)
    with open(os.path.join(sys.argv[2], f"rank{s['rank']}.json"), "w") as f:
        json.dump(s, f)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_ranks_end_with_identical_parameters(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), str(tmp_path / "run"),
           str(tmp_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    s0, s1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert (s0["world_size"], s1["world_size"]) == (2, 2)
    # 64 items, global batch 16 = 8 per rank -> 4 steps per epoch on each rank, 2 epochs
    assert s0["steps"] == s1["steps"] == 8
    assert s0["param_sha256"] == s1["param_sha256"]
    assert s0["state_sha256"] == s1["state_sha256"]   # BN buffers too (rank 0's, broadcast at the end)
    # only rank 0 wrote, and the checkpoint holds the same weights plus both ranks' RNG states
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])   # per-rank augmentation streams
